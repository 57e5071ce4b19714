"""TurboQuantCache / TurboQuantLayer: storage, accounting, crop, copies, policies and errors."""

import copy

import pytest
import torch
from transformers import LlamaConfig

import compactkv
from compactkv.cache import CacheConfig, TurboQuantCache, TurboQuantLayer
from compactkv.core import Codec


def tiny_config(layers=6, heads=4, kv_heads=2, head_dim=64, **kw):
    return LlamaConfig(vocab_size=128, hidden_size=heads * head_dim, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, **kw)


def _kv(b=1, h=2, t=10, d=64):
    return torch.randn(b, h, t, d), torch.randn(b, h, t, d)


def test_bytes_equal_storage_and_codec_nbytes():
    layer = TurboQuantLayer("turbo4", "turbo3", 64, sink_tokens=2, residual_length=8, block_size=4, chunk_tokens=16)
    for n in (17, 1, 1, 9, 30):
        layer.update(*_kv(2, 3, n))
    mem = layer.memory()
    assert mem["tokens"] == 58 == layer.stored_length() == layer.get_seq_length()
    expect = 2 * 3 * (Codec("turbo4", 64).nbytes(layer.n_compressed) + Codec("turbo3", 64).nbytes(layer.n_compressed))
    assert mem["compressed_bytes"] == mem["codec_bytes"] == expect
    assert mem["window_bytes"] == 2 * 2 * 2 * 3 * 64 * (2 + layer.recent_k.shape[-2])  # bytes x K,V x B x H x D
    assert layer.recent_k.shape[-2] < 8 + 4 and layer.sink_k.shape[-2] == 2
    assert mem["compressed_fp16_bytes"] == 2 * 2 * 2 * 3 * 64 * layer.n_compressed
    layer.update(*_kv(2, 3, 1))  # a decode step past a chunk: the window lives in a buffer of residual + block slots
    assert layer._owned_window() is not None
    assert layer.memory()["window_bytes"] == 2 * 2 * 2 * 3 * 64 * (2 + 8 + 4)


def test_window_buffers_are_never_shared_between_copies_and_survive_a_failed_update():
    layer = TurboQuantLayer("f16", "turbo4", 64, residual_length=4, block_size=4, center_keys=False, chunk_tokens=4)
    k, v = _kv(1, 2, 40)
    layer.update(k[..., :9, :], v[..., :9, :])
    for i in range(9, 14):
        layer.update(k[..., i:i + 1, :], v[..., i:i + 1, :])
    assert layer._owned_window() is not None  # decode steps after a chunk: the window is a buffer view
    clone = copy.deepcopy(layer)
    assert clone._window is None  # a copy holds no reference to this layer's window buffers
    cropped = copy.deepcopy(layer)
    cropped.crop(12)
    for i in range(14, 30):  # the three continue from the same state with different tokens
        layer.update(k[..., i:i + 1, :], v[..., i:i + 1, :])
        clone.update(-k[..., i:i + 1, :], v[..., i:i + 1, :])
        cropped.update(2 * k[..., i:i + 1, :], v[..., i:i + 1, :])

    def keys(lay):
        return torch.cat([lay.k_codec.decode(c) for c in lay.chunks_k] + [lay.recent_k.float()], dim=-2)
    torch.testing.assert_close(keys(layer), k[..., :30, :].half().float())
    torch.testing.assert_close(keys(clone), torch.cat([k[..., :14, :], -k[..., 14:30, :]], -2).half().float())
    torch.testing.assert_close(keys(cropped), torch.cat([k[..., :12, :], 2 * k[..., 14:30, :]], -2).half().float())
    # a token the fp16 window cannot hold is refused when it arrives (not when a later update compresses it,
    # which would then fail every time); the refused update leaves no trace, and the layer keeps serving
    for bad_value in (float("nan"), 1e5):
        bad = v[..., 30:31, :].clone()
        bad[..., 0] = bad_value
        before = (layer.recent_k.clone(), layer.recent_v.clone(), layer.n_compressed, layer.get_seq_length())
        with pytest.raises(ValueError, match="NaN or Inf"):
            layer.update(k[..., 30:31, :], bad)
        torch.testing.assert_close(layer.recent_k, before[0], rtol=0, atol=0)
        torch.testing.assert_close(layer.recent_v, before[1], rtol=0, atol=0)
        assert (layer.n_compressed, layer.get_seq_length()) == before[2:]
    for i in range(30, 40):
        layer.update(k[..., i:i + 1, :], v[..., i:i + 1, :])
    torch.testing.assert_close(keys(layer), k[..., :40, :].half().float())


