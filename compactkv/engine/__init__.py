"""Token ids in, token ids out: model loading, prefill, decode, sampling, prefix reuse and scheduling."""

from .caches import cache_backend, cache_memory, make_cache
from .generate import Generation, TokenEvent, stream_generate
from .loader import LoadedModel, ModelSpec, load_model
from .model_files import default_gguf_path, ensure_default_model
from .prefix import PrefixStore
from .sampling import SamplingConfig
from .scheduler import EngineConfig, Scheduler

__all__ = ["EngineConfig", "Generation", "LoadedModel", "ModelSpec", "PrefixStore", "SamplingConfig", "Scheduler",
           "TokenEvent", "cache_backend", "cache_memory", "default_gguf_path", "ensure_default_model", "load_model",
           "make_cache", "stream_generate"]
