"""Seeded randomized Hadamard rotation for any supported head_dim, without padding.

d = p * m with p a power of two and m in {1, 3, 5, 7}. The rotation is R = (Q_m ⊗ H_p) · diag(s):
random ±1 signs s, then a normalised fast Walsh-Hadamard transform over blocks of p contiguous coordinates
(O(d log p)), then a seeded random orthogonal m x m matrix Q_m mixing the m blocks (O(d m); absent when m = 1).
R is exactly orthonormal, every output coordinate depends on every input coordinate, and nothing is padded.
Signs and Q_m are drawn on the CPU from a torch.Generator seeded with `seed`, so CPU and CUDA use the same R.
"""

from __future__ import annotations

import functools
import math

import torch

ODD_FACTORS = (1, 3, 5, 7)
MIN_DIM, MAX_DIM = 16, 512


def split_dim(dim: int) -> tuple[int, int]:
    """Return (p, m) with dim = p * m, p a power of two >= 8, m in ODD_FACTORS; ValueError otherwise."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise ValueError(f"dimension must be an int, got {type(dim).__name__}")
    m = dim
    while m % 2 == 0 and m > 0:
        m //= 2
    p = dim // m if m else 0
    if m not in ODD_FACTORS or p < 8 or not (MIN_DIM <= dim <= MAX_DIM):
        raise ValueError(
            f"unsupported dimension {dim}: accepted are {MIN_DIM}..{MAX_DIM} of the form 2^k * m with 2^k >= 8 and "
            f"m in {ODD_FACTORS} (e.g. 32, 64, 80, 96, 112, 128, 160, 192, 256, 512)"
        )
    return p, m


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Normalised fast Walsh-Hadamard transform over the last dimension (a power of two), in x's dtype.

    Butterflies pair elements at distance h = 1, 2, 4, ...; the result is scaled by 1/sqrt(n) at the end.
    The order of operations is fixed so that any implementation following it gives identical float32 results.
    """
    n = x.shape[-1]
    lead = x.shape[:-1]
    x = x.contiguous()  # every reshape below must be a view, so the out= writes land in the buffers
    out = torch.empty_like(x)
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        o = out.reshape(*lead, n // (2 * h), 2, h)
        torch.add(y[..., 0, :], y[..., 1, :], out=o[..., 0, :])
        torch.sub(y[..., 0, :], y[..., 1, :], out=o[..., 1, :])
        x, out = out, (x if h > 1 else torch.empty_like(x))
        h *= 2
    return x * (1.0 / math.sqrt(n))


class Rotation:
    """The orthonormal rotation R for one dimension and seed. `forward(x) = R x`, `inverse(y) = R^T y` on the last dim."""

    def __init__(self, dim: int, seed: int = 0):
        self.dim = dim
        self.seed = int(seed)
        self.p, self.m = split_dim(dim)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + dim)
        self.signs = (torch.randint(0, 2, (dim,), generator=g) * 2 - 1).to(torch.float32)
        if self.m > 1:
            a = torch.randn(self.m, self.m, generator=g, dtype=torch.float64)
            q, r = torch.linalg.qr(a)
            q = q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal matrix
            self.mix = q
        else:
            self.mix = None

    @functools.lru_cache(maxsize=8)
    def _on(self, device: torch.device, dtype: torch.dtype):
        mix = None if self.mix is None else self.mix.to(device=device, dtype=dtype)
        return self.signs.to(device=device, dtype=dtype), mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """R x over the last dimension. x: [..., dim] float32/float64."""
        signs, mix = self._on(x.device, x.dtype)
        y = fwht((x * signs).reshape(*x.shape[:-1], self.m, self.p))
        if mix is not None:
            y = torch.einsum("ij,...jp->...ip", mix, y)
        return y.reshape(x.shape)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """R^T y over the last dimension. y: [..., dim] float32/float64."""
        signs, mix = self._on(y.device, y.dtype)
        z = y.reshape(*y.shape[:-1], self.m, self.p)
        if mix is not None:
            z = torch.einsum("ji,...jp->...ip", mix, z)
        return fwht(z).reshape(y.shape) * signs

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The dense d x d matrix R (for tests and references)."""
        return self.forward(torch.eye(self.dim, dtype=dtype)).T


@functools.lru_cache(maxsize=None)
def get_rotation(dim: int, seed: int = 0) -> Rotation:
    return Rotation(dim, seed)


def hadamard_factors(m: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor | None:
    """(pre, post) with m = diag(pre) H diag(post), H the unnormalised Sylvester Hadamard matrix of order D (a
    power of two), as float64 [..., 2, D] on the CPU, one pair per leading index of m ([D, D] or [..., D, D]); None
    where m is not of that form (to rtol of its largest entry), D is not a power of two or m is not finite.

    Then x @ m = ((x * pre) @ H) * post: O(D log D) instead of a dense D x D product. A rotated segment map
    (x @ fwd = R x, R = H diag(s) / sqrt(D)) and its inverse are of that form, and so is a map whose rows are
    scaled (keys stored divided by a per-channel scale). Reads m on the host."""
    d = m.shape[-1]
    if m.dim() < 2 or m.shape[-2] != d or d < 2 or d & (d - 1):
        return None
    x = m.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        return None
    h = fwht(torch.eye(d, dtype=torch.float64)) * math.sqrt(d)  # exact ±1
    s = x * h  # = pre_i post_j where m is of the form: rank one
    flat = s.reshape(-1, d, d)
    pairs = []
    for one in flat:
        mag = one.abs()
        big = mag.max()
        if big == 0:
            return None
        i, j = divmod(int(mag.argmax()), d)
        pre, post = one[:, j], one[i, :] / one[i, j]
        if (one - pre[:, None] * post[None, :]).abs().max() > rtol * big:
            return None
        pairs.append(torch.stack([pre, post]))
    return torch.stack(pairs).reshape(*m.shape[:-2], 2, d)