def test_recent_window_compresses_in_blocks_and_tokens_keep_order():
    layer = TurboQuantLayer("f16", "f16", 64, residual_length=4, block_size=3, center_keys=False)
    k, v = _kv(1, 1, 20)
    for i in range(20):
        layer.update(k[..., i:i + 1, :], v[..., i:i + 1, :])
        assert layer.recent_k.shape[-2] < 4 + 3
        assert layer.n_compressed % 3 == 0
    stored = torch.cat([layer.k_codec.decode(c) for c in layer.chunks_k] + [layer.recent_k.float()], dim=-2)
    torch.testing.assert_close(stored, k.half().float())


@pytest.mark.parametrize("how", ["negative", "absolute"])
def test_crop_is_exact_for_both_conventions(how):
    layer = TurboQuantLayer("turbo4", "turbo4", 64, sink_tokens=2, residual_length=4, chunk_tokens=8)
    k, v = _kv(1, 2, 30)
    layer.update(k, v)
    full = copy.deepcopy(layer)
    layer.crop(-11 if how == "negative" else 19)
    assert layer.get_seq_length() == 19 == layer.stored_length()
    rows = torch.cat(layer.chunks_k, dim=-2)
    ref = torch.cat(full.chunks_k, dim=-2)[..., : rows.shape[-2], :]
    assert torch.equal(rows, ref)
    layer.update(k[..., 19:, :], v[..., 19:, :])  # regrowing gives the same codes as the uncropped cache
    assert torch.equal(torch.cat(layer.chunks_k, -2), torch.cat(full.chunks_k, -2))
    with pytest.raises(ValueError):
        layer.crop(-100)


def test_deepcopy_is_independent():
    layer = TurboQuantLayer("turbo3.5", "turbo4", 64)
    layer.update(*_kv(1, 2, 12))
    clone = copy.deepcopy(layer)
    clone.update(*_kv(1, 2, 5))
    assert layer.get_seq_length() == 12 and clone.get_seq_length() == 17
    assert layer.memory()["compressed_bytes"] < clone.memory()["compressed_bytes"]


def test_batch_select_and_repeat():
    layer = TurboQuantLayer("turbo4", "q8_0", 64, residual_length=2)
    layer.update(*_kv(3, 2, 9))
    layer.batch_select_indices(torch.tensor([0, 2]))
    assert layer.chunks_k[0].shape[0] == 2 and layer.recent_k.shape[0] == 2 and layer.k_mean.shape[0] == 2
    layer.batch_repeat_interleave(2)
    assert layer.chunks_v[0].shape[0] == 4


def test_sliding_layer_drops_old_chunks_and_reports_mask_sizes():
    layer = TurboQuantLayer("turbo4", "turbo4", 64, chunk_tokens=8, sliding_window=20)
    for _ in range(50):
        layer.update(*_kv(1, 1, 1))
        layer.trim_window()
    kept = layer.stored_length()
    assert 19 <= kept < 19 + 8 and layer.dropped == 50 - kept
    assert layer.get_mask_sizes(1) == (kept + 1, layer.dropped)
    assert layer.get_seq_length() == 50


def test_policies_presets_and_explicit_lists():
    cfg = tiny_config(layers=10)
    cache = TurboQuantCache(cfg, k="turbo3", v="turbo3", policy="1")
    kinds = cache.layer_kinds
    assert kinds[:4] == [("q8_0", "q8_0")] * 4 and kinds[-4:] == [("q8_0", "q8_0")] * 4
    assert kinds[4:6] == [("turbo3", "turbo3")] * 2
    assert TurboQuantCache(cfg, k="turbo4", policy=6).layer_kinds[0] == ("turbo4", "turbo2")
    explicit = ["q8_0/turbo4"] * 9 + [("f16", "turbo2")]
    assert TurboQuantCache(cfg, policy=explicit).layer_kinds[-1] == ("f16", "turbo2")


@pytest.mark.parametrize("bad, match", [
    (dict(k="turbo5"), "unknown KV kind"),
    (dict(v="int4"), "unknown KV kind"),
    (dict(policy="9"), "unknown layer policy preset"),
    (dict(policy=["turbo4"] * 7), "policy lists 7 layers but the model has 6"),
    (dict(policy=["turbo4/bogus"] * 6), "unknown KV kind"),
    (dict(residual_length=-1), "residual_length"),
    (dict(block_size=0), "block_size"),
    (dict(unbiased_keys="no"), "unbiased_keys must be True or False"),
    (dict(scale_keys=1), "scale_keys must be True or False"),
])
def test_bad_configuration_fails_before_generation(bad, match):
    with pytest.raises(ValueError, match=match):
        TurboQuantCache(tiny_config(), **bad)


