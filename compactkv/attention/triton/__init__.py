"""Triton kernels of the attention backend (imported only where they run: `compactkv.attention.dispatch`)."""

from __future__ import annotations


def triton_release(version: str | None = None) -> tuple[int, ...] | None:
    """(major, minor) of a triton version string (default: the installed triton's; ImportError where there is none),
    or None where it does not parse (a development build, e.g. "main")."""
    if version is None:
        import triton
        version = triton.__version__
    try:
        return tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return None
