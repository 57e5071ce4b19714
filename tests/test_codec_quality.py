"""Statistical quality against the paper: D_mse of the plain quantizer, norm correction, the unbiased +qjl estimator.

Fresh random data every run; tolerances are standard errors of the sample (|gap| < 5 SE), next to the paper's 3%
(D_mse) and 10% (D_prod) bands. The paper's D_mse values are its Gaussian-limit Lloyd-Max numbers.
"""

import math
import random

import pytest
import torch

from compactkv.core import Codec, Rotation, estimate_inner_product, lloyd_max
from compactkv.core.quantizer import MSEQuantizer, QJLSketch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAPER_DMSE = {1: 0.363, 2: 0.117, 3: 0.0345, 4: 0.0095}


def fresh_seed() -> int:
    return random.SystemRandom().randrange(2**20)


def unit(n: int, d: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1).float()


def plain_reconstruction(x: torch.Tensor, bits: int, seed: int) -> torch.Tensor:
    """The paper's TurboQuant-MSE: b=1 through the internal quantizer (no public 1-bit kind), else the codec."""
    d = x.shape[-1]
    if bits == 1:
        q = MSEQuantizer(d, 1, seed)
        idx, norm, _ = q.quantize(x)
        return norm[:, None] * q.rotation.inverse(q.centroids(idx))
    codec = Codec(f"turbo{bits}", d, seed=seed, norm_correction=False)
    return codec.decode(codec.encode(x))


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


@pytest.mark.parametrize("d", (64, 128, 256))
@pytest.mark.parametrize("bits", (1, 2, 3, 4))
def test_plain_mse_of_unit_vectors(d, bits):
    x = unit(20480 if d == 128 else 8192, d)
    m, se = mean_se(((plain_reconstruction(x, bits, fresh_seed()) - x).double() ** 2).sum(-1))
    exact = lloyd_max(d, bits).mse_per_vector
    assert abs(m - exact) < 5 * se, (m, exact, se)
    assert abs(m / exact - 1) < 0.03
    if d == 128:
        assert abs(m / PAPER_DMSE[bits] - 1) < 0.03, (m, PAPER_DMSE[bits])


@pytest.mark.parametrize("bits", (2, 3, 4))
def test_norm_correction_keeps_the_norm(bits):
    x = torch.randn(2048, 128) * torch.logspace(-2, 2, 2048)[:, None]
    plain = Codec(f"turbo{bits}", 128, seed=fresh_seed(), norm_correction=False)
    corr = Codec(f"turbo{bits}", 128, seed=plain.seed, norm_correction=True)
    ratio = corr.decode(corr.encode(x)).norm(dim=-1) / x.norm(dim=-1)
    assert float((ratio - 1).abs().max()) <= 2.0**-11 + 1e-5  # the fp16 rounding of the stored n
    plain_ratio = plain.decode(plain.encode(x)).norm(dim=-1) / x.norm(dim=-1)
    assert float(plain_ratio.mean()) < 1 - lloyd_max(128, bits).mse_per_vector / 3  # plain shrinks: ‖c‖² ≈ 1 − D
    u = torch.nn.functional.normalize(x, dim=-1)
    m_plain = float(((plain.decode(plain.encode(u)) - u) ** 2).sum(-1).mean())
    m_corr = float(((corr.decode(corr.encode(u)) - u) ** 2).sum(-1).mean())
    assert abs(m_corr / m_plain - 1) < 0.05, (m_plain, m_corr)  # within a few % of each other (docs/codec.md)


def qjl_errors(kind: str, pairs: str, seeds: int, n: int):
    """Per seed: (error of the +qjl estimate, error of its MSE part alone), for y = x or an independent unit y."""
    d = 128
    out = []
    for _ in range(seeds):
        codec = Codec(kind, d, seed=fresh_seed())
        x = unit(n, d)
        y = x if pairs == "self" else unit(n, d)
        rows = codec.encode(x)
        true = (y.double() * x.double()).sum(-1)
        est = estimate_inner_product(codec, y, rows).double()
        parts = [(qp * v).sum(-1) * s for qp, (v, s) in zip(codec.query_parts(y), codec.key_parts(rows))]
        out.append((est - true, sum(parts[:-1]).double() - true))
    return out


@pytest.mark.parametrize("bits", (2, 3, 4))
def test_qjl_estimator_is_unbiased(bits):
    """⟨y, x⟩ for y = x, where the MSE part alone is biased by -D_mse(b-1). Standard errors clustered by seed
    (each seed fixes S and R)."""
    errs = qjl_errors(f"turbo{bits}+qjl", "self", seeds=24, n=256)
    means = torch.stack([e.mean() for e, _ in errs])
    se = float(means.std() / math.sqrt(len(means)))
    assert abs(float(means.mean())) < 4 * se, (float(means.mean()), se)
    mse_means = torch.stack([m.mean() for _, m in errs])
    mse_se = float(mse_means.std() / math.sqrt(len(mse_means)))
    assert abs(float(mse_means.mean())) > 4 * mse_se  # the test has power: the biased estimate is rejected
    assert float(mse_means.mean()) == pytest.approx(-lloyd_max(128, bits - 1).mse_per_vector, rel=0.05)


@pytest.mark.parametrize("bits", (2, 3, 4))
def test_qjl_variance_matches_theory(bits):
    """Var[estimate - ⟨y, x⟩] · d ≈ (π/2) · D_mse(b-1) for independent unit x, y (theory; see docs/codec.md for
    the paper's printed D_prod)."""
    errs = torch.cat([e for e, _ in qjl_errors(f"turbo{bits}+qjl", "independent", seeds=8, n=1024)])
    theory = math.pi / 2 * lloyd_max(128, bits - 1).mse_per_vector
    measured = float(errs.var()) * 128
    assert abs(measured / theory - 1) < 0.10, (measured, theory)
    assert abs(float(errs.mean())) < 5 * float(errs.std()) / math.sqrt(errs.numel())


def test_qjl_one_bit_through_the_sketch():
    """b = 1 (0-bit MSE, no public kind): ⟨y, x⟩ ≈ ‖x‖ √(π/2)/d ⟨S R y, sign(S R x)⟩, unbiased, variance ≈ π/2 / d."""
    d, n = 128, 1024
    self_means, errs = [], []
    for _ in range(16):
        s = fresh_seed()
        rot, sk = Rotation(d, s), QJLSketch(d, s)
        x = unit(n, d)
        signs = sk.signs(rot.forward(x)).float() * 2 - 1
        for y, sink in ((x, self_means), (unit(n, d), errs)):
            est = sk.scale * (sk.project(rot.forward(y)) * signs).sum(-1)
            err = est.double() - (y.double() * x.double()).sum(-1)
            sink.append(err.mean() if y is x else err)
    means = torch.stack(self_means)
    assert abs(float(means.mean())) < 4 * float(means.std()) / math.sqrt(len(means))
    assert abs(float(torch.cat(errs).var()) * d / (math.pi / 2) - 1) < 0.10
