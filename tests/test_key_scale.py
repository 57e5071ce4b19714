"""Query-aware per-channel key scale (TurboQuantLayer.scale_keys): deferred first compression, exact algebra,
the fitted scale's formula, and the error it removes on anisotropic keys and queries."""

import pytest
import torch

from compactkv.attention.dispatch import attend
from compactkv.cache import CacheConfig, TurboQuantLayer

D = 64


def _spread(d=D):
    return torch.logspace(-1, 1, d)  # channel rms from 0.1 to 10: keys large where queries are small


def _attention64(q, k, v, scale):
    """float64 causal attention, q [B, Hq, T, D] over k, v [B, Hk, T, D] (GQA by repetition) -> [B, T, Hq, D]."""
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = (q.double() * scale) @ k.transpose(-1, -2)
    t = s.shape[-1]
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2", "turbo3.5", "turbo4+qjl"])
def test_first_compression_waits_for_the_query_and_attention_is_exact_on_the_stored_keys(kind):
    layer = TurboQuantLayer(kind, "turbo4", D, residual_length=0, block_size=1, scale_keys=True)
    k = torch.randn(1, 2, 40, D) * _spread() + 3.0
    v = torch.randn(1, 2, 40, D)
    layer.update(k, v)
    assert layer.n_compressed == 0 and layer.recent_k.shape[-2] == 40  # nothing encoded before a query is seen
    q = torch.randn(1, 6, 40, D) * _spread().flip(0)
    out = attend(layer, q, None, D ** -0.5, backend="torch")
    assert layer.n_compressed == 40 and layer.recent_k.shape[-2] == 0 and layer.k_scale is not None
    assert layer.k_scale.shape == (2, D)
    if kind == "turbo4+qjl":  # the QJL estimator is not a decode of the row: attention differs from decoded keys
        return
    rows_k, rows_v = torch.cat(layer.chunks_k, -2), torch.cat(layer.chunks_v, -2)
    ref = _attention64(q, layer.decode_keys(rows_k), layer.v_codec.decode(rows_v), D ** -0.5)
    assert (out.double() - ref).norm() / ref.norm() < 1e-5


def test_scale_follows_the_fourth_root_of_query_over_key_power():
    torch.manual_seed(0)
    layer = TurboQuantLayer("turbo4", "turbo4", D, residual_length=0, block_size=1, scale_keys=True,
                            center_keys=False)
    kpow = torch.rand(D) * 9 + 1
    qpow = torch.rand(D) * 9 + 1
    layer.update(torch.randn(1, 1, 4000, D) * kpow.sqrt(), torch.randn(1, 1, 4000, D))
    layer.observe(torch.randn(1, 2, 4000, D) * qpow.sqrt())
    want = (qpow / kpow) ** 0.25
    got = layer.k_scale[0]
    ratio = (got / want) / (got / want).mean()
    assert ratio.min() > 0.95 and ratio.max() < 1.05  # up to sampling noise of 8000 / 4000 draws
    # normalized so the scaled keys keep their mean power
    assert (got ** 2 * kpow).sum() / kpow.sum() == pytest.approx(1.0, rel=0.05)


def _score_error(scale_keys: bool, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    layer = TurboQuantLayer("turbo4", "f16", D, residual_length=0, block_size=1, scale_keys=scale_keys)
    k = torch.randn(1, 1, 512, D, generator=g) * _spread()
    layer.update(k, torch.zeros_like(k))
    q = torch.randn(1, 1, 512, D, generator=g) * _spread().flip(0)
    layer.observe(q)
    k_hat = layer.decode_keys(torch.cat(layer.chunks_k, -2))
    return float(((q @ (k_hat - k).transpose(-1, -2)) ** 2).mean() / ((q @ k.transpose(-1, -2)) ** 2).mean())


def test_scale_shrinks_the_score_error_where_queries_look():
    seed = int(torch.randint(0, 2 ** 31, ()))  # fresh inputs every run
    plain, scaled = _score_error(False, seed), _score_error(True, seed)
    # theory for these spreads: error variance x (sum_c sqrt(Q_c K_c))^2 / (sum Q)(sum K) ~ 0.01
    assert scaled < 0.1 * plain, (seed, plain, scaled)


def test_flush_without_queries_compresses_unscaled_and_state_resets():
    layer = TurboQuantLayer("turbo4", "turbo4", D, residual_length=4, block_size=2, scale_keys=True)
    layer.update(torch.randn(1, 2, 20, D), torch.randn(1, 2, 20, D))
    assert layer.n_compressed == 0
    layer.flush()
    assert layer.n_compressed == 16 and layer.k_scale is None and layer.calibrated
    layer.update(torch.randn(1, 2, 3, D), torch.randn(1, 2, 3, D))  # calibrated: compresses as it goes
    assert layer.n_compressed == 18 and layer.recent_k.shape[-2] == 5
    layer.reset()
    assert not layer.calibrated and layer.q_power is None


@pytest.mark.parametrize("kind,expect", [("turbo4", True), ("q8_0", False), ("f16", False)])
def test_scale_applies_to_rotation_kinds_only_and_is_the_cache_default(kind, expect):
    assert CacheConfig().scale_keys is True
    layer = TurboQuantLayer(kind, "turbo4", D, residual_length=0, block_size=1, scale_keys=True)
    layer.update(torch.randn(1, 2, 8, D), torch.randn(1, 2, 8, D))
    layer.observe(torch.randn(1, 2, 8, D))
    assert layer.n_compressed == 8 and (layer.k_scale is not None) == expect