def test_unsupported_head_dim_and_layer_types():
    with pytest.raises(ValueError, match="head_dim 100"):
        TurboQuantCache(tiny_config(head_dim=100, heads=2), k="turbo4")
    cfg = tiny_config(layers=2)
    cfg.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(ValueError, match="linear_attention"):
        TurboQuantCache(cfg)


def test_cache_refuses_a_model_without_the_compactkv_attention():
    from transformers import LlamaForCausalLM

    cfg = tiny_config(layers=2)
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="compactkv.attach"):
        model(torch.randint(0, 128, (1, 5)), past_key_values=TurboQuantCache(model.config))
    compactkv.attach(model)
    model(torch.randint(0, 128, (1, 5)), past_key_values=TurboQuantCache(model.config))


def test_memory_report_totals():
    cfg = tiny_config(layers=3)
    cache = TurboQuantCache(cfg, cache_config=CacheConfig(k="turbo4", v="turbo4", residual_length=4, block_size=2))
    for i in range(3):
        cache.layers[i].update(*_kv(1, 2, 10))
        cache.layers[i].observe(torch.randn(1, 4, 10, 64))  # what the attention call does before reading
    rep = cache.memory_report()
    assert rep["kv_bytes"] == rep["compressed_bytes"] + rep["window_bytes"] + rep["aux_bytes"]
    assert rep["aux_bytes"] == 3 * 2 * 64 * 4 * 2  # a float32 key mean and key scale per layer and head
    assert rep["fp16_bytes"] == 3 * 2 * 2 * 2 * 64 * 10
    assert rep["ratio"] == pytest.approx(rep["fp16_bytes"] / rep["kv_bytes"])


def test_rejected_update_leaves_the_layer_as_it_was():
    from compactkv.cache.layer import TurboQuantLayer

    torch.manual_seed(3)
    layer = TurboQuantLayer("turbo4", "turbo4", 64, sink_tokens=2, residual_length=0, block_size=1,
                            scale_keys=False)
    layer.update(torch.randn(1, 2, 10, 64), torch.randn(1, 2, 10, 64))
    state = (layer.cumulative_length, layer.n_compressed, [c.clone() for c in layer.chunks_k])
    bad = torch.randn(1, 2, 3, 64)
    bad[0, 0, 1, 7] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer.update(bad, torch.randn(1, 2, 3, 64))
    assert (layer.cumulative_length, layer.n_compressed) == state[:2]
    assert all(torch.equal(a, b) for a, b in zip(layer.chunks_k, state[2]))
    layer.update(torch.randn(1, 2, 3, 64), torch.randn(1, 2, 3, 64))  # and it keeps serving
    assert layer.cumulative_length == 13 and layer.n_compressed == 11


def test_cache_defaults_store_unbiased_keys_and_plain_values():
    assert CacheConfig().unbiased_keys
    cache = TurboQuantCache(tiny_config())
    assert all(layer.k_codec.unbiased and not layer.v_codec.unbiased for layer in cache.layers)
    assert not any(layer.k_codec.unbiased for layer in TurboQuantCache(tiny_config(), unbiased_keys=False).layers)


class _DeferEncoder:
    """An encoder like the Triton one (rows, a device flag without sync, a syncing check), on the CPU: rows of the
    input with non-finite values zeroed, flagged as bad, as are rows whose norm is beyond the float16 range."""

    MESSAGE = "input contains NaN or Inf (test encoder)"

    def __init__(self):
        self.finite, self.syncs, self.flag_calls = {}, 0, 0

    def __call__(self, codec, x, check=True):
        x0 = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        fits = x0.float().norm(dim=-1, keepdim=True) <= 65504
        rows = codec.encode(x0 * fits)
        self.finite[id(rows)] = bool(torch.isfinite(x).all()) and bool(fits.all())
        if check:
            self.check([(codec, rows)])
        return rows

    def flags(self, pairs):
        self.flag_calls += 1
        return torch.tensor(all(self.finite[id(rows)] for _, rows in pairs if rows is not None))

    def check(self, pairs):
        self.syncs += 1
        if not bool(self.flags(pairs)):
            raise ValueError(self.MESSAGE)


def _state(cache):
    return [(layer.cumulative_length, layer.n_compressed, [c.clone() for c in layer.chunks_k + layer.chunks_v],
             layer.recent_k.clone(), layer.recent_v.clone()) for layer in cache.layers]


