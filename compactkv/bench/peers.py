"""Peer KV quantizers for `compactkv bench ppl --peers`: transformers' QuantizedCache backends (quanto, HQQ) and
llama.cpp's KV block formats emulated in torch (q8_0, q4_0, q4_1).

transformers' QuantizedLayer returns the unquantized K/V on the first (prefill) call and keeps a fp16 residual
window, so a one-forward llama-perplexity chunk would never read quantized values. To score peers the same way as
compactkv (every scored token attends to quantized K/V), each layer here round-trips K/V through the backend
layer's own quantizer and dequantizer (transformers defaults: axis 0, group 64) before attention.
Names: quanto4, quanto2, hqq4, hqq2. Bits per value: nbits + 32/64 (fp16 scale and zero point per group of 64).

llama.cpp formats emulated (gq8_0, gq4_0, gq4_1): K/V round-trip through llama.cpp's reference block quantizers
(`quantize_row_q*_ref` in ggml-quants.c: blocks of 32 along head_dim, fp16 scale (and min), the same rounding and
truncation; keys blocked in llama.cpp's interleaved RoPE channel order) and attention runs in float32. What is not emulated: llama.cpp's flash-attention CPU path also
quantizes the query to q8_0 for quantized K, and scores its own f16 cache; so these figures isolate the KV format.
Bits per value: q8_0 8.5, q4_0 4.5, q4_1 5.0.

llama.cpp itself (llama-f16, llama-q8_0, llama-q4_0, llama-q4_1, llama-iq4_nl; `pip install llama-cpp-python`,
a source build): the same GGUF file evaluated by llama.cpp with type_k = type_v = that type, flash attention on,
n_batch = --batch, fed the same token ids. llama.cpp computes its own matmuls (quantized weights, q8 activations),
so its logits differ from transformers' even with f16 KV: llama-* rows take ΔPPL and KL against llama-f16 (which is
scored first and itself compared with compactkv's f16). Current llama.cpp rotates K and V by a Walsh-Hadamard
matrix before quantizing them (`attn_rot`, on by default for quantized caches with head_dim % 64 == 0); a
`-norot` suffix (llama-q4_0-norot) sets LLAMA_ATTN_ROT_DISABLE=1 for the classic block formats.
"""

from __future__ import annotations

import os

import torch

PEERS = {"quanto4": ("quanto", 4), "quanto2": ("quanto", 2), "hqq4": ("hqq", 4), "hqq2": ("hqq", 2),
         "gq8_0": ("ggml", 8), "gq4_0": ("ggml", 4), "gq4_1": ("ggml", 5)}
GGML_BITS = {"gq8_0": 8.5, "gq4_0": 4.5, "gq4_1": 5.0}
QK = 32  # llama.cpp block size
GROUP = 64


LLAMA_KINDS = {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "iq4_nl": 4.5}


class LlamaCppRunner:
    """Scores a chunk with llama.cpp (llama-cpp-python) on the model's GGUF file, K and V of one llama.cpp type."""

    def __init__(self, name: str, gguf: str | None):
        kind = name.removeprefix("llama-")
        self.norot = kind.endswith("-norot")
        kind = kind.removesuffix("-norot")
        if kind not in LLAMA_KINDS:
            raise ValueError(f"unknown llama.cpp peer {name!r}; accepted: "
                             f"{', '.join('llama-' + k for k in LLAMA_KINDS)}")
        if not gguf:
            raise ValueError(f"peer {name} runs llama.cpp on the model's GGUF file; this model was not loaded from one")
        import llama_cpp  # ImportError names the package to the caller

        self.name, self.kind, self.gguf, self.bits = name, kind, str(gguf), LLAMA_KINDS[kind]
        self.reference = None if kind == "f16" else "llama-f16"
        self._type = getattr(llama_cpp, f"GGML_TYPE_{kind.upper()}")
        self._llm = None

    def _model(self, n_ctx: int, batch: int):
        import llama_cpp

        if self._llm is None or self._llm.n_ctx() < n_ctx or self._llm.n_batch != batch:
            os.environ["LLAMA_ATTN_ROT_DISABLE"] = "1" if self.norot else "0"  # read when the context is made
            self._llm = llama_cpp.Llama(model_path=self.gguf, n_ctx=n_ctx, n_batch=batch, n_ubatch=batch,
                                        logits_all=True, flash_attn=True, type_k=self._type, type_v=self._type,
                                        n_threads=torch.get_num_threads(), verbose=False)
        return self._llm

    def logits(self, ids: torch.Tensor, keep: int, batch: int | None = None) -> torch.Tensor:
        import numpy as np

        total = ids.shape[1]
        llm = self._model(total, batch or total)
        llm.reset()
        llm.eval(ids[0].tolist())
        return torch.from_numpy(np.array(llm.scores[total - keep:total], dtype=np.float32)).unsqueeze(0)


def _f16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).float()


