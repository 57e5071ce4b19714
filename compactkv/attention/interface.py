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
    if getattr(layer, "masks_itself", False) and query.shape[2] == 1:
        # static layers: a single-token step sees every token its row stores (lengths on the device) but the
        # padding recorded at its prompt (`pad_bias`, read by the backends). transformers builds a mask sized by the
        # host's count, and always while a CUDA graph is being captured (its is_tracing is true then): frozen into
        # the graph, it would cover fewer keys than later replays hold.
        attention_mask = None
    elif getattr(layer, "masks_itself", False) and attention_mask is not None:
        # a prompt (or a chunk of one): the slots its mask hides from its last token (a padded batch's padding) stay
        # hidden from every later one-token step, which reads the layer's own record instead of this mask
        layer.record_padding(attention_mask)
    if getattr(layer, "dense", False):  # StaticDenseLayer: uncompressed buffers, SDPA under the layer's own mask
        if kwargs.get("softcap") is not None:
            raise ValueError("static dense caches do not support attention logit softcapping")
        return static_dense_attention(layer, query, key, value, scaling), None
    out = attend(layer, query, attention_mask, scaling, softcap=kwargs.get("softcap"))
    layer.trim_window()
    return out, None


def static_dense_attention(layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           scaling: float) -> torch.Tensor:
    """SDPA of query [B, Hq, Tq, D] over a StaticDenseLayer's buffers [B, Hkv, max, D] -> [B, Tq, Hq, D], with
    fixed shapes (capturable). Under the layer's mask, GQA is folded into the query length (query head h = kv head
    h // G), so SDPA repeats no K/V (masked SDPA has no GQA-aware kernel); without a mask (exact_mask off, one
    token) SDPA runs with enable_gqa, the flash kernel the kernel benchmarks compare with."""
    b, hq, tq, d = query.shape
    hkv = key.shape[1]
    if hq % hkv:
        raise ValueError(f"{hq} query heads cannot share {hkv} KV heads")
    g = hq // hkv
    mask = layer.attn_mask(g, tq)
    if mask is None:
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=scaling, enable_gqa=True)
    else:
        q = query.reshape(b, hkv, g * tq, d)
        out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, hq, tq, d).transpose(1, 2).contiguous()


# What transformers calls: the function above, opaque to torch.compile (a compiled model runs it as written: its
# Triton launches, host-side checks and python layer objects stay outside the compiled graphs; ~1 us per call eager)
_registered_forward = torch.compiler.disable(compactkv_attention_forward)


def register_attention() -> None:
    """Register "compactkv" in transformers' AttentionInterface and mask registry (idempotent)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, _registered_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def attach(model) -> None:
    """Register the attention function and switch `model` to it (undo with `model.set_attn_implementation`)."""
    register_attention()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
