"""The seeded randomized Hadamard rotation: orthonormal, exact inverse, dense, deterministic, same on CUDA."""

import random

import pytest
import torch

from compactkv.core import Rotation, get_rotation, split_dim
from compactkv.core.rotation import fwht

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Every head_dim in use, plus the halves the fractional kinds rotate (16, 40, 48, 56).
DIMS = (32, 64, 128, 256, 512, 80, 96, 112, 160, 192, 16, 40, 48, 56)


def fresh_seed() -> int:
    return random.SystemRandom().randrange(2**31)


@pytest.mark.parametrize("d", DIMS)
def test_rotation_is_orthonormal_in_float64(d):
    R = Rotation(d, fresh_seed()).matrix(torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    assert (R @ R.T - eye).abs().max() < 1e-13
    assert (R.T @ R - eye).abs().max() < 1e-13


@pytest.mark.parametrize("d", DIMS)
def test_forward_is_the_matrix_and_inverse_is_exact(d):
    rot = Rotation(d, fresh_seed())
    R = rot.matrix(torch.float64)
    x = torch.randn(37, d, dtype=torch.float64)
    torch.testing.assert_close(rot.forward(x), x @ R.T, rtol=0, atol=1e-13)
    torch.testing.assert_close(rot.inverse(x), x @ R, rtol=0, atol=1e-13)
    torch.testing.assert_close(rot.inverse(rot.forward(x)), x, rtol=0, atol=1e-13)
    x32 = x.float()
    torch.testing.assert_close(rot.inverse(rot.forward(x32)), x32, rtol=0, atol=2e-6 * float(x32.abs().max()))
    assert rot.forward(x32).dtype == torch.float32


@pytest.mark.parametrize("d", DIMS)
def test_every_output_mixes_every_input(d):
    """No block structure survives: each coordinate of R x depends on each coordinate of x."""
    R = Rotation(d, fresh_seed()).matrix(torch.float64)
    assert bool((R.abs() > 0).all())


@pytest.mark.parametrize("d", (64, 80, 128, 192))
def test_rotation_is_deterministic_per_seed_and_differs_across_seeds(d):
    s = fresh_seed()
    a, b, c = Rotation(d, s), Rotation(d, s), Rotation(d, s + 1)
    assert torch.equal(a.matrix(), b.matrix())
    x = torch.randn(5, d)
    assert torch.equal(a.forward(x), b.forward(x))
    assert not torch.allclose(a.matrix(), c.matrix(), atol=1e-3)
    assert get_rotation(d, s) is get_rotation(d, s)


@pytest.mark.parametrize("d", (32, 64, 128, 256, 512))
def test_power_of_two_rotation_flattens_spikes(d):
    """For d = 2^k, R = H diag(s): every entry is ±1/√d, so a one-hot outlier spreads evenly over all coordinates."""
    R = Rotation(d, fresh_seed()).matrix(torch.float64)
    torch.testing.assert_close(R.abs(), torch.full_like(R, d**-0.5), rtol=0, atol=1e-15)


def test_fwht_matches_the_sylvester_hadamard_matrix():
    n = 16
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    x = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ H.T / n**0.5, rtol=0, atol=1e-14)


@pytest.mark.parametrize("d, split", [(128, (128, 1)), (80, (16, 5)), (96, (32, 3)), (112, (16, 7)), (192, (64, 3))])
def test_split_dim(d, split):
    assert split_dim(d) == split


@pytest.mark.parametrize("d", (8, 100, 1024, 0, -64, 36, 128.0, True))
def test_unsupported_dims_raise_with_the_accepted_ones(d):
    with pytest.raises(ValueError, match="dimension"):
        Rotation(d)


@pytest.mark.parametrize("d", (64, 80, 128))
def test_cuda_equals_cpu(d):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CPU/CUDA identity is checked where one is present")
    rot = Rotation(d, fresh_seed())
    x = torch.randn(1000, d)
    y_cpu = rot.forward(x)
    y_gpu = rot.forward(x.cuda()).cpu()
    if rot.m == 1:  # signs, butterflies and one scale: the same IEEE operations in the same order
        assert torch.equal(y_gpu, y_cpu)
    torch.testing.assert_close(y_gpu, y_cpu, rtol=0, atol=1e-6)
    torch.testing.assert_close(rot.inverse(y_cpu.cuda()).cpu(), rot.inverse(y_cpu), rtol=0, atol=1e-6)


@pytest.mark.parametrize("d", [64, 128, 256])
def test_hadamard_factors_reproduce_rotations_and_scaled_rows(d):
    """A rotation's matrix, its transpose, and the transpose with rows scaled per head (keys stored divided by a
    per-channel scale) are diag(pre) H diag(post): x @ m from the factors equals the dense product in float64."""
    from compactkv.core.rotation import hadamard_factors
    g = torch.Generator().manual_seed(fresh_seed())
    r = get_rotation(d, seed=fresh_seed()).matrix()
    scaled = r.T / (torch.rand(3, d, 1, generator=g, dtype=torch.float64) + 0.5)
    h = fwht(torch.eye(d, dtype=torch.float64)) * d ** 0.5
    for m in (r, r.T, scaled):
        f = hadamard_factors(m)
        assert f is not None and f.shape == (*m.shape[:-2], 2, d) and f.dtype == torch.float64
        x = torch.randn(5, d, generator=g, dtype=torch.float64)
        got = ((x[..., None, :, :] * f[..., 0:1, :] if m.dim() == 3 else x * f[0]) @ h) \
            * (f[..., 1:2, :] if m.dim() == 3 else f[1])
        assert torch.allclose(got, x @ m, rtol=0, atol=1e-12)


def test_hadamard_factors_refuse_other_maps():
    """None for a map not of the form (random, identity, one entry off), a dim that is not a power of two, a
    non-finite or zero map."""
    from compactkv.core.rotation import hadamard_factors
    r = get_rotation(128).matrix()
    off = r.clone()
    off[3, 7] += 1e-3
    nan = r.clone()
    nan[0, 0] = float("nan")
    for m in (torch.randn(128, 128), torch.eye(128), off, get_rotation(96).matrix(), nan, torch.zeros(64, 64),
              torch.randn(128, 64)):
        assert hadamard_factors(m) is None
