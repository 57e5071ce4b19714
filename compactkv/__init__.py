"""compactkv: TurboQuant KV-cache compression with attention on the compressed cache."""

__version__ = "0.1.0"

from .core import Codec, KINDS  # noqa: E402

__all__ = ["Codec", "KINDS", "__version__"]
