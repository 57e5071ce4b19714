"""The KV kinds: names, bit widths and exact byte sizes, computed in this one place.

Row layout (one row per head vector, little-endian, see docs/format.md):
  f16            d x fp16
  q8_0           d/32 blocks of [fp16 scale][32 x int8]                       (llama.cpp block_q8_0)
  turboB         [fp16 norm][d indices of B bits]
  turboB.5       [fp16 norm_hi][fp16 norm_lo][d/2 indices of B+1 bits][d/2 indices of B bits]
  turboB+qjl     [fp16 norm][fp16 residual norm][d indices of B-1 bits][d sign bits]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .packing import packed_nbytes
from .rotation import split_dim

KINDS = (
    "f16", "q8_0",
    "turbo2", "turbo3", "turbo4",
    "turbo2.5", "turbo3.5",
    "turbo2+qjl", "turbo3+qjl", "turbo4+qjl",
)
Q8_BLOCK = 32
_TURBO = re.compile(r"^turbo([234])(\.5)?(\+qjl)?$")


@dataclass(frozen=True)
class KindSpec:
    """What a kind name means. `bits` is the MSE index width (the low group's for fractional kinds)."""

    name: str
    family: str  # "f16" | "q8_0" | "mse" | "frac" | "prod"
    bits: int = 16

    @property
    def nominal_bits(self) -> float:
        """Index bits per coordinate that the name promises (norms excluded)."""
        return {"f16": 16.0, "q8_0": 8.0, "mse": float(self.bits), "frac": self.bits + 0.5,
                "prod": float(self.bits + 1)}[self.family]


def parse_kind(kind: str) -> KindSpec:
    """KindSpec for a kind name; ValueError listing the accepted names otherwise."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"unknown KV kind {kind!r}; accepted: {', '.join(KINDS)}")
    if kind in ("f16", "q8_0"):
        return KindSpec(kind, kind, 16 if kind == "f16" else 8)
    b, half, qjl = _TURBO.match(kind).groups()
    if qjl:
        return KindSpec(kind, "prod", int(b) - 1)
    return KindSpec(kind, "frac" if half else "mse", int(b))


def check_head_dim(kind: str, head_dim: int) -> None:
    """ValueError if `kind` cannot store vectors of `head_dim` without padding."""
    spec = parse_kind(kind)
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
    if spec.family == "f16":
        return
    if spec.family == "q8_0":
        if head_dim % Q8_BLOCK:
            raise ValueError(f"q8_0 needs head_dim to be a multiple of {Q8_BLOCK}, got {head_dim}")
        return
    try:
        split_dim(head_dim)
        if spec.family == "frac":
            split_dim(head_dim // 2)
            if head_dim % 16:
                raise ValueError("not a multiple of 16")
    except ValueError as e:
        raise ValueError(f"{kind} does not support head_dim {head_dim}: {e}") from None


def row_bytes(kind: str, head_dim: int) -> int:
    """Exact bytes of one stored vector of `head_dim` values."""
    check_head_dim(kind, head_dim)
    spec = parse_kind(kind)
    d = head_dim
    if spec.family == "f16":
        return 2 * d
    if spec.family == "q8_0":
        return (d // Q8_BLOCK) * (2 + Q8_BLOCK)
    if spec.family == "mse":
        return 2 + packed_nbytes(d, spec.bits)
    if spec.family == "frac":
        return 4 + packed_nbytes(d // 2, spec.bits + 1) + packed_nbytes(d // 2, spec.bits)
    return 4 + (packed_nbytes(d, spec.bits) if spec.bits else 0) + packed_nbytes(d, 1)


def bits_per_value(kind: str, head_dim: int) -> float:
    """Stored bits per K or V element, norms and scales included."""
    return row_bytes(kind, head_dim) * 8 / head_dim


GRAPH_KINDS = ("turbo4", "turbo3", "turbo2", "f16")  # what a static cache for CUDA-graph decoding stores


def check_graph_kinds(k: str, v: str, policy=None, flag: str = "graphs") -> None:
    """ValueError naming what graphed decoding (`compactkv run --graphs`, `compactkv serve --graphs`) accepts: one
    K/V pair of GRAPH_KINDS, both f16 or both compressed, no per-layer policy (a static cache holds one kind per
    side)."""
    if policy:
        raise ValueError(f"{flag} takes one K/V pair, not a per-layer policy")
    if k not in GRAPH_KINDS or v not in GRAPH_KINDS or (k == "f16") != (v == "f16"):
        raise ValueError(f"{flag} takes K/V kinds {', '.join(GRAPH_KINDS)} (both f16 or both compressed), got "
                         f"K {k} / V {v}")
