"""Codec: every kind at every head_dim against a float64 reference written from the math, zeros, errors, outliers.

The reference reads rows by the layout of docs/format.md, rotates with the dense `Rotation.matrix()`, picks the
nearest `lloyd_max` centroid and recomputes norms, residuals and QJL signs in float64. Codes must match except
for boundary ties; decoded values must match within float32 rounding.
"""

import math
import random

import pytest
import torch

from compactkv.core import KINDS, Codec, Rotation, lloyd_max, parse_kind, unpack_bits
from compactkv.core.quantizer import QJLSketch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIMS = (32, 64, 128, 256, 512, 80, 96, 112, 160, 192)
TIE = 1e-5  # a float32 rotation may put a coordinate this close to a boundary on the other side
F16_REL = 2.0**-11 * (1 + 1e-3)  # half an fp16 ulp, relative


def fresh_seed() -> int:
    return random.SystemRandom().randrange(2**20)


def supported(kind: str, d: int) -> bool:
    return not (kind == "q8_0" and d % 32)


def sample(n: int, d: int, dtype=torch.float32) -> torch.Tensor:
    """n Gaussian rows with norms spread over 1e-2..1e2, and one zero row."""
    x = torch.randn(n, d, dtype=torch.float64) * torch.logspace(-2, 2, n, dtype=torch.float64)[:, None]
    x[n // 2] = 0
    return x.to(dtype)


def f16_at(rows: torch.Tensor, off: int) -> torch.Tensor:
    return rows[:, off:off + 2].contiguous().view(torch.float16).squeeze(-1).double()


def check_codes(got: torch.Tensor, u: torch.Tensor, c: torch.Tensor) -> None:
    """got must be the nearest centroid of u, except where u is within TIE of a boundary."""
    dist = (u[..., None] - c).abs()
    ref = dist.argmin(-1)
    two = dist.topk(2, largest=False).values
    tie = (two[..., 1] - two[..., 0]) / 2 < TIE
    bad = (got.long() != ref) & ~tie
    assert not bool(bad.any()), f"{int(bad.sum())} codes differ away from a boundary"


def check_norm(stored: torch.Tensor, exact: torch.Tensor) -> None:
    assert bool(((stored - exact).abs() <= F16_REL * exact.abs()).all()), (stored - exact).abs().max()


def ref_mse_group(x, rows, idx_off, hdr_off, d, bits, seed, norm_correction):
    """Check one TurboQuant-MSE group of rows; return its float64 reconstruction from the stored codes."""
    R = Rotation(d, seed).matrix(torch.float64)
    c = torch.tensor(lloyd_max(d, bits).centroids)
    norm = x.norm(dim=-1)
    u = (x @ R.T) / torch.where(norm > 0, norm, 1.0)[:, None]
    got = unpack_bits(rows[:, idx_off:idx_off + d * bits // 8], bits, d)
    check_codes(got[norm > 0], u[norm > 0], c)
    ch = c[got.long()]
    stored = f16_at(rows, hdr_off)
    check_norm(stored, norm / ch.norm(dim=-1) if norm_correction else norm)
    return stored[:, None] * (ch @ R), u, ch


def reference_decode(codec: Codec, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Check rows against the math of each family (docs/format.md); return the float64 decoded vectors."""
    spec, d, s = parse_kind(codec.kind), codec.head_dim, codec.seed
    b, nc = spec.bits, codec.norm_correction
    if spec.family == "f16":
        assert torch.equal(rows.view(torch.float16), x.half())
        return x.half().double()
    if spec.family == "q8_0":
        blk = x.reshape(-1, d // 32, 32)
        delta = blk.abs().amax(-1) / 127
        rb = rows.reshape(-1, d // 32, 34)
        d16 = rb[..., :2].contiguous().view(torch.float16).squeeze(-1).double()
        check_norm(d16, delta)
        q = rb[..., 2:].contiguous().view(torch.int8).double()
        t = blk / torch.where(delta > 0, delta, 1.0)[..., None]
        assert bool(((q - t.round()).abs().le(0) | ((t - t.floor() - 0.5).abs() < 1e-4)).all())
        return (q * d16[..., None]).reshape(-1, d)
    if spec.family == "mse":
        return ref_mse_group(x, rows, 2, 0, d, b, s, nc)[0]
    if spec.family == "frac":
        hi = codec.outliers.reshape(-1)
        lo = torch.tensor(sorted(set(range(d)) - set(hi.tolist())))
        h = d // 2
        out = torch.zeros_like(x)
        out[:, hi] = ref_mse_group(x[:, hi], rows, 4, 0, h, b + 1, s, nc)[0]
        out[:, lo] = ref_mse_group(x[:, lo], rows, 4 + h * (b + 1) // 8, 2, h, b, s + 1, nc)[0]
        return out
    # TurboQuant-prod: (b)-bit MSE with the plain norm, then 1-bit QJL of the residual
    _, u, ch = ref_mse_group(x, rows, 4, 0, d, b, s, False)
    r = u - ch
    gamma = f16_at(rows, 2)
    check_norm(gamma, r.norm(dim=-1))
    S = QJLSketch(d, s).matrix("cpu", torch.float64)
    sr = r @ S.T
    bits = unpack_bits(rows[:, 4 + d * b // 8:], 1, d).double()
    assert bool(((bits == (sr >= 0).double()) | (sr.abs() < 1e-4)).all())
    R = Rotation(d, s).matrix(torch.float64)
    est = ch + (gamma * math.sqrt(math.pi / 2) / d)[:, None] * ((2 * bits - 1) @ S)
    return f16_at(rows, 0)[:, None] * (est @ R)


CASES = [(k, d, nc) for k in KINDS for d in DIMS if supported(k, d)
         for nc in ((True, False) if parse_kind(k).family in ("mse", "frac") else (True,))]


@pytest.mark.parametrize("kind, d, norm_correction", CASES)
def test_encode_decode_matches_float64_reference(kind, d, norm_correction):
    codec = Codec(kind, d, seed=fresh_seed(), norm_correction=norm_correction)
    x = sample(67, d)
    rows = codec.encode(x)
    assert rows.shape == (67, codec.row_bytes)
    ref = reference_decode(codec, x.double(), rows)
    got = codec.decode(rows)
    assert got.dtype == torch.float32 and got.shape == x.shape
    scale = ref.norm(dim=-1, keepdim=True) / math.sqrt(d)  # typical magnitude of one coordinate
    assert bool(((got.double() - ref).abs() <= 1e-5 * scale + 1e-30).all()), (got.double() - ref).abs().max()


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float64))
@pytest.mark.parametrize("kind", ("q8_0", "turbo3", "turbo3.5", "turbo3+qjl"))
def test_input_dtypes(kind, dtype):
    codec = Codec(kind, 128, seed=fresh_seed())
    x = sample(33, 128, dtype)
    rows = codec.encode(x)
    assert torch.equal(rows, codec.encode(x.float()))
    reference_decode(codec, x.double(), rows)
    assert codec.decode(rows, dtype=dtype).dtype == dtype


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", (64, 80, 128))
def test_zero_vectors_roundtrip_to_exact_zero(kind, d):
    if not supported(kind, d):
        pytest.skip(f"{kind} does not take head_dim {d}")
    codec = Codec(kind, d, seed=fresh_seed())
    x = torch.randn(4, 3, d)
    x[1] = 0
    x[3, 2] = 0
    out = codec.decode(codec.encode(x))
    assert torch.equal(out[1], torch.zeros(3, d)) and torch.equal(out[3, 2], torch.zeros(d))
    assert torch.equal(codec.decode(codec.encode(torch.zeros(5, d, dtype=torch.float16))), torch.zeros(5, d))


def test_turbo4_gaussian_vector_cosine():
    """cos(x, x̂) ≥ 0.99 for a Gaussian vector in d=128, except ~0.7% of them: those with a coordinate far past the
    outermost centroid (±2.69σ), whose error the Lloyd-Max codebook does not bound (docs/codec.md)."""
    codec = Codec("turbo4", 128, seed=fresh_seed())
    x = torch.randn(2000, 128)
    cos = torch.nn.functional.cosine_similarity(codec.decode(codec.encode(x)), x, dim=-1)
    assert float((cos >= 0.99).float().mean()) >= 0.97  # expected 0.993, standard error 0.002
    assert float(cos.mean()) >= 0.994 and float(cos.min()) >= 0.9


# -- errors ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ("turbo5", "q4_0", "TURBO4", "turbo2.5+qjl", "", None, 4))
def test_unknown_kind(kind):
    with pytest.raises(ValueError, match="accepted: f16, q8_0, turbo2"):
        Codec(kind, 128)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "f16"])
@pytest.mark.parametrize("d", (100, 8, 1024, 0, 130))
def test_unsupported_head_dim(kind, d):
    if kind == "q8_0" and d == 1024:
        pytest.skip("q8_0 takes any multiple of 32")
    with pytest.raises(ValueError, match=f"head_dim|{d}"):
        Codec(kind, d)


def test_q8_0_needs_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        Codec("q8_0", 80)


@pytest.mark.parametrize("kind", ("f16", "q8_0", "turbo2", "turbo2.5", "turbo3+qjl"))
def test_bad_inputs(kind):
    codec = Codec(kind, 64)
    for dtype in (torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64):
        with pytest.raises(ValueError, match="dtype"):
            codec.encode(torch.ones(2, 64, dtype=dtype))
    with pytest.raises(ValueError, match=r"\[\.\.\., 64\]"):
        codec.encode(torch.randn(2, 65))
    with pytest.raises(ValueError, match=r"\[\.\.\., 64\]"):
        codec.encode(torch.randn(64, 2))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(3, 64)
        x[1, 7] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            codec.encode(x)
    with pytest.raises(ValueError, match="torch.Tensor"):
        codec.encode([[0.0] * 64])
    with pytest.raises(ValueError, match="uint8 rows"):
        codec.decode(torch.zeros(2, codec.row_bytes + 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 rows"):
        codec.decode(torch.zeros(2, codec.row_bytes))


# -- fractional kinds ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ("turbo2.5", "turbo3.5"))
@pytest.mark.parametrize("d", (64, 80, 128, 192))
def test_fractional_rate_is_exactly_b_plus_half(kind, d):
    codec = Codec(kind, d)
    b = int(kind[5])
    assert (codec.row_bytes - 4) * 8 == (b + 0.5) * d  # index bits only: two fp16 norms aside
    assert codec.bits_per_value == b + 0.5 + 32 / d


@pytest.mark.parametrize("kind", ("turbo2.5", "turbo3.5"))
def test_first_encode_picks_the_high_energy_channels(kind):
    d = 128
    planted = torch.randperm(d)[: d // 2]
    x = torch.randn(512, d)
    x[:, planted] *= 4.0
    codec = Codec(kind, d, seed=fresh_seed())
    assert codec.outliers is None
    rows = codec.encode(x)
    assert torch.equal(codec.outliers.reshape(-1), planted.sort().values)
    codec.encode(torch.randn(10, d))  # later calls keep the set
    assert torch.equal(codec.outliers.reshape(-1), planted.sort().values)
    err = ((codec.decode(rows) - x) ** 2).sum(-1).mean()
    other = Codec(kind, d, seed=codec.seed, outliers=torch.tensor(sorted(set(range(d)) - set(planted.tolist()))))
    assert err < 0.9 * ((other.decode(other.encode(x)) - x) ** 2).sum(-1).mean()


@pytest.mark.parametrize("kind", ("turbo2.5", "turbo3.5"))
def test_per_head_outliers(kind):
    B, H, T, d = 2, 4, 33, 64
    planted = torch.stack([torch.randperm(d)[: d // 2] for _ in range(H)])
    x = torch.randn(B, H, T, d)
    for h in range(H):
        x[:, h, :, planted[h]] *= 5.0
    fitter = Codec(kind, d)
    fitted = fitter.fit_outliers(x, keep_dims=(1,))
    assert fitted.shape == (H, 1, d // 2)
    assert torch.equal(fitted.reshape(H, -1), planted.sort(-1).values)
    codec = Codec(kind, d, seed=fresh_seed(), outliers=planted[:, None, :])
    rows = codec.encode(x)
    out = codec.decode(rows)
    assert rows.shape == (B, H, T, codec.row_bytes) and out.shape == x.shape
    for h in range(H):
        per_head = Codec(kind, d, seed=codec.seed, outliers=planted[h])
        xh = x[:, h].reshape(-1, d)
        assert torch.equal(rows[:, h].reshape(-1, codec.row_bytes), per_head.encode(xh))
        ref = reference_decode(per_head, xh.double(), per_head.encode(xh))
        torch.testing.assert_close(out[:, h].reshape(-1, d).double(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", ([0, 1, 2], list(range(31)) + [0], [-1] + list(range(1, 32)), list(range(40, 72))))
def test_bad_outliers(bad):
    with pytest.raises(ValueError, match="outlier"):
        Codec("turbo2.5", 64, outliers=torch.tensor(bad))


def test_fitted_outliers_serve_inputs_of_any_rank():
    codec = Codec("turbo3.5", 64, seed=fresh_seed())
    codec.encode(torch.randn(2, 3, 5, 64))
    assert codec.outliers.shape == (32,)
    x = torch.randn(64)
    assert torch.equal(codec.encode(x), codec.encode(x[None, None])[0, 0])
    per_head = Codec("turbo3.5", 64, outliers=torch.stack([torch.randperm(64)[:32] for _ in range(4)])[:, None])
    per_head.encode(torch.randn(2, 4, 7, 64))
    with pytest.raises(ValueError, match="does not broadcast"):
        per_head.encode(torch.randn(7, 64))
    with pytest.raises(ValueError, match="does not broadcast"):
        per_head.encode(torch.randn(2, 3, 7, 64))


def test_bench_codec_cli_writes_json(tmp_path, capsys):
    from compactkv.cli import main

    out = tmp_path / "codec.json"
    assert main(["bench", "codec", "--n", "300", "--chunk", "128", "--kinds", "q8_0,turbo3.5", "--device", "cpu",
                 "--json", str(out)]) == 0
    report = __import__("json").loads(out.read_text())
    assert [r["kind"] for r in report["results"]] == ["q8_0", "turbo3.5"]
    assert all(r["encode_vectors_per_s"] > 0 and r["decode_gb_per_s"] > 0 for r in report["results"])
    assert report["results"][0]["encode_vs_q8_0"] == 1.0
    assert "| cpu | turbo3.5 | 60 |" in capsys.readouterr().out
    assert main(["bench", "codec", "--kinds", "turbo9"]) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_empty_and_one_dim_inputs(kind):
    codec = Codec(kind, 64, seed=fresh_seed())
    rows = codec.encode(torch.empty(0, 64))
    assert rows.shape == (0, codec.row_bytes) and codec.decode(rows).shape == (0, 64)
    assert codec.outliers is None  # an empty first batch does not fix the fractional kinds' channels
    x = torch.randn(64)
    assert torch.equal(codec.encode(x), codec.encode(x[None])[0])
    if parse_kind(kind).family == "frac":
        with pytest.raises(ValueError, match="empty"):
            codec.fit_outliers(torch.empty(0, 3, 64))


def test_fractional_decode_without_outliers_is_a_clear_error():
    rows = Codec("turbo2.5", 64).encode(torch.randn(3, 64))
    with pytest.raises(ValueError, match="outlier channel set"):
        Codec("turbo2.5", 64).decode(rows)


# -- unbiased keys ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,d", [("turbo2", 64), ("turbo3", 128), ("turbo4", 64), ("turbo3.5", 64)])
@pytest.mark.parametrize("norm_correction", [True, False])
def test_unbiased_codec_scores_are_unbiased(kind, d, norm_correction):
    """E[x̂·x] = |x|² with unbiased=True; shrunk (by about sqrt(1 - D), or 1 - D without norm correction) without."""
    from compactkv.core.codebook import lloyd_max
    from compactkv.core.codec import norm_scale

    gen = torch.Generator().manual_seed(d + len(kind))
    x = torch.randn(8000, d, generator=gen)
    plain = Codec(kind, d, norm_correction=norm_correction)
    unb = Codec(kind, d, norm_correction=norm_correction, unbiased=True)
    if kind.endswith(".5"):
        plain.fit_outliers(x)
        unb.set_outliers(plain.outliers)
    ratio = {c.unbiased: float(((c.decode(c.encode(x)) * x).sum(-1) / (x * x).sum(-1)).mean()) for c in (plain, unb)}
    assert abs(ratio[True] - 1.0) < 3e-3
    if kind in ("turbo2", "turbo3", "turbo4"):
        dist = lloyd_max(d, unb.spec.bits).mse_per_vector
        want = (1 - dist) ** 0.5 if norm_correction else 1 - dist
        assert abs(ratio[False] - want) < 3e-3
        f = norm_scale(d, unb.spec.bits, norm_correction)
        rp, ru = plain.encode(x[:50]), unb.encode(x[:50])  # same codes, the norm field scaled
        assert torch.equal(rp[..., 2:], ru[..., 2:])
        norms = [r[..., :2].contiguous().view(torch.float16).float() for r in (rp, ru)]
        assert torch.allclose(norms[1], norms[0] * f, rtol=2e-3)
    else:
        assert ratio[False] < 1 - 1e-3

