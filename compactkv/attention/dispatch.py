"""Backend choice for attention on the compressed cache: Triton kernels on CUDA, the torch reference elsewhere.

The choice is an explicit argument, else the COMPACTKV_BACKEND setting (auto | torch | triton), else auto.
`auto` uses the kernels when the query is on CUDA, Triton imports and the layer's kinds are supported; `torch`
forces the reference (for debugging); `triton` raises ValueError where the kernels cannot run the call.
Triton is imported only when a CUDA call asks for it, never by `import compactkv`.
"""

from __future__ import annotations

import functools
import os

import torch

from ..cache.layer import set_encoder_factory
from .reference import compressed_attention

BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV = "COMPACTKV_BACKEND"
TRITON_MIN = (3, 6)  # the kernels' Gluon API: 3.6 (timed); 3.7-3.9 compile too, and their builds ran on an H200
# (scripts/triton_swap.py; 3.8 and 3.9 decode 8-20% slower: README, Limitations)


def resolve_backend(backend: str | None = None) -> str:
    """The backend setting in force: the argument, else $COMPACTKV_BACKEND, else "auto"."""
    choice = (backend or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"unknown attention backend {choice!r}; accepted: {', '.join(BACKENDS)}")
    return choice


@functools.lru_cache(maxsize=1)
def _triton_missing() -> str | None:
    """Why the kernels' triton is not there (not installed, or older than TRITON_MIN), or None (asked once per
    process: a failed import is not cached by Python and would search the file system again on every call)."""
    try:
        import triton
    except ImportError:
        return "triton is not installed"
    from .triton import triton_release
    version = triton_release(triton.__version__)
    if version is None:
        return None  # (a development build: let it try)
    if version < TRITON_MIN:
        return (f"triton {triton.__version__} is older than {'.'.join(map(str, TRITON_MIN))}, the first release "
                "with the Gluon API the kernels use")
    return None


def _has_triton() -> bool:
    """Whether the kernels' triton imports (`_triton_missing`)."""
    return _triton_missing() is None


def triton_unavailable(layer, query: torch.Tensor, mask: torch.Tensor | None, softcap: float | None) -> str | None:
    """Why the Triton kernels cannot run this call, or None when they can."""
    if not query.is_cuda:
        return "the query is not on a CUDA device"
    why = _triton_missing()
    if why:
        return why
    from .triton import backend
    if getattr(layer, "k_scale", None) is not None and not getattr(backend, "SUPPORTS_KEY_SCALE", False):
        return "the layer's keys are stored with a per-channel scale (scale_keys) the kernels do not apply"
    return backend.why_not_triton(layer, query, mask, softcap)


def encoder_for(x: torch.Tensor, backend: str | None = None):
    """The encoder a TurboQuantLayer receiving x should use: the Triton one (rows bit-identical to Codec.encode;
    the layer keeps Codec.encode for kinds the kernel does not take) for CUDA tensors when Triton imports and the
    backend (`resolve_backend`) is not torch, else None (Codec.encode). Installed as the cache layers' encoder
    factory, so a layer's first update is encoded by the kernel too, not only those after its first attention call."""
    if not x.is_cuda or resolve_backend(backend) == "torch" or not _has_triton():
        return None
    from .triton.encode import layer_encoder
    return layer_encoder


set_encoder_factory(encoder_for)


def _install_encoder(layer, query: torch.Tensor, backend: str | None) -> None:
    """At an attention call: the encoder for a layer that has none yet (`encoder_for`)."""
    layer.encoder = encoder_for(query, backend)


def attend(layer, query: torch.Tensor, mask: torch.Tensor | None, scaling: float, softcap: float | None = None,
           backend: str | None = None) -> torch.Tensor:
    """Attention of query [B, Hq, Tq, D] over everything `layer` stores -> [B, Tq, Hq, D], on the chosen backend."""
    choice = resolve_backend(backend)
    if getattr(layer, "encoder", False) is None:
        _install_encoder(layer, query, backend)
    observe = getattr(layer, "observe", None)
    if observe is not None:  # query statistics before the layer's first compression (TurboQuantLayer.scale_keys)
        observe(query)
    if choice != "torch":
        why = triton_unavailable(layer, query, mask, softcap)
        if why is None:
            from .triton.backend import triton_attention
            return triton_attention(layer, query, mask, scaling, softcap=softcap)
        if choice == "triton":
            raise ValueError(f"{BACKEND_ENV}=triton cannot run this attention call: {why}")
    if mask is None and query.shape[2] == 1 and getattr(layer, "pad_bias", None) is not None:
        mask = layer.padding_mask()  # a static layer's recorded padding (the kernels read `pad_bias` themselves)
    return compressed_attention(layer, query, mask, scaling, softcap=softcap)
