"""Triton kernels vs the torch reference and a float64 dense reference (CUDA only; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from compactkv.attention.reference import compressed_attention, packed_dense_float64
from compactkv.cache.layer import TurboQuantLayer
from compactkv.core.codec import Codec

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton kernels run on CUDA only)"),
]
triton = pytest.importorskip("triton", reason="triton is not installed")

TOL = 3e-3  # fp16 tensor-core operands; measured errors are near 3e-4
DEV = "cuda"


def _rel(a, b) -> float:
    assert torch.isfinite(a).all(), "unwritten or non-finite output"
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("kind", ["turbo2", "turbo3", "turbo4"])
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("unbiased", [False, True])
def test_encode_bit_identical_to_cpu(kind, d, unbiased):
    from compactkv.attention.triton.encode import encode_rows
    codec = Codec(kind, d, seed=5, unbiased=unbiased)
    x = (torch.randn(2, 3, 301, d, device=DEV) * torch.rand(2, 3, 301, 1, device=DEV) * 3).half()
    out = torch.full((2, 3, 320, codec.row_bytes), 0x5A, dtype=torch.uint8, device=DEV)
    pos = torch.tensor([0, 19], dtype=torch.int32, device=DEV)
    encode_rows(codec, x, out, positions=pos)
    ref = codec.encode(x.cpu())
    assert int((out[0, :, :301].cpu() != ref[0]).sum()) == 0
    assert int((out[1, :, 19:320].cpu() != ref[1]).sum()) == 0
    assert bool((out[1, :, :19] == 0x5A).all()) and bool((out[0, :, 301:] == 0x5A).all())


@pytest.mark.parametrize("kk,vk", [("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo2", "turbo2"),
                                   ("q8_0", "q8_0"), ("f16", "f16"), ("q8_0", "turbo4")])
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("g,tq", [(4, 1), (1, 3), (8, 1)])
def test_decode_ragged_vs_float64(kk, vk, d, g, tq):
    _check_decode(kk, vk, d, g, tq, fast=None)


@pytest.mark.parametrize("kk,vk", [("turbo4", "turbo4"), ("turbo2", "turbo2"), ("turbo4", "turbo2"),
                                   ("turbo2", "turbo4")])
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("g,tq", [(4, 1), (1, 3), (8, 1), (8, 2)])
@pytest.mark.parametrize("fast", [True, False])
def test_fast_and_split_kernels_vs_float64(kk, vk, d, g, tq, fast):
    """decode_fast_kernel (required) and the split kernel on the same ragged inputs."""
    _check_decode(kk, vk, d, g, tq, fast=fast, lengths=[777, 130, 3, 64])


@pytest.mark.parametrize("kk,vk", [("turbo4", "turbo4"), ("turbo2", "turbo4")])
@pytest.mark.parametrize("g,tq", [(4, 1), (8, 2)])
@pytest.mark.parametrize("chunk", [192, 1024])  # chunk table lookups per tile / ONE_CHUNK
@pytest.mark.parametrize("config", [
    {"row_prefetch": 1}, {"row_prefetch": 2}, {"block_n": 16, "num_warps": 1, "row_prefetch": 1},
    {"block_n": 32, "num_warps": 1}, {"block_n": 32, "num_warps": 2, "row_prefetch": 1, "maxnreg": 0},
    {"table_regs": False}, {"table_regs": True}, {"block_n": 32, "num_warps": 1, "maxnreg": 0, "table_regs": False},
    {"table_regs": False, "row_prefetch": 1}, {"table_regs": "k"}, {"table_regs": "v"}])
def test_fast_kernel_configurations_vs_float64(kk, vk, g, tq, chunk, config, d=128):
    """The fast kernel's tile sizes, warps, register caps and row prefetch (launch_splits options) on ragged
    lengths, none a multiple of the tile."""
    _check_decode(kk, vk, d, g, tq, fast=True, lengths=[777, 130, 3, 64], chunk=chunk, **config)


@pytest.mark.parametrize("kk,vk", [("turbo2", "turbo2"), ("turbo4", "turbo2"), ("turbo2", "turbo4")])
@pytest.mark.parametrize("d", [64, 256])
@pytest.mark.parametrize("table_regs", [False, True, "k", "v"])
def test_fast_kernel_table_modes_vs_float64(kk, vk, d, table_regs):
    """Decoder tables as constants or opaque registers, per operand, at the head_dims where the default differs
    (decode.fast_table_regs) or was timed apart from 128."""
    _check_decode(kk, vk, d, 4, 1, fast=True, lengths=[777, 130, 3, 64], table_regs=table_regs)


def _check_decode(kk, vk, d, g, tq, fast, lengths=(777, 130, 3), chunk=192, **kernel):
    from compactkv.attention.triton.decode import LOG2E, attend_packed, chunk_table, codec_maps, packed_kind
    kc, vc = Codec(kk, d, seed=3), Codec(vk, d, seed=4)
    lengths, hkv = list(lengths), 2
    b, t = len(lengths), max(lengths)
    rk = kc.encode(torch.randn(b, hkv, t, d, device=DEV, dtype=torch.float16))
    rv = vc.encode(torch.randn(b, hkv, t, d, device=DEV, dtype=torch.float16))
    ck = [rk[:, :, i:i + chunk].contiguous() for i in range(0, t, chunk)]
    cv = [rv[:, :, i:i + chunk].contiguous() for i in range(0, t, chunk)]
    q = torch.randn(b, hkv, g * tq, d, device=DEV)
    fwd, _ = codec_maps(kc, DEV)
    _, adj = codec_maps(vc, DEV)
    qk = (q @ fwd if fwd is not None else q) * (d ** -0.5 * LOG2E)
    out = torch.full((b, hkv, g * tq, d), float("nan"), device=DEV)
    lse = torch.full((b, hkv, g * tq), float("nan"), device=DEV)
    attend_packed(qk, chunk_table(ck), chunk_table(cv), torch.tensor(lengths, dtype=torch.int32, device=DEV),
                  packed_kind(kc), packed_kind(vc), chunk=chunk, max_len=t, tq=tq, causal=tq > 1, out=out, lse=lse,
                  fast=fast, **kernel)
    got = out @ adj if adj is not None else out
    assert torch.isfinite(lse).all()
    assert _rel(got, packed_dense_float64(kc, vc, rk, rv, q, d ** -0.5, lengths, tq)) < TOL


@pytest.mark.parametrize("kk,vk,d,g,tq,sink,recent,mask,chunk,scale", [
    ("turbo4", "turbo4", 128, 4, 1, 0, 0, False, 1024, False),
    ("turbo4", "turbo4", 128, 4, 1, 4, 0, False, 1024, True),  # query-aware key scale (scale_keys)
    ("turbo3", "turbo3", 128, 4, 1, 4, 64, False, 256, True),  # the table kernel over rows (launch_rows), windows
    ("turbo2", "turbo2", 128, 8, 1, 0, 16, False, 64, False),  # ... chunks of 64 tokens
    ("turbo4", "turbo4", 128, 4, 1, 4, 64, True, 1024, False),  # a mask: launch_rows with it as a bias (s36)
    ("turbo4", "turbo3", 128, 4, 1, 4, 64, True, 256, False),
    ("q8_0", "turbo2", 64, 8, 5, 3, 16, True, 100, False),
    ("turbo2", "turbo4", 256, 1, 4, 0, 0, False, 512, True),
    ("turbo4", "turbo3", 128, 4, 300, 4, 64, True, 256, False),  # prefill: rows expanded once, SDPA
    ("turbo3", "turbo4", 128, 4, 300, 4, 64, True, 256, True),
    ("turbo3", "q8_0", 64, 8, 200, 0, 0, False, 1024, False),
    ("turbo3.5", "turbo3.5", 128, 4, 1, 4, 64, False, 1024, True),  # fractional kinds: split kernel, per-head maps
    ("turbo4", "turbo2.5", 64, 8, 5, 3, 16, True, 256, False),
    ("turbo2.5", "turbo3.5", 256, 2, 1, 0, 0, False, 512, True),
    ("turbo3.5", "turbo2.5", 128, 4, 300, 4, 64, True, 256, True),  # fractional prefill
])
def test_layer_matches_torch_reference(kk, vk, d, g, tq, sink, recent, mask, chunk, scale):
    from compactkv.attention.triton.backend import triton_attention
    b, hkv = 2, 2
    layer = TurboQuantLayer(kk, vk, d, sink_tokens=sink, residual_length=recent, chunk_tokens=chunk,
                            scale_keys=scale)
    # scale cases: anisotropic keys and queries (channel rms 0.3..3), so the fitted key scale is far from uniform
    spread = (torch.logspace(-0.5, 0.5, d, device=DEV, dtype=torch.float16) if scale
              else torch.ones(d, device=DEV, dtype=torch.float16))
    for n in (1100, tq):
        layer.update(torch.randn(b, hkv, n, d, device=DEV, dtype=torch.float16) * spread,
                     torch.randn(b, hkv, n, d, device=DEV, dtype=torch.float16))
        layer.observe(torch.randn(b, hkv * g, n, d, device=DEV, dtype=torch.float16) * spread.flip(0))
    assert (layer.k_scale is not None) == scale
    q = torch.randn(b, hkv * g, tq, d, device=DEV, dtype=torch.float16) * spread.flip(0)
    tk = layer.stored_length()
    m = None
    if mask:
        m = torch.ones(b, 1, tq, tk, dtype=torch.bool, device=DEV)
        m[1, :, :, :21] = False
        m &= torch.arange(tk, device=DEV)[None, :] <= (tk - tq + torch.arange(tq, device=DEV))[:, None]
    ref = compressed_attention(layer, q, m, d ** -0.5)
    assert _rel(triton_attention(layer, q, m, d ** -0.5), ref) < TOL


@pytest.mark.parametrize("row_table,mask", [(True, None), (False, None), (True, "bool"), (True, "float"),
                                            (False, "bool")])
def test_layer_decode_takes_the_table_kernel_over_rows(monkeypatch, row_table, mask):
    """A one-token step over a chunk-list turbo4 layer at head_dim 128 (fp16 windows, centered keys) reads its rows
    with the table kernel (`launch_rows`) unless backend.ROW_TABLE is off, with an attention mask too (session 36:
    a left-padded batch's, bool, or a float additive one: passed to the kernel as a bias); same answer as the torch
    reference either way."""
    from compactkv.attention.triton import backend
    calls = []
    real = backend.launch_rows
    monkeypatch.setattr(backend, "launch_rows", lambda *a, **k: calls.append(k.get("bias")) or real(*a, **k))
    monkeypatch.setattr(backend, "ROW_TABLE", row_table)
    b, hkv, g, d = 2, 2, 4, 128
    layer = TurboQuantLayer("turbo4", "turbo4", d, sink_tokens=4, residual_length=32, chunk_tokens=256)
    layer.update(torch.randn(b, hkv, 1000, d, device=DEV, dtype=torch.float16),
                 torch.randn(b, hkv, 1000, d, device=DEV, dtype=torch.float16))
    q = torch.randn(b, hkv * g, 1, d, device=DEV, dtype=torch.float16)
    tk = layer.stored_length()
    m = None
    if mask == "bool":  # batch row 1 left-padded by 300 tokens (its sinks and the first compressed ones)
        m = torch.ones(b, 1, 1, tk, dtype=torch.bool, device=DEV)
        m[1, ..., :300] = False
    elif mask == "float":  # an additive mask of finite values, -inf on row 0's first 50 tokens
        m = torch.randn(b, 1, 1, tk, device=DEV)
        m[0, ..., :50] = float("-inf")
    ref = compressed_attention(layer, q, m, d ** -0.5)
    assert _rel(backend.triton_attention(layer, q, m, d ** -0.5), ref) < TOL
    assert len(calls) == (1 if row_table else 0)
    if calls:
        assert (calls[0] is None) == (mask is None)


def test_static_layer_graph_replay():
    from compactkv.attention.triton.backend import triton_attention
    from compactkv.attention.triton.encode import encode_into
    from compactkv.cache.static import StaticTurboQuantLayer
    b, hkv, g, d = 2, 4, 4, 128
    layer = StaticTurboQuantLayer("turbo4", "turbo3", d, b, hkv, 2048, device=DEV, encode=encode_into,
                                  center_keys=False)  # (the step below encodes raw keys itself)
    layer.update(torch.randn(b, hkv, 1000, d, device=DEV, dtype=torch.float16),
                 torch.randn(b, hkv, 1000, d, device=DEV, dtype=torch.float16))
    kn = torch.randn(b, hkv, 1, d, device=DEV, dtype=torch.float16)
    vn, q = torch.randn_like(kn), torch.randn(b, hkv * g, 1, d, device=DEV, dtype=torch.float16)

    def step():
        encode_into(layer.k_codec, kn, layer.k_target, layer.lengths)
        encode_into(layer.v_codec, vn, layer.v_target, layer.lengths)
        layer.lengths += 1
        return triton_attention(layer, q, None, d ** -0.5)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
        layer.lengths -= 1
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for _ in range(3):
        kn.normal_()
        vn.normal_()
        q.normal_()
        graph.replay()
        layer.cumulative_length += 1
        assert _rel(out, compressed_attention(layer, q, None, d ** -0.5)) < TOL
    n = layer.cumulative_length
    assert bool((layer.k_rows[:, :, n - 1:n].cpu() == layer.k_codec.encode(kn.cpu())).all())
