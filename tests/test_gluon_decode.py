"""The Gluon decode kernel over planar codes vs a float64 dense reference (CUDA only), and its CPU-side checks."""

from __future__ import annotations

import pytest
import torch

from compactkv.attention.reference import packed_dense_float64
from compactkv.core.codec import Codec

triton = pytest.importorskip("triton", reason="triton is not installed")

TOL = 3e-3  # fp16 tensor-core operands (same bound as the other decode kernels)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rel(a, b) -> float:
    assert torch.isfinite(a).all(), "unwritten or non-finite output"
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def test_rows_to_planes_roundtrip():
    from compactkv.cache.static import rows_to_planes
    c = Codec("turbo4", 64, seed=0)
    rows = c.encode(torch.randn(2, 3, 5, 64))
    codes, norms = rows_to_planes(rows)
    assert codes.shape == (2, 3, 5, 32) and norms.shape == (2, 3, 5) and norms.dtype == torch.float16
    assert torch.equal(torch.cat([norms.unsqueeze(-1).view(torch.uint8), codes], -1), rows)


def test_gluon_unsupported_reasons():
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import gluon_unsupported
    t4, t3 = packed_kind(Codec("turbo4", 128)), packed_kind(Codec("turbo3", 128))
    assert "turbo2/turbo4" in gluon_unsupported(t3, t4, 4)
    assert "at most 8" in gluon_unsupported(t4, t4, 16)
    assert "one-token" in gluon_unsupported(t4, t4, 4, tq=2)
    assert "head_dim" in gluon_unsupported(packed_kind(Codec("turbo4", 32)), packed_kind(Codec("turbo4", 32)), 4)


