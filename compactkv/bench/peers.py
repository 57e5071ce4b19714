"""Peer KV quantizers for `compactkv bench ppl --peers`: transformers' QuantizedCache backends (quanto, HQQ).

transformers' QuantizedLayer returns the unquantized K/V on the first (prefill) call and keeps a fp16 residual
window, so a one-forward llama-perplexity chunk would never read quantized values. To score peers the same way as
compactkv (every scored token attends to quantized K/V), each layer here round-trips K/V through the backend
layer's own quantizer and dequantizer (transformers defaults: axis 0, group 64) before attention.
Names: quanto4, quanto2, hqq4, hqq2. Bits per value: nbits + 32/64 (fp16 scale and zero point per group of 64).
"""

from __future__ import annotations

import torch

PEERS = {"quanto4": ("quanto", 4), "quanto2": ("quanto", 2), "hqq4": ("hqq", 4), "hqq2": ("hqq", 2)}
GROUP = 64


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
        self.bits = self.nbits + 32 / GROUP
        _backend_layer(self.backend, self.nbits)  # ImportError now if the backend is missing

    def _cache(self):
        from transformers.cache_utils import Cache, DynamicLayer

        backend, nbits = self.backend, self.nbits

        class Layer(DynamicLayer):
            def update(self, key_states, value_states, *args, **kwargs):
                q = _backend_layer(backend, nbits)
                q.lazy_initialization(key_states, value_states)
                k = q._dequantize(q._quantize(key_states.contiguous(), axis=q.axis_key)).to(key_states.dtype)
                v = q._dequantize(q._quantize(value_states.contiguous(), axis=q.axis_value)).to(value_states.dtype)
                return super().update(k, v, *args, **kwargs)

        return Cache(layers=[Layer() for _ in range(self.model.config.num_hidden_layers)])

    def logits(self, ids: torch.Tensor, keep: int) -> torch.Tensor:
        from .common import forward

        return forward(self.model, ids, self._cache(), keep).logits


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
