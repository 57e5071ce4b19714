"""Lloyd-Max scalar codebooks for the coordinates of a random unit vector in R^d.

A coordinate t of a uniformly random unit vector in R^d has density f(t) ∝ (1 - t²)^((d-3)/2) on [-1, 1]
(a Beta((d-1)/2, (d-1)/2) law stretched to [-1, 1]). After a random rotation every coordinate of a unit vector
follows it, so one codebook per (d, bits) serves every coordinate. We solve Lloyd-Max exactly for that density:
the centroid of a cell [a, b] is E[t | a < t < b], computed in closed form from the regularised incomplete beta
function; the fixed point c = T(c) of this Lloyd map is found by Newton steps (tridiagonal Jacobian), which
converge in a handful where plain Lloyd iteration stalls at 8 bits. Cached in memory; a (d, bits) pair takes
milliseconds.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg, special

SUPPORTED_BITS = (1, 2, 3, 4, 8)


@dataclass(frozen=True)
class Codebook:
    """Centroids (ascending, 2**bits) and the 2**bits - 1 decision boundaries, for unit-vector coordinates."""

    dim: int
    bits: int
    centroids: np.ndarray  # float64 [2**bits]
    boundaries: np.ndarray  # float64 [2**bits - 1], midpoints of neighbouring centroids
    mse_per_coord: float  # E[(t - q(t))²] under the exact density

    @property
    def mse_per_vector(self) -> float:
        """Expected squared error of a whole unit vector, d * per-coordinate MSE (the paper's D_mse)."""
        return self.dim * self.mse_per_coord


def _check(dim: int, bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"codebook bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    if not isinstance(dim, int) or dim < 3:
        raise ValueError(f"codebook dimension must be an integer >= 3, got {dim!r}")


def _moments(dim: int):
    """Return (F, G, H): P(t < x), E[t; t < x], E[t²; t < x] for the coordinate density in dimension `dim`."""
    a = (dim - 1) / 2.0

    def F(x):
        return special.betainc(a, a, (np.asarray(x) + 1.0) / 2.0)

    # E[t; t<x] = ∫_{-1}^{x} t f(t) dt. With f(t) = c (1-t²)^(a-1), the antiderivative of t (1-t²)^(a-1) is
    # -(1-t²)^a / (2a), so E[t; t<x] = -c (1-x²)^a / (2a), c = 1 / B(1/2, a) ... we use the beta normaliser directly.
    log_c = -special.betaln(0.5, a)  # density of t: (1-t²)^(a-1) / B(1/2, a)

    def G(x):
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return -np.exp(log_c + a * np.log1p(-np.minimum(x * x, 1.0))) / (2.0 * a)

    # E[t²; t<x]: t² has mean 1/d; by symmetry use the Beta(3/2, a) law of t² restricted to one side.
    def H(x):
        x = np.asarray(x, dtype=np.float64)
        half = special.betainc(0.5 + 1.0, a, np.minimum(x * x, 1.0)) / (2.0 * dim)
        return np.where(x < 0, 1.0 / (2.0 * dim) - half, 1.0 / (2.0 * dim) + half)

    return F, G, H


def _density(dim: int):
    """f(t) = (1 - t²)^((d-3)/2) / B(1/2, (d-1)/2), the normalised coordinate density."""
    a = (dim - 1) / 2.0
    log_c = -special.betaln(0.5, a)
    return lambda x: np.exp(log_c + (a - 1.0) * np.log1p(-np.minimum(x * x, 1.0)))


def _newton_step(c, t, b, mass, fb):
    """One Newton step on T(c) - c = 0 (T = Lloyd map, tridiagonal Jacobian); the Lloyd step T if it misorders.

    Plain Lloyd iteration contracts ever more slowly as levels grow (8 bits: unconverged after 20000 steps);
    Newton converges in a handful.
    """
    up = fb * (b - t[:-1]) / mass[:-1] / 2.0  # dT_i / dc_{i+1}
    lo = fb * (t[1:] - b) / mass[1:] / 2.0  # dT_{i+1} / dc_i
    ab = np.zeros((3, len(c)))
    ab[0, 1:], ab[2, :-1] = up, lo
    ab[1] = -1.0
    ab[1, :-1] += up
    ab[1, 1:] += lo
    try:
        new = c + linalg.solve_banded((1, 1), ab, c - t)
    except (linalg.LinAlgError, ValueError):
        return t
    new = (new - new[::-1]) / 2.0
    ok = np.all(np.isfinite(new)) and np.all(np.diff(new) > 0) and -1.0 < new[0] and new[-1] < 1.0
    return new if ok else t


@functools.lru_cache(maxsize=None)
def lloyd_max(dim: int, bits: int, tol: float = 1e-12, max_iter: int = 20000) -> Codebook:
    """Lloyd-Max codebook of 2**bits levels for the exact unit-vector coordinate density in dimension `dim`."""
    _check(dim, bits)
    F, G, H = _moments(dim)
    levels = 2**bits
    sigma = 1.0 / math.sqrt(dim)
    # Start from equal-probability cells of the Gaussian approximation.
    probs = (np.arange(levels) + 0.5) / levels
    c = special.ndtri(probs) * sigma
    f = _density(dim)
    last = math.inf
    for _ in range(max_iter):
        b = (c[1:] + c[:-1]) / 2.0
        edges = np.concatenate([[-1.0], b, [1.0]])
        mass = np.maximum(np.diff(F(edges)), 1e-300)
        new_c = np.diff(G(edges)) / mass  # the Lloyd map T(c): the centroid of each cell
        new_c = (new_c - new_c[::-1]) / 2.0  # the density is symmetric: keep the codebook exactly symmetric
        res = np.max(np.abs(new_c - c))
        if res < tol * sigma or (res < 1e-9 * sigma and res >= last):  # converged, or at the float64 floor
            c = new_c
            break
        last = res
        c = _newton_step(c, new_c, b, mass, f(b))
    b = (c[1:] + c[:-1]) / 2.0
    edges = np.concatenate([[-1.0], b, [1.0]])
    mass = np.diff(F(edges))
    first = np.diff(G(edges))
    second = np.diff(H(edges))
    mse = float(np.sum(second - 2.0 * c * first + c * c * mass))
    c.setflags(write=False)
    b.setflags(write=False)
    return Codebook(dim=dim, bits=bits, centroids=c, boundaries=b, mse_per_coord=mse)


def gaussian_lloyd_max(bits: int) -> np.ndarray:
    """Lloyd-Max centroids for the standard normal density (the d → ∞ limit of `lloyd_max` times √d)."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    levels = 2**bits
    c = special.ndtri((np.arange(levels) + 0.5) / levels)
    for _ in range(100000):
        b = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2.0, [np.inf]])
        mass = np.diff(special.ndtr(b))
        first = -np.diff(np.exp(-b * b / 2.0) / math.sqrt(2 * math.pi))
        new_c = first / mass
        if np.max(np.abs(new_c - c)) < 1e-13:
            return new_c
        c = new_c
    return c
