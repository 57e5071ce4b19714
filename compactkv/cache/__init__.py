"""The transformers integration: TurboQuantCache, its per-layer storage and configuration."""

from .cache import ATTN_IMPLEMENTATION, TurboQuantCache, head_dim_of, kv_layer_types
from .config import CacheConfig
from .layer import TurboQuantLayer

__all__ = ["ATTN_IMPLEMENTATION", "CacheConfig", "TurboQuantCache", "TurboQuantLayer", "head_dim_of",
           "kv_layer_types"]
