"""Attention on the compressed cache vs a float64 dense reference (decode the stored rows, then plain softmax)."""

import pytest
import torch
import torch.nn.functional as F

from compactkv.attention import compressed_attention
from compactkv.cache import TurboQuantLayer
from compactkv.core import KINDS

HEAD_DIMS = (64, 96, 128, 256)
GQA = (1, 3, 8)


def _stored_kv(layer: TurboQuantLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """Everything the layer holds, decoded to float64 [B, H, T, D], in token order."""
    ks, vs = [layer.sink_k.double()], [layer.sink_v.double()]
    for ck, cv in zip(layer.chunks_k, layer.chunks_v):
        k = layer.k_codec.decode(ck).double()
        if layer.k_mean is not None:
            k = k + layer.k_mean.double()
        ks.append(k)
        vs.append(layer.v_codec.decode(cv).double())
    ks.append(layer.recent_k.double())
    vs.append(layer.recent_v.double())
    return torch.cat(ks, dim=-2), torch.cat(vs, dim=-2)


def reference(q, k, v, keep, scaling, softcap=None):
    """Dense float64 attention; keep: bool [B or 1, 1, Tq, Tk]. Returns [B, Tq, Hq, D]."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = (q.double() @ k.transpose(-1, -2)) * scaling
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    s = s.masked_fill(~keep, float("-inf"))
    return (torch.softmax(s, dim=-1) @ v).transpose(1, 2)


def _fill(layer, b, h, t, d, chunks=(7, 1, 1)):
    """Feed t tokens in a few updates (prefill then decode-like steps) with outlier channels in the keys."""
    k = torch.randn(b, h, t, d) * (1 + 4 * (torch.arange(d) % 13 == 0))
    k = k + 0.5  # a per-channel offset, as real keys have
    v = torch.randn(b, h, t, d)
    sizes = [t - sum(chunks[1:])] + list(chunks[1:])
    pos = 0
    for n in sizes:
        layer.update(k[..., pos:pos + n, :], v[..., pos:pos + n, :])
        pos += n


def _rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_decode_matches_float64_reference(kind, head_dim):
    try:
        layer = TurboQuantLayer(kind, kind, head_dim, chunk_tokens=16)
    except ValueError as e:
        pytest.skip(f"{kind} does not support head_dim {head_dim}: {e}")
    b, hkv, g, t = 2, 2, 3, 45
    _fill(layer, b, hkv, t, head_dim)
    q = torch.randn(b, hkv * g, 1, head_dim)
    keep = torch.ones(1, 1, 1, t, dtype=torch.bool)
    scaling = head_dim ** -0.5
    out = compressed_attention(layer, q, None, scaling)
    k, v = _stored_kv(layer)
    ref = reference(q, k, v, keep, scaling)
    assert out.shape == (b, 1, hkv * g, head_dim)
    assert _rel(out, ref) < 2e-5


@pytest.mark.parametrize("groups", GQA)
@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2.5", "turbo3+qjl", "q8_0", "f16"])
def test_prefill_gqa_causal_and_padding_masks(kind, groups):
    head_dim, b, hkv, t = 64, 2, 2, 33
    layer = TurboQuantLayer(kind, "turbo4", head_dim, sink_tokens=3, residual_length=5, block_size=4,
                            chunk_tokens=8, center_keys=True)
    k = torch.randn(b, hkv, t, head_dim) + 1.0
    v = torch.randn(b, hkv, t, head_dim)
    layer.update(k, v)
    q = torch.randn(b, hkv * groups, t, head_dim)
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    pad = torch.ones(b, t, dtype=torch.bool)
    pad[1, :4] = False  # left padding in the second sequence
    keep = causal[None, None] & pad[:, None, None, :]
    keep[1, :, :4, :] = causal[:4, :][None]  # padded query rows: keep them finite
    scaling = 0.125
    out = compressed_attention(layer, q, keep, scaling)
    ref = reference(q, *_stored_kv(layer), keep, scaling)
    assert _rel(out, ref) < 2e-5
    out_none = compressed_attention(layer, q, None, scaling)  # mask None means causal
    ref_none = reference(q, *_stored_kv(layer), causal[None, None], scaling)
    assert _rel(out_none, ref_none) < 2e-5


def test_float_additive_mask_and_softcap():
    layer = TurboQuantLayer("turbo4", "turbo3", 128, chunk_tokens=10)
    _fill(layer, 1, 2, 30, 128)
    q = torch.randn(1, 4, 2, 128)
    keep = torch.rand(1, 1, 2, 30) > 0.3
    keep[..., 0] = True
    additive = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    out = compressed_attention(layer, q, additive, 0.1, softcap=30.0)
    ref = reference(q, *_stored_kv(layer), keep, 0.1, softcap=30.0)
    assert _rel(out, ref) < 2e-5


def test_f16_kind_matches_sdpa():
    layer = TurboQuantLayer("f16", "f16", 64, center_keys=False)
    k, v = torch.randn(1, 2, 20, 64), torch.randn(1, 2, 20, 64)
    layer.update(k, v)
    q = torch.randn(1, 8, 20, 64)
    out = compressed_attention(layer, q, None, 64 ** -0.5)
    ref = F.scaled_dot_product_attention(q, k.half().float(), v.half().float(), is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_output_dtype_and_fully_masked_rows_are_finite():
    layer = TurboQuantLayer("turbo4", "turbo4", 64)
    _fill(layer, 1, 1, 12, 64)
    q = torch.randn(1, 1, 1, 64, dtype=torch.bfloat16)
    keep = torch.zeros(1, 1, 1, 12, dtype=torch.bool)
    out = compressed_attention(layer, q, keep, 0.125)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_work_is_blockwise_not_a_full_dequantized_copy():
    """Scoring touches one stored chunk at a time: the largest decoded block is one chunk, not the history."""
    layer = TurboQuantLayer("turbo4", "turbo4", 64, chunk_tokens=16)
    _fill(layer, 1, 2, 100, 64)
    seen = []
    original = layer.k_codec.key_parts

    def spy(rows):
        seen.append(rows.shape[-2])
        return original(rows)

    layer.k_codec.key_parts = spy
    compressed_attention(layer, torch.randn(1, 2, 1, 64), None, 0.125)
    assert seen and max(seen) <= 16 and sum(seen) == layer.n_compressed == 100


def test_packed_dense_float64_reference_matches_the_layer_path():
    """The float64 oracle the Triton checks use agrees with compressed attention on unragged causal decode."""
    from compactkv.attention.reference import packed_dense_float64

    layer = TurboQuantLayer("turbo4", "turbo3", 64, residual_length=0, center_keys=False, chunk_tokens=64)
    _fill(layer, 2, 2, 20, 64)
    q = torch.randn(2, 6, 1, 64)
    ref = packed_dense_float64(layer.k_codec, layer.v_codec, layer.chunks_k[0], layer.chunks_v[0],
                               q.reshape(2, 2, 3, 64), 0.125, [20, 20], 1)
    out = compressed_attention(layer, q, None, 0.125)  # [B, 1, Hq, D]
    assert _rel(out.reshape(2, 2, 3, 64), ref) < 2e-5
