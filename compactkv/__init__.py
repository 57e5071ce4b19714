"""compactkv: TurboQuant KV-cache compression with attention on the compressed cache.

`import compactkv` loads torch and the core codec only; transformers-facing names load on first use.
"""

__version__ = "0.1.0"

from .core import KINDS, Codec  # noqa: E402

_LAZY = {
    "TurboQuantCache": ("compactkv.cache", "TurboQuantCache"),
    "CacheConfig": ("compactkv.cache", "CacheConfig"),
    "attach": ("compactkv.attention", "attach"),
    "register_attention": ("compactkv.attention", "register_attention"),
    "PRESETS": ("compactkv.core.policy", "PRESETS"),
}

__all__ = ["Codec", "KINDS", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'compactkv' has no attribute {name!r}")
