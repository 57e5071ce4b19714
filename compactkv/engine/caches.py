"""The one place the engine makes KV caches and asks them how many bytes they hold.

`make_cache` returns a `compactkv.cache.TurboQuantCache` when the cache package provides it. Until then (a checkout
where the cache is still being written) it validates the kinds the same way and returns transformers' DynamicCache,
and says so in `cache_backend`.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

from ..core.kinds import parse_kind


def _turbo_cache_class():
    try:
        from ..cache import TurboQuantCache
    except ImportError:
        return None
    return TurboQuantCache


def cache_backend() -> str:
    """'turboquant' when the compressed cache is available, else 'dynamic' (uncompressed fallback)."""
    return "turboquant" if _turbo_cache_class() is not None else "dynamic"


def make_cache(model: Any, k: str = "turbo4", v: str = "turbo4", policy: Any = None) -> Any:
    """A fresh cache for one sequence of `model`; ValueError for unknown kinds or policies, before any compute."""
    cls = _turbo_cache_class()
    if cls is not None:
        return cls(model.config, k=k, v=v, policy=policy)
    from transformers import DynamicCache

    parse_kind(k)
    parse_kind(v)
    if policy is not None and not isinstance(policy, (str, list, tuple)):
        raise ValueError(f"policy must be None, a preset name or a per-layer list of (k, v) kinds, got {policy!r}")
    return DynamicCache(config=model.config)


def cache_memory(cache: Any) -> dict:
    """Bytes of one cache: `kv_bytes` really held = `compressed_bytes` + `window_bytes` (tokens kept in fp16: sinks,
    the recent window, or everything in an uncompressed cache) + `aux_bytes` (per-head key means and outlier
    maps); `fp16_bytes` = the same tokens in fp16, `compressed_fp16_bytes` = the compressed ones in fp16."""
    if hasattr(cache, "memory_report"):
        r = cache.memory_report()
        return {"kv_bytes": int(r["kv_bytes"]), "fp16_bytes": int(r["fp16_bytes"]),
                "compressed_bytes": int(r.get("compressed_bytes", r["kv_bytes"])),
                "window_bytes": int(r.get("window_bytes", 0)), "aux_bytes": int(r.get("aux_bytes", 0)),
                "compressed_fp16_bytes": int(r.get("compressed_fp16_bytes", 0)),
                "tokens": int(cache.get_seq_length())}
    held = fp16 = 0
    for layer in getattr(cache, "layers", ()):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None and t.numel():
                held += t.numel() * t.element_size()
                fp16 += t.numel() * 2
    return {"kv_bytes": held, "fp16_bytes": fp16, "compressed_bytes": 0, "window_bytes": held, "aux_bytes": 0,
            "compressed_fp16_bytes": 0, "tokens": int(cache.get_seq_length())}


@lru_cache(maxsize=None)
def _cache_kwarg(forward_cls: type) -> str:
    params = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model: Any) -> str:
    """The forward argument that takes the cache: `cache` on transformers >= 5.24, `past_key_values` before."""
    return _cache_kwarg(type(model))


def parse_policy(text: str | None) -> Any:
    """A policy from flag/profile text: None, a preset name or mode ("1", "q8-edges"), or an explicit per-layer
    list "k:v,k:v,..." (a bare kind means the same kind for K and V)."""
    from ..core.policy import preset_name

    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (list, tuple)):
        pairs = [tuple(p) if isinstance(p, (list, tuple)) else (p, p) for p in text]
    elif isinstance(text, int) or ("," not in text and ":" not in text):
        preset_name(text)
        return str(text)
    else:
        pairs = [tuple(item.split(":", 1)) if ":" in item else (item, item)
                 for item in (s.strip() for s in text.split(","))]
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"policy entries must be (k, v) pairs, got {pair!r}")
        parse_kind(pair[0])
        parse_kind(pair[1])
    return [tuple(p) for p in pairs]
