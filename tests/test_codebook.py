"""Lloyd-Max codebooks: Gaussian limit, brute-force k-means on exact samples, symmetry, exact MSE."""

import math

import numpy as np
import pytest
from scipy import integrate, special

from compactkv.core import gaussian_lloyd_max, lloyd_max
from compactkv.core.codebook import SUPPORTED_BITS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Textbook Lloyd-Max quantizers of N(0, 1) (Max 1960), rounded to 4 decimals.
GAUSSIAN_TABLE = {1: [0.7979], 2: [0.4528, 1.5104], 3: [0.2451, 0.7560, 1.3439, 2.1519]}


def density(d: int):
    """f(t) ∝ (1 - t²)^((d-3)/2) on [-1, 1], normalised: the coordinate law of a random unit vector in R^d."""
    a = (d - 1) / 2.0
    return lambda t: math.exp((a - 1) * math.log1p(-t * t) - special.betaln(0.5, a))


@pytest.mark.parametrize("bits", sorted(GAUSSIAN_TABLE))
def test_gaussian_lloyd_max_matches_textbook(bits):
    c = gaussian_lloyd_max(bits)
    half = np.array(GAUSSIAN_TABLE[bits])
    np.testing.assert_allclose(c, np.concatenate([-half[::-1], half]), atol=5e-5)


@pytest.mark.parametrize("bits", (1, 2, 3, 4))
def test_codebook_tends_to_gaussian_limit_over_sqrt_d(bits):
    """√d · c(d) → Gaussian Lloyd-Max with an O(1/d) gap; at d = 65536 b=2 reads ±0.4528, ±1.5104."""
    g = gaussian_lloyd_max(bits)
    gaps = []
    for d in (64, 128, 256, 1024, 4096, 65536):
        gap = np.max(np.abs(lloyd_max(d, bits).centroids * math.sqrt(d) - g))
        assert gap < 8.0 / d, (d, gap)
        gaps.append(gap)
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    if bits == 2:
        np.testing.assert_allclose(lloyd_max(65536, 2).centroids * 256, [-1.5104, -0.4528, 0.4528, 1.5104],
                                   atol=5e-5)


def kmeans_1d(samples: np.ndarray, init: np.ndarray, tol: float) -> np.ndarray:
    """Plain Lloyd iterations (k-means) on 1-D samples, with prefix sums over the sorted samples."""
    s = np.sort(samples)
    csum = np.concatenate([[0.0], np.cumsum(s)])
    c = init.copy()
    for _ in range(100_000):
        edges = np.concatenate([[0], np.searchsorted(s, (c[1:] + c[:-1]) / 2), [len(s)]])
        new = np.diff(csum[edges]) / np.diff(edges)
        if np.max(np.abs(new - c)) < tol:
            return new
        c = new
    raise AssertionError("k-means did not converge")


@pytest.mark.parametrize("d", (64, 128))
@pytest.mark.parametrize("bits", (1, 2, 3, 4))
def test_codebook_matches_kmeans_on_exact_samples(d, bits):
    """k-means on K independent batches of exact-density samples; t-statistic of the mean gap per centroid.

    The tolerance comes from the spread of the K batch solutions (standard error of their mean), so it shrinks
    with the sample size. |t| < 6 with 19 degrees of freedom fails by chance with p ~ 1e-5 per centroid.
    """
    rng = np.random.default_rng()
    K, n, a, sigma = 20, 100_000, (d - 1) / 2.0, 1 / math.sqrt(d)
    exact = lloyd_max(d, bits).centroids
    sols = []
    for _ in range(K):
        t = 2.0 * rng.beta(a, a, size=n) - 1.0  # exact density: t = 2 Beta(a, a) - 1
        sols.append(kmeans_1d(np.concatenate([t, -t]), gaussian_lloyd_max(bits) * sigma, 1e-10 * sigma))
    sols = np.array(sols)
    se = sols.std(axis=0, ddof=1) / math.sqrt(K)
    t_exact = np.abs(sols.mean(0) - exact) / se
    assert t_exact.max() < 6.0, (t_exact, se / sigma)
    if bits >= 3 and d == 64:  # the test has power: the Gaussian-limit codebook is rejected here
        t_gauss = np.abs(sols.mean(0) - gaussian_lloyd_max(bits) * sigma) / se
        assert t_gauss.max() > 6.0, t_gauss


@pytest.mark.parametrize("d", (32, 64, 80, 128, 256, 512))
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_codebook_symmetric_sorted_and_midpoint_boundaries(d, bits):
    cb = lloyd_max(d, bits)
    c, b = cb.centroids, cb.boundaries
    assert c.shape == (2**bits,) and b.shape == (2**bits - 1,)
    assert np.all(np.diff(c) > 0) and -1 < c[0] and c[-1] < 1
    np.testing.assert_array_equal(c, -c[::-1])
    np.testing.assert_allclose(b, (c[1:] + c[:-1]) / 2, rtol=0, atol=1e-15)
    assert cb.mse_per_vector == pytest.approx(d * cb.mse_per_coord)


@pytest.mark.parametrize("d", (64, 128, 256))
@pytest.mark.parametrize("bits", (1, 2, 3, 4))
def test_codebook_mse_and_centroid_condition_by_quadrature(d, bits):
    """mse_per_coord and E[t | cell] = centroid, recomputed by numerical integration of the exact density."""
    cb = lloyd_max(d, bits)
    f = density(d)
    edges = np.concatenate([[-1.0], cb.boundaries, [1.0]])
    mse = 0.0
    for lo, hi, c in zip(edges[:-1], edges[1:], cb.centroids):
        mass = integrate.quad(f, lo, hi, epsabs=0, epsrel=1e-12)[0]
        mean = integrate.quad(lambda t: t * f(t), lo, hi, epsabs=0, epsrel=1e-12)[0] / mass
        assert mean == pytest.approx(c, rel=1e-8, abs=1e-12)
        mse += integrate.quad(lambda t: (t - c) ** 2 * f(t), lo, hi, epsabs=0, epsrel=1e-12)[0]
    assert cb.mse_per_coord == pytest.approx(mse, rel=1e-8)


def test_every_supported_dim_and_bits_yields_a_sorted_symmetric_codebook():
    # (how long these take is a benchmark matter, not asserted here)
    lloyd_max.cache_clear()
    for d in (16, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256, 512):
        for bits in SUPPORTED_BITS:
            c = np.asarray(lloyd_max(d, bits).centroids, dtype=np.float64)
            assert c.shape == (2**bits,) and np.all(np.diff(c) > 0)
            np.testing.assert_allclose(c, -c[::-1], atol=1e-9)


@pytest.mark.parametrize("dim, bits", [(128, 0), (128, 5), (128, 16), (2, 2), (64.5, 2)])
def test_codebook_rejects_bad_arguments(dim, bits):
    with pytest.raises(ValueError):
        lloyd_max(dim, bits)