@pytest.mark.parametrize("kind", ["turbo4", "turbo2", "turbo4/turbo2"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_gluon_kernel_compiles_for_sm90(kind, d):
    """Compiled for sm_90 on any machine: no spills, and the code bytes reach the tensor-core operands with no
    shared-memory round trip (the loads' layouts are the operands' layouts: assert_trivial in the kernel)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    sass_decode = pytest.importorskip("sass_decode")
    if not Path(sass_decode.NVDISASM).exists():
        pytest.skip("Triton's bundled nvdisasm is missing")
    s = sass_decode.summary(kind, gluon=True, d=d, block_n=32, maxnreg=None)
    assert sass_decode.within_budget(s["spills"], 0)
    assert s["ops"]["HMMA"] > 0 and s["ops"]["LDS"] == 0 and s["ops"]["STS"] == 0
    # the cp.async pipeline: code bytes copied asynchronously into shared memory, read back once per tile
    s = sass_decode.summary(kind, gluon=True, d=d, block_n=32, maxnreg=None, prefetch=2, stages=3)
    assert sass_decode.within_budget(s["spills"], 0)
    assert s["ops"]["HMMA"] > 0 and s["ops"]["LDGSTS"] > 0 and s["ops"]["LDS"] > 0


def _planar_case(kk, vk, d, lengths, hkv, dev="cuda"):
    """Codecs (seeds 5, 6), random encoded K/V rows [B, hkv, max(lengths), row_bytes] and their planes
    ((k codes, k norms), (v codes, v norms))."""
    from compactkv.cache.static import rows_to_planes
    kc, vc = Codec(kk, d, seed=5), Codec(vk, d, seed=6)
    b, t = len(lengths), max(lengths)
    rk = kc.encode(torch.randn(b, hkv, t, d, device=dev, dtype=torch.float16))
    rv = vc.encode(torch.randn(b, hkv, t, d, device=dev, dtype=torch.float16))
    return kc, vc, rk, rv, rows_to_planes(rk), rows_to_planes(rv)


def _check(kk, vk, d, g, lengths, hkv=2, num_splits=None, qmap=None, per_head=False, **kw):
    """Max relative error of attend_gluon vs float64. qmap: pass the query rows in this dtype with the map as `w`
    (the kernel maps them; per_head: one map per KV head, the rotation after a per-head channel scale) instead of
    the mapped fp32 query."""
    kw.setdefault("lut", False)  # the one-warp kernel here; tests/test_lut_decode.py passes lut=True
    from compactkv.attention.triton.decode import LOG2E, codec_maps, packed_kind
    from compactkv.attention.triton.gluon import attend_gluon
    dev = "cuda"
    b, t = len(lengths), max(lengths)
    kc, vc, rk, rv, (kcodes, knorms), (vcodes, vnorms) = _planar_case(kk, vk, d, lengths, hkv, dev)
    q = torch.randn(b, hkv, g, d, device=dev)
    fwd, _ = codec_maps(kc, dev)
    _, adj = codec_maps(vc, dev)
    fwd = fwd if fwd is not None else torch.eye(d, device=dev)
    if qmap is None:
        qk = (q @ fwd) * (d ** -0.5 * LOG2E)
    else:
        qk = q.to(qmap)  # the kernel's input; the reference scores it in float64
        w = fwd * (d ** -0.5 * LOG2E)
        q = qk.float()
        if per_head:  # (q * s_h) @ fwd: the reference scores q * s_h
            s = torch.rand(hkv, d, device=dev) + 0.5
            w = s[:, :, None] * w
            q = q * s[None, :, None, :]
        kw["w"] = w
    out = torch.full((b, hkv, g, d), float("nan"), device=dev)
    lse = torch.full((b, hkv, g), float("nan"), device=dev)
    attend_gluon(qk, kcodes, knorms, vcodes, vnorms, torch.tensor(lengths, dtype=torch.int32, device=dev),
                 packed_kind(kc), packed_kind(vc), max_len=t, out=out, lse=lse, num_splits=num_splits, **kw)
    got = out @ adj if adj is not None else out
    assert torch.isfinite(lse).all()
    return _rel(got, packed_dense_float64(kc, vc, rk, rv, q.float(), d ** -0.5, lengths, 1))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kk,vk", [("turbo4", "turbo4"), ("turbo2", "turbo2"), ("turbo4", "turbo2"),
                                   ("turbo2", "turbo4")])
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("g", [1, 4, 8])
def test_gluon_decode_ragged_vs_float64(kk, vk, d, g):
    # lengths: not multiples of the 32-token tile, one shorter than a tile, one of exactly two tiles
    assert _check(kk, vk, d, g, [777, 130, 3, 64]) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("prefetch,stages", [(1, 3), (2, 2), (2, 3), (2, 4)])
@pytest.mark.parametrize("kk,vk", [("turbo4", "turbo4"), ("turbo2", "turbo2"), ("turbo4", "turbo2")])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_gluon_prefetch_modes_vs_float64(prefetch, stages, kk, vk, d):
    # two splits over long rows (many tiles each: the pipeline's steady state and its masked copies past the last
    # full tile), a row shorter than the pipeline's depth, one shorter than a tile
    assert _check(kk, vk, d, 4, [3001, 100, 3, 64], num_splits=2, prefetch=prefetch, stages=stages) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("num_splits", [1, 3, 64])  # one split, uneven splits, splits left empty
def test_gluon_decode_splits(num_splits):
    assert _check("turbo4", "turbo4", 128, 4, [1000, 31, 2049], num_splits=num_splits) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo2", "turbo4"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_planar_encode_bit_identical_to_cpu(kind, d):
    """encode_rows(norms=...) writes the same bytes as Codec.encode, split into the code and norm planes, at
    device-side positions."""
    from compactkv.attention.triton.encode import encode_rows
    from compactkv.cache.static import planes_to_rows
    c = Codec(kind, d, seed=7)
    x = torch.randn(2, 3, 5, d, device="cuda", dtype=torch.float16)
    codes = torch.zeros(2, 3, 9, c.row_bytes - 2, dtype=torch.uint8, device="cuda")
    norms = torch.zeros(2, 3, 9, dtype=torch.float16, device="cuda")
    pos = torch.tensor([0, 4], dtype=torch.int32, device="cuda")
    encode_rows(c, x, codes, positions=pos, norms=norms)
    want = c.encode(x.cpu())
    assert torch.equal(planes_to_rows(codes[0, :, :5], norms[0, :, :5]).cpu(), want[0])
    assert torch.equal(planes_to_rows(codes[1, :, 4:9], norms[1, :, 4:9]).cpu(), want[1])
    assert not codes[0, :, 5:].any() and not norms[1, :, :4].any()  # nothing written outside the positions


def test_gluon_kernels_are_offered_on_sm80_or_newer_cuda_devices_only(monkeypatch):
    """mma.m16n8k16 and cp.async need compute capability 8.0: older cards keep row storage (make_static_cache) and
    the row kernels (backend), with the reason given."""
    from compactkv.attention.triton import gluon
    assert "CUDA" in gluon.gluon_device_error("cpu")
    for cap, ok in [((7, 5), False), ((8, 0), True), ((8, 9), True), ((9, 0), True)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=cap: c)
        why = gluon.gluon_device_error("cuda:0")
        assert (why is None) == ok and (ok or "7.5" in why)
        assert gluon.gluon_usable("cuda:0") == (ok and gluon.gluon_usable())