def ggml_roundtrip(x: torch.Tensor, name: str, interleaved: bool = False) -> torch.Tensor:
    """x [..., D] (D a multiple of 32) quantized and dequantized like llama.cpp's reference quantizers.

    interleaved: x is in transformers' rotate-half channel order (pairs (i, i + D/2)) and llama.cpp holds it with
    the pairs interleaved (2i, 2i + 1), as GGUF permutes the Q/K weights of llama-architecture models: blocks of 32
    are cut in llama.cpp's order (e.g. the low-frequency RoPE pairs share blocks there), then mapped back.
    """
    if interleaved:
        d = x.shape[-1]
        xi = torch.stack([x[..., :d // 2], x[..., d // 2:]], dim=-1).reshape(x.shape)
        yi = ggml_roundtrip(xi, name).reshape(*x.shape[:-1], d // 2, 2)
        return torch.cat([yi[..., 0], yi[..., 1]], dim=-1)
    shape, dtype = x.shape, x.dtype
    if shape[-1] % QK:
        raise ValueError(f"llama.cpp blocks need head_dim divisible by {QK}, got {shape[-1]}")
    b = x.float().reshape(-1, QK)
    if name == "gq8_0":
        d = b.abs().amax(-1, keepdim=True) / 127
        inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
        q = torch.round(b * inv)  # roundf: half away from zero
        q = torch.where((b * inv - torch.trunc(b * inv)).abs() == 0.5, torch.trunc(b * inv) + torch.sign(b), q)
        out = q * _f16(d)
    elif name == "gq4_0":
        idx = b.abs().argmax(-1, keepdim=True)
        d = b.gather(-1, idx) / -8  # signed: the largest-magnitude value maps to -8
        inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
        q = torch.clamp_max(torch.trunc(b * inv + 8.5), 15)  # (int8_t)(x*id + 8.5), MIN(15, .)
        out = (q - 8) * _f16(d)
    elif name == "gq4_1":
        lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
        d = (hi - lo) / 15
        inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
        q = torch.clamp_max(torch.trunc((b - lo) * inv + 0.5), 15)
        out = q * _f16(d) + _f16(lo)
    else:
        raise ValueError(f"unknown llama.cpp format {name!r}; accepted: {', '.join(GGML_BITS)}")
    return out.reshape(shape).to(dtype)


def _backend_layer(backend: str, nbits: int):
    from transformers.cache_utils import HQQQuantizedLayer, QuantoQuantizedLayer

    cls = QuantoQuantizedLayer if backend == "quanto" else HQQQuantizedLayer
    return cls(nbits=nbits, q_group_size=GROUP, residual_length=0)


class RoundTripRunner:
    """Scores a chunk with K/V quantized then dequantized by one transformers QuantizedCache backend."""

    def __init__(self, model, name: str):
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; accepted: {', '.join(PEERS)}")
        self.model, self.name = model, name
        self.backend, self.nbits = PEERS[name]
        if self.backend == "ggml":
            self.bits = GGML_BITS[name]
        else:
            self.bits = self.nbits + 32 / GROUP
            _backend_layer(self.backend, self.nbits)  # ImportError now if the backend is missing

    def _cache(self):
        from transformers.cache_utils import Cache, DynamicLayer

        backend, nbits, name = self.backend, self.nbits, self.name

        class Layer(DynamicLayer):
            def update(self, key_states, value_states, *args, **kwargs):
                if backend == "ggml":
                    return super().update(ggml_roundtrip(key_states, name, interleaved=True),
                                          ggml_roundtrip(value_states, name), *args, **kwargs)
                q = _backend_layer(backend, nbits)
                q.lazy_initialization(key_states, value_states)
                k = q._dequantize(q._quantize(key_states.contiguous(), axis=q.axis_key)).to(key_states.dtype)
                v = q._dequantize(q._quantize(value_states.contiguous(), axis=q.axis_value)).to(value_states.dtype)
                return super().update(k, v, *args, **kwargs)

        return Cache(layers=[Layer() for _ in range(self.model.config.num_hidden_layers)])

    def logits(self, ids: torch.Tensor, keep: int, batch: int | None = None) -> torch.Tensor:
        from .ppl import batched_logits

        return batched_logits(self.model, ids, self._cache(), keep, batch or ids.shape[1])


def make_runners(model, text: str, gguf: str | None = None) -> list:
    """Runners for a comma-separated peer list; ValueError for unknown names or missing packages (named).

    llama-* peers need `gguf`, the model's GGUF file; llama-f16 is added before them (their reference)."""
    runners = []
    names = [s.strip() for s in text.split(",") if s.strip()]
    if any(n.startswith("llama-") for n in names) and "llama-f16" not in names:
        names.insert(next(i for i, n in enumerate(names) if n.startswith("llama-")), "llama-f16")
    for name in names:
        if name.startswith("llama-"):
            try:
                runners.append(LlamaCppRunner(name, gguf))
            except ImportError as e:
                raise ValueError(f"peer {name} needs llama-cpp-python: pip install llama-cpp-python ({e})") from None
            continue
        try:
            runners.append(RoundTripRunner(model, name))
        except ImportError as e:
            raise ValueError(f"peer {name} needs its backend: pip install "
                             f"{'optimum-quanto' if PEERS[name][0] == 'quanto' else 'hqq'} ({e})") from None
    return runners
