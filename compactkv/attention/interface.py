"""Registration with transformers: the "compactkv" attention implementation and its mask function."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from ..cache.cache import ATTN_IMPLEMENTATION
from ..cache.layer import TAG
from .dispatch import attend
from .reference import dense_attention

_UNSUPPORTED = ("s_aux", "sinks", "position_bias")


def compactkv_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                scaling: float | None = None, **kwargs):
    """transformers attention function: compressed path when `key` comes from a TurboQuantLayer, SDPA otherwise.

    The compressed path runs the Triton kernels on CUDA and the torch reference elsewhere (see dispatch.py).
    """
    layer = getattr(key, TAG, None)
    if layer is None and kwargs.get("softcap") is not None:  # SDPA has no softcap (Gemma 2): same math, dense
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return dense_attention(query, key, value, attention_mask, scale, softcap=kwargs["softcap"]), None
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"compactkv attention does not support the {name!r} argument of this model")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    out = attend(layer, query, attention_mask, scaling, softcap=kwargs.get("softcap"))
    layer.trim_window()
    return out, None


def register_attention() -> None:
    """Register "compactkv" in transformers' AttentionInterface and mask registry (idempotent)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, compactkv_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def attach(model) -> None:
    """Register the attention function and switch `model` to it (undo with `model.set_attn_implementation`)."""
    register_attention()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
