"""Lossless packing of b-bit indices (b = 1, 2, 3, 4, 8) into uint8, little-endian, no wasted bits.

b in {1, 2, 4, 8}: 8/b indices per byte, index j of a group at bits [j*b, (j+1)*b).
b = 3: 8 indices in 3 bytes, read as one little-endian 24-bit integer with index j at bits [3j, 3j+3).
Indices are packed along the last dimension, whose length must be a multiple of 8.
"""

from __future__ import annotations

import torch

PACKABLE_BITS = (1, 2, 3, 4, 8)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes taken by n indices of `bits` bits (n a multiple of 8)."""
    return n * bits // 8


def _check(n: int, bits: int) -> None:
    if bits not in PACKABLE_BITS:
        raise ValueError(f"can pack {PACKABLE_BITS} bits per index, got {bits!r}")
    if n % 8:
        raise ValueError(f"the packed dimension must be a multiple of 8, got {n}")


def pack_bits(idx: torch.Tensor, bits: int) -> torch.Tensor:
    """idx: [..., n] integer values in [0, 2**bits) -> uint8 [..., n * bits / 8]."""
    n = idx.shape[-1]
    _check(n, bits)
    lead = idx.shape[:-1]
    v = idx.to(torch.int32)
    if bits == 8:
        return v.to(torch.uint8)
    if bits == 3:
        g = v.reshape(*lead, n // 8, 8)
        shifts = torch.arange(0, 24, 3, device=idx.device, dtype=torch.int32)
        word = (g << shifts).sum(-1, dtype=torch.int32)  # disjoint bit fields: sum == bitwise or
        out = torch.stack((word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF), dim=-1)
        return out.reshape(*lead, n * 3 // 8).to(torch.uint8)
    per = 8 // bits
    g = v.reshape(*lead, n // per, per)
    shifts = torch.arange(0, 8, bits, device=idx.device, dtype=torch.int32)
    return (g << shifts).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """uint8 [..., n * bits / 8] -> uint8 indices [..., n]."""
    _check(n, bits)
    if packed.shape[-1] != packed_nbytes(n, bits):
        raise ValueError(f"expected {packed_nbytes(n, bits)} packed bytes for {n} indices of {bits} bits, "
                         f"got {packed.shape[-1]}")
    lead = packed.shape[:-1]
    if bits == 8:
        return packed.to(torch.uint8)
    v = packed.to(torch.int32)
    if bits == 3:
        t = v.reshape(*lead, n // 8, 3)
        word = t[..., 0] | (t[..., 1] << 8) | (t[..., 2] << 16)
        shifts = torch.arange(0, 24, 3, device=packed.device, dtype=torch.int32)
        return ((word.unsqueeze(-1) >> shifts) & 7).reshape(*lead, n).to(torch.uint8)
    shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.int32)
    mask = (1 << bits) - 1
    return ((v.unsqueeze(-1) >> shifts) & mask).reshape(*lead, n).to(torch.uint8)
