"""KV-cache bytes for a model shape and a KV config: per token, at a context, with batches and sliding windows.

All per-vector sizes come from compactkv.core.kinds.row_bytes; this module only counts vectors.
A layer holds `layer.tokens(context)` tokens per sequence (min(context, window) for sliding-window layers).
`fp16_tokens` models a cache that keeps some tokens per layer uncompressed (attention sinks + a recent window).
"""

from __future__ import annotations

from functools import lru_cache

from compactkv.core.kinds import row_bytes

from .kvconfig import KVConfig
from .shapes import KVLayer, ModelShape

_row_bytes = lru_cache(maxsize=None)(row_bytes)  # the planner's searches ask for the same few sizes many times


def _side_bytes(layer: KVLayer, kind: str, dim: int, tokens: int, fp16_tokens: int) -> int:
    raw = min(tokens, fp16_tokens) if kind != "f16" else 0
    return layer.kv_heads * (raw * _row_bytes("f16", dim) + (tokens - raw) * _row_bytes(kind, dim))


def layer_bytes(shape: ModelShape, config: KVConfig, context: int, fp16_tokens: int = 0) -> list[int]:
    """Bytes of K and V held by each KV-carrying layer for one sequence of `context` tokens."""
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    out = []
    for layer, (k, v) in zip(shape.layers, config.layer_kinds(shape.n_kv_layers)):
        t = layer.tokens(context)
        out.append(_side_bytes(layer, k, layer.k_dim, t, fp16_tokens) + _side_bytes(layer, v, layer.v_dim, t, fp16_tokens))
    return out


def kv_bytes(shape: ModelShape, config: KVConfig, context: int, batch: int = 1, fp16_tokens: int = 0) -> int:
    """Total KV bytes for `batch` sequences of `context` tokens."""
    return batch * sum(layer_bytes(shape, config, context, fp16_tokens))


def kv_bytes_per_token(shape: ModelShape, config: KVConfig) -> int:
    """Bytes one token adds across all KV layers while the context is shorter than every window."""
    return sum(layer_bytes(shape, config, 1))


def bits_per_value(shape: ModelShape, config: KVConfig) -> float:
    """Stored bits per K/V element averaged over layers (norms and scales included)."""
    values = sum(layer.kv_heads * (layer.k_dim + layer.v_dim) for layer in shape.layers)
    return kv_bytes_per_token(shape, config) * 8 / values if values else 0.0
