"""Peer KV quantizers for `compactkv bench ppl --peers`: transformers' QuantizedCache backends (quanto, HQQ) and
llama.cpp's KV block formats emulated in torch (q8_0, q4_0, q4_1).

transformers' QuantizedLayer returns the unquantized K/V on the first (prefill) call and keeps a fp16 residual
window, so a one-forward llama-perplexity chunk would never read quantized values. To score peers the same way as
compactkv (every scored token attends to quantized K/V), each layer here round-trips K/V through the backend
layer's own quantizer and dequantizer (transformers defaults: axis 0, group 64) before attention.
Names: quanto4, quanto2, hqq4, hqq2. Bits per value: nbits + 32/64 (fp16 scale and zero point per group of 64).

llama.cpp peers (gq8_0, gq4_0, gq4_1): K/V round-trip through llama.cpp's reference block quantizers
(`quantize_row_q*_ref` in ggml-quants.c: blocks of 32 along head_dim, fp16 scale (and min), the same rounding and
truncation) and attention runs in float32. What is not emulated: llama.cpp's flash-attention CPU path also
quantizes the query to q8_0 for quantized K, and scores its own f16 cache; so these figures isolate the KV format.
Bits per value: q8_0 8.5, q4_0 4.5, q4_1 5.0.
"""

from __future__ import annotations

import torch

PEERS = {"quanto4": ("quanto", 4), "quanto2": ("quanto", 2), "hqq4": ("hqq", 4), "hqq2": ("hqq", 2),
         "gq8_0": ("ggml", 8), "gq4_0": ("ggml", 4), "gq4_1": ("ggml", 5)}
GGML_BITS = {"gq8_0": 8.5, "gq4_0": 4.5, "gq4_1": 5.0}
QK = 32  # llama.cpp block size
GROUP = 64


def _f16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).float()


def ggml_roundtrip(x: torch.Tensor, name: str) -> torch.Tensor:
    """x [..., D] (D a multiple of 32) quantized and dequantized like llama.cpp's reference quantizers."""
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
                    return super().update(ggml_roundtrip(key_states, name), ggml_roundtrip(value_states, name),
                                          *args, **kwargs)
                q = _backend_layer(backend, nbits)
                q.lazy_initialization(key_states, value_states)
                k = q._dequantize(q._quantize(key_states.contiguous(), axis=q.axis_key)).to(key_states.dtype)
                v = q._dequantize(q._quantize(value_states.contiguous(), axis=q.axis_value)).to(value_states.dtype)
                return super().update(k, v, *args, **kwargs)

        return Cache(layers=[Layer() for _ in range(self.model.config.num_hidden_layers)])

    def logits(self, ids: torch.Tensor, keep: int, batch: int | None = None) -> torch.Tensor:
        from .ppl import batched_logits

        return batched_logits(self.model, ids, self._cache(), keep, batch or ids.shape[1])


def make_runners(model, text: str) -> list[RoundTripRunner]:
    """Runners for a comma-separated peer list; ValueError for unknown names, ImportError names the pip package."""
    runners = []
    for name in (s.strip() for s in text.split(",") if s.strip()):
        try:
            runners.append(RoundTripRunner(model, name))
        except ImportError as e:
            raise ValueError(f"peer {name} needs its backend: pip install "
                             f"{'optimum-quanto' if PEERS[name][0] == 'quanto' else 'hqq'} ({e})") from None
    return runners
