"""TurboQuant building blocks on rotated unit vectors: the MSE quantizer and the 1-bit QJL residual sketch.

All arithmetic is float32 in a fixed order (pairwise tree sums, correctly rounded division and sqrt) so a GPU
kernel following the same order produces bit-identical codes.
"""

from __future__ import annotations

import functools
import math

import torch

from .codebook import lloyd_max
from .rotation import get_rotation


def tree_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim in a fixed order: halve (first half + second half) while even, then left to right."""
    n = x.shape[-1]
    while n % 2 == 0 and n > 1:
        n //= 2
        x = x[..., :n] + x[..., n:]
    out = x[..., 0]
    for i in range(1, n):
        out = out + x[..., i]
    return out


def tree_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dim with `tree_sum` order. x: float32 [..., d] -> [...].

    The square root is taken in float64 and rounded once: torch's CPU float32 sqrt is not always correctly
    rounded (sqrt(13.10014533996582f) gave 3.619412422180176, not 3.6194121837615967), GPU sqrt.rn is."""
    return torch.sqrt(tree_sum(x * x).double()).float()


@functools.lru_cache(maxsize=None)
def _codebook_tensors(dim: int, bits: int, device: torch.device):
    cb = lloyd_max(dim, bits)
    c = torch.tensor(cb.centroids, dtype=torch.float32, device=device)
    b = torch.tensor(cb.boundaries, dtype=torch.float32, device=device)
    return c, b


class MSEQuantizer:
    """TurboQuant-MSE for vectors of `dim`: y = R x / ‖x‖, index = Lloyd-Max cell of each coordinate of y."""

    def __init__(self, dim: int, bits: int, seed: int = 0):
        self.dim, self.bits = dim, bits
        self.rotation = get_rotation(dim, seed)
        lloyd_max(dim, bits)  # validate and warm the cache

    def codebook(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(centroids [2**bits], boundaries [2**bits - 1]) as float32 on `device`."""
        return _codebook_tensors(self.dim, self.bits, torch.device(device))

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: float32 [..., dim] -> (idx uint8 [..., dim], norm float32 [...], y = R x / ‖x‖ float32 [..., dim])."""
        norm = tree_norm(x)
        z = self.rotation.forward(x)
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        y = torch.where((norm > 0).unsqueeze(-1), z / safe.unsqueeze(-1), torch.zeros_like(z))
        _, bounds = self.codebook(x.device)
        idx = torch.bucketize(y.contiguous(), bounds, right=False).to(torch.uint8)  # idx = #(boundaries < y)
        return idx, norm, y

    def centroids(self, idx: torch.Tensor) -> torch.Tensor:
        """Codebook values c[idx] in the rotated space, float32 [..., dim]."""
        c, _ = self.codebook(idx.device)
        return c[idx.long()]

    def centroids_packed(self, packed: torch.Tensor) -> torch.Tensor:
        """c[idx] straight from packed bytes [..., dim*bits/8] through a lookup table, without unpacking indices
        (a byte holds 8/bits indices; for 3 bits a 12-bit half of each 3-byte group holds 4). float32 [..., dim]."""
        table, width = _packed_table(self.dim, self.bits, packed.device)
        lead = packed.shape[:-1]
        if self.bits == 3:
            t = packed.reshape(*lead, packed.shape[-1] // 3, 3).to(torch.int32)
            word = t[..., 0] | (t[..., 1] << 8) | (t[..., 2] << 16)
            keys = torch.stack((word & 0xFFF, word >> 12), dim=-1)
        else:
            keys = packed.to(torch.int32)
        return table.index_select(0, keys.reshape(-1)).reshape(*lead, self.dim)


@functools.lru_cache(maxsize=None)
def _packed_table(dim: int, bits: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Table mapping a packing unit (a byte; 12 bits for 3-bit codes) to the centroids of the indices it holds."""
    c, _ = _codebook_tensors(dim, bits, device)
    unit_bits = 12 if bits == 3 else 8
    per = unit_bits // bits
    keys = torch.arange(2**unit_bits, device=device, dtype=torch.int64)
    idx = torch.stack([(keys >> (bits * j)) & (2**bits - 1) for j in range(per)], dim=-1)
    return c[idx], per


@functools.lru_cache(maxsize=None)
def _sign_table(device: torch.device) -> torch.Tensor:
    keys = torch.arange(256, device=device)
    return torch.stack([((keys >> j) & 1).float() * 2.0 - 1.0 for j in range(8)], dim=-1)


@functools.lru_cache(maxsize=None)
def _gaussian_matrix(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 7_919 + dim + 17)
    return torch.randn(dim, dim, generator=g, dtype=torch.float32)


class QJLSketch:
    """1-bit QJL of a residual r: signs of S r with S a seeded d x d standard Gaussian matrix.

    ⟨y, r⟩ ≈ √(π/2)/d · ‖r‖ · ⟨S y, sign(S r)⟩ is unbiased over S, with variance (π/2 ‖y‖²‖r‖² − ⟨y,r⟩²)/d.
    """

    def __init__(self, dim: int, seed: int = 0):
        self.dim = dim
        self.seed = seed
        self.scale = math.sqrt(math.pi / 2.0) / dim

    def matrix(self, device, dtype=torch.float32) -> torch.Tensor:
        return _gaussian_matrix(self.dim, self.seed).to(device=device, dtype=dtype)

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """S v over the last dim."""
        return v @ self.matrix(v.device, v.dtype).T

    def signs_packed(self, packed: torch.Tensor) -> torch.Tensor:
        """±1.0 float32 [..., dim] from sign bits packed 8 per byte (bit j of a byte = sign j, 1 meaning +)."""
        table = _sign_table(packed.device)
        return table.index_select(0, packed.reshape(-1).to(torch.int32)).reshape(*packed.shape[:-1], self.dim)

    def signs(self, r: torch.Tensor) -> torch.Tensor:
        """Bits of sign(S r) as uint8 {0, 1} (1 where S r >= 0)."""
        return (self.project(r) >= 0).to(torch.uint8)