@torch.no_grad()
@pytest.mark.parametrize("scale_keys", [False, True])
def test_cache_checks_a_forward_pass_once_and_undoes_all_of_it_on_non_finite_rows(scale_keys):
    """TurboQuantCache defers the encoder's check of each layer update (a device sync on CUDA) to one check per
    forward pass, at its last layer; non-finite rows in any layer undo every layer's update of that pass. With
    scale_keys the first compression runs in the attention call (`observe`, after the update): deferred too."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(layers=3)).eval()
    compactkv.attach(model)
    ids = torch.randint(0, 128, (1, 24))
    cc = CacheConfig(k="turbo4", v="turbo4", residual_length=4, block_size=4, chunk_tokens=8, scale_keys=scale_keys)
    logits = {}
    for deferred in (False, True):
        cache = TurboQuantCache(model.config, cache_config=cc)
        encs = [_DeferEncoder() for _ in cache.layers]
        if deferred:
            for layer, enc in zip(cache.layers, encs):
                layer.encoder = enc
        out = [model(ids[:, :20], past_key_values=cache).logits]
        for t in range(20, 24):  # decode steps past a chunk: the in-place window path
            out.append(model(ids[:, t:t + 1], past_key_values=cache).logits)
            assert all(layer.pending_flag() is None for layer in cache.layers)  # verified at the last layer
        logits[deferred] = torch.cat(out, dim=1)
    assert torch.equal(logits[False], logits[True])
    assert all(enc.syncs == 0 and enc.flag_calls > 0 for enc in encs)

    # a non-finite key in the first layer is found at the last layer's update: every layer is undone (a prompt,
    # and decode steps that compress through the in-place window)
    k_proj = model.model.layers[0].self_attn.k_proj
    for n, served in [(12, 25), (1, 26), (4, 27), (1, 28), (1, 29)]:
        before = _state(cache)
        hook = k_proj.register_forward_hook(lambda m, a, o: o.index_fill(-1, torch.tensor([3]), float("inf")))
        with pytest.raises(ValueError, match="test encoder.*before this forward pass"):
            model(ids[:, :n], past_key_values=cache)
        hook.remove()
        after = _state(cache)
        for a, b in zip(before, after):
            assert a[:2] == b[:2]
            assert all(torch.equal(x, y) for x, y in zip(a[2] + [a[3], a[4]], b[2] + [b[3], b[4]]))
        assert all(layer.pending_flag() is None for layer in cache.layers)
        model(ids[:, :1], past_key_values=cache)  # and it keeps serving
        assert cache.get_seq_length() == served


def test_the_first_compression_in_the_attention_call_joins_the_pending_update():
    """scale_keys: the first compression waits for the query (`observe`); with defer_check its encoder check joins
    the update's pending flag, and a failure undoes both (back to before the update)."""
    torch.manual_seed(2)
    layer = TurboQuantLayer("turbo4", "turbo4", 64, residual_length=4, block_size=4, scale_keys=True)
    layer.defer_check, layer.encoder = True, (enc := _DeferEncoder())
    k, v = _kv(1, 2, 10)
    v[0, 0, 1] = 30000.0  # finite (admitted to the fp16 window), but its norm is beyond float16: no row
    layer.update(k, v)
    assert layer.n_compressed == 0 and bool(layer.pending_flag())
    layer.observe(torch.randn(1, 4, 10, 64))
    assert layer.n_compressed == 4 and layer.calibrated and not bool(layer.pending_flag()) and enc.syncs == 0
    with pytest.raises(ValueError, match="test encoder"):
        layer.check_pending()
    assert layer.cumulative_length == 0 and layer.n_compressed == 0 and not layer.calibrated
    assert layer.q_power is None and layer.pending_flag() is None
    layer.update(*_kv(1, 2, 10))  # and it keeps working
    layer.observe(torch.randn(1, 4, 10, 64))
    layer.check_pending()
    assert layer.cumulative_length == 10 and layer.n_compressed == 4


def test_a_layer_checks_its_pending_update_before_it_is_read_copied_or_updated_again():
    torch.manual_seed(1)
    layer = TurboQuantLayer("turbo4", "turbo4", 64, residual_length=0, scale_keys=False)
    layer.defer_check, layer.encoder = True, (enc := _DeferEncoder())
    layer.update(*_kv(1, 2, 10))
    assert layer.pending_flag() is not None and enc.syncs == 0
    copy.deepcopy(layer)  # a copy never holds the snapshot: the pending check runs first
    assert layer.pending_flag() is None
    k, v = _kv(1, 2, 5)
    k[0, 1, 2, 0] = float("nan")
    layer.update(k, v)  # stored, unchecked
    n = layer.n_compressed
    with pytest.raises(ValueError, match="test encoder"):
        layer.update(*_kv(1, 2, 3))  # the pending one is checked first: undone, and this one not stored
    assert layer.n_compressed == n - 5 == 10 and layer.cumulative_length == 10
    layer.update(*_kv(1, 2, 3))
    assert layer.cumulative_length == 13
