"""Static caches at model level (cache/static.py) and the captured greedy step (engine/graphs.py).

CPU: eager steps over StaticDenseCache must give DynamicCache's tokens and logits; over StaticTurboQuantCache the
tokens of a TurboQuantCache that compresses every token at once with the same codecs. CUDA (skipped elsewhere):
replayed steps must give the eager steps' tokens.
"""

from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import compactkv
from compactkv.cache.static import StaticDenseCache, StaticTurboQuantCache
from compactkv.engine.graphs import GreedyStepGraph, static_cache

VOCAB = 256


def tiny_model(device="cpu", dtype=torch.float32, seed=0, head_dim=64, **extra):
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=4096,
                      **extra)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(device, dtype).eval()
    compactkv.attach(model)
    return model


@torch.no_grad()
def greedy_reference(model, cache, ids, steps):
    """Prefill + `steps` greedy tokens with a cache transformers grows itself; (tokens [B, steps], last logits)."""
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    tok = out.logits[:, -1:].argmax(-1)
    toks, logits = [tok], None
    for _ in range(steps - 1):
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1].float()
        tok = logits.argmax(-1, keepdim=True)
        toks.append(tok)
    return torch.cat(toks, 1), logits


@torch.no_grad()
def greedy_static(model, cache, ids, steps, graph=False, warmup=2, chunk=None):
    chunk = chunk or ids.shape[1]
    for s in range(0, ids.shape[1], chunk):  # later chunks attend under transformers' causal mask
        out = model(input_ids=ids[:, s:s + chunk], past_key_values=cache, use_cache=True)
    dec = GreedyStepGraph(model, cache, out.logits[:, -1:].argmax(-1))
    toks = [dec.tokens.clone()]
    if graph:
        toks += dec.capture(warmup=warmup)
    while len(toks) < steps:
        toks.append(dec.step().clone())
    return torch.cat(toks, 1), dec


def test_static_dense_matches_dynamic_cache():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(1))
    model.set_attn_implementation("sdpa")
    ref, _ = greedy_reference(model, DynamicCache(config=model.config), ids, 12)
    compactkv.attach(model)
    cache = StaticDenseCache(model.config, batch_size=2, max_cache_len=64, device="cpu", dtype=torch.float32)
    got, dec = greedy_static(model, cache, ids, 12)
    assert torch.equal(got, ref)
    assert cache.host_lengths() == [37 + 11] * 2 and cache.lengths.tolist() == [48, 48]
    # logits of one more step against the dynamic cache's, same history
    model.set_attn_implementation("sdpa")
    dyn = DynamicCache(config=model.config)
    hist = torch.cat([ids, got[:, :-1]], 1)
    model(input_ids=hist, past_key_values=dyn, use_cache=True)
    want = model(input_ids=got[:, -1:], past_key_values=dyn, use_cache=True).logits[:, -1]
    compactkv.attach(model)
    positions = cache.lengths.long()[:, None]
    have = model(input_ids=got[:, -1:], position_ids=positions, past_key_values=cache, use_cache=True).logits[:, -1]
    assert torch.allclose(have, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind,chunk,planar,center,sinks,scale", [
    ("turbo4", None, False, True, 0, False), ("turbo2", None, False, True, 0, False),
    ("turbo4", 16, False, True, 0, False), ("turbo4", None, True, True, 0, False), ("turbo2", 16, True, True, 0, False),
    ("turbo4", None, False, False, 0, False), ("turbo2", 16, True, False, 0, False),
    ("turbo4", None, False, True, 4, False), ("turbo2", 20, True, True, 4, False),
    ("turbo4", 16, True, False, 4, False),
    ("turbo4", None, False, True, 4, True), ("turbo2", 20, True, True, 4, True), ("turbo4", None, True, True, 0, True),
    ("turbo3", 24, False, False, 0, True)])
def test_static_turbo_matches_compress_everything_cache(kind, chunk, planar, center, sinks, scale):
    """Against a TurboQuantCache that compresses every token on arrival (no fp16 sinks or window) and centers keys
    or not alike: the same rows byte for byte (both means from the first update: the whole prompt, or its first
    chunk) and the same greedy tokens (the dynamic cache adds q·mean back to every score, the static one leaves
    it out of all of them)."""
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(2))
    ref_cache = compactkv.TurboQuantCache(model.config, k=kind, v=kind, sink_tokens=sinks, residual_length=0,
                                          block_size=1, center_keys=center, scale_keys=scale, unbiased_keys=False)
    if chunk is None:
        ref, _ = greedy_reference(model, ref_cache, ids, 10)
    else:  # the same first update as the static cache's
        with torch.no_grad():
            model(input_ids=ids[:, :chunk], past_key_values=ref_cache, use_cache=True)
        ref, _ = greedy_reference(model, ref_cache, ids[:, chunk:], 10)
    cache = StaticTurboQuantCache(model.config, kind, kind, batch_size=2, max_cache_len=50, device="cpu",
                                  planar=planar, center_keys=center, sink_tokens=sinks, scale_keys=scale)
    assert all(layer.planar == planar for layer in cache.layers)
    got, _ = greedy_static(model, cache, ids, 10, chunk=chunk)
    assert torch.equal(got, ref)
    # the rows themselves: the dynamic layer's compressed chunks hold the same bytes (with centering, the first
    # layer's: later layers' inputs carry the two attentions' rounding, q·mean added back or left out)
    for i, (dyn, st) in enumerate(zip(ref_cache.layers, cache.layers)):
        n = dyn.n_compressed
        assert n == 49 - sinks and st.n_compressed == n and st.cumulative_length == 49
        assert st.lengths.tolist() == [49, 49] and st.comp_lengths.tolist() == [n, n]
        assert torch.equal(st.sink_k, dyn.sink_k) and torch.equal(st.sink_v, dyn.sink_v)
        # (with sinks both add q·mean back: the same attention; with scale_keys the dynamic layer compresses its
        # fp16 window's copy of the first update, the static one the float32 keys themselves: not the same bytes)
        if (i == 0 or not center or sinks) and not scale:
            assert torch.equal(torch.cat(dyn.chunks_k, -2), st.chunks_k[0])
            assert torch.equal(torch.cat(dyn.chunks_v, -2), st.chunks_v[0])
        if scale:  # fitted from the same first attention call's queries
            assert st.calibrated and st._pending is None and st.k_scale.shape == dyn.k_scale.shape
            assert i > 0 or torch.allclose(st.k_scale, dyn.k_scale, rtol=1e-3)
        else:
            assert st.k_scale is None and dyn.k_scale is None
        if center:
            assert st.centered and (st.k_mean is st.key_center if sinks else st.k_mean is None)
            # (the means may differ in a last bit: summation order)
            if not scale:  # (with scale_keys: the fp16 window, see above; later layers' inputs differ too)
                assert torch.allclose(st.key_center, dyn.k_mean, rtol=1e-6, atol=1e-7)
            elif i == 0:
                assert torch.allclose(st.key_center, dyn.k_mean, rtol=1e-2, atol=1e-4)
        else:
            assert st.key_center is None and dyn.k_mean is None


def test_static_key_center_comes_from_the_first_long_update_and_is_forgotten_when_emptied():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(3))
    cache = StaticTurboQuantCache(model.config, "turbo4", "turbo4", batch_size=1, max_cache_len=64, device="cpu")
    layer = cache.layers[0]
    seen = []
    encode = layer.encode

    def recording(codec, x, target, pos, center=None):  # what is encoded: x minus the center, in float32
        seen.append(x.clone() if center is None else x.float() - center)
        encode(codec, x, target, pos, center=center)
    layer.encode = recording
    with torch.no_grad():
        model(input_ids=ids[:, :20], past_key_values=cache, use_cache=True)
        first = layer.key_center.clone()
        model(input_ids=ids[:, 20:], past_key_values=cache, use_cache=True)
    assert layer.centered and torch.equal(layer.key_center, first)  # fixed by the first update only
    k0, k1 = seen[0], seen[2]  # keys of each update as encoded (values in between)
    assert k0.dtype == torch.float32 and torch.allclose(k0.mean(dim=-2, keepdim=True), torch.zeros_like(first),
                                                        atol=1e-5)
    assert k1.abs().mean() > 0 and not torch.allclose(k1.mean(dim=-2, keepdim=True), torch.zeros_like(first))
    cache.crop(10)
    assert layer.centered and torch.equal(layer.key_center, first)  # cropped, not emptied: same mean
    cache.reset()
    assert not layer.centered and not layer.key_center.any()
    with torch.no_grad():  # a first update shorter than CENTER_MIN_TOKENS centers nothing for good
        model(input_ids=ids[:, :3], past_key_values=cache, use_cache=True)
        model(input_ids=ids[:, 3:30], past_key_values=cache, use_cache=True)
    assert layer.centered and not layer.key_center.any()
    cache.crop(0)
    assert not layer.centered
    cache.fill(12)  # benchmark rows written as they are: nothing to subtract from the next keys
    assert layer.centered and not layer.key_center.any()


def test_planar_storage_layout_and_errors():
    """Planar layers keep the codec's bytes in a code plane (16-byte aligned rows) and a norm plane; rows read
    back equal the codec's rows, beam reordering moves both planes, and kinds without planes are refused."""
    from compactkv.cache.static import StaticTurboQuantLayer
    from compactkv.core.codec import Codec
    layer = StaticTurboQuantLayer("turbo4", "turbo2", 128, 3, 2, 40, device="cpu", planar=True)
    assert layer.k_codes.shape == (3, 2, 40, 64) and layer.v_codes.shape == (3, 2, 40, 32)
    assert layer.k_norms.shape == (3, 2, 40) and layer.k_norms.dtype == torch.float16
    x = torch.randn(3, 2, 7, 128, generator=torch.Generator().manual_seed(8))
    layer.update(x, -x)
    assert torch.equal(layer.chunks_k[0], Codec("turbo4", 128, seed=0).encode(x))
    assert torch.equal(layer.chunks_v[0], Codec("turbo2", 128, seed=1).encode(-x))
    rows_k, rows_v = layer.chunks_k[0], layer.chunks_v[0]
    layer.reorder_cache(torch.tensor([2, 0, 1]))
    assert torch.equal(layer.chunks_k[0], rows_k[[2, 0, 1]]) and torch.equal(layer.chunks_v[0], rows_v[[2, 0, 1]])
    assert layer.memory()["compressed_bytes"] == 3 * 2 * 40 * (66 + 34)
    assert layer.planes() is not None and StaticTurboQuantLayer("turbo4", "turbo4", 128, 1, 1, 8,
                                                                device="cpu").planes() is None
    with pytest.raises(ValueError, match="planar storage takes turbo2/turbo4"):
        StaticTurboQuantLayer("turbo3", "turbo4", 128, 1, 1, 8, device="cpu", planar=True)
    with pytest.raises(ValueError, match="planar storage takes turbo2/turbo4"):
        StaticTurboQuantLayer("turbo4", "turbo4", 32, 1, 1, 8, device="cpu", planar=True)
    with pytest.raises(ValueError, match="turbo3 K and V at head_dim 128"):
        StaticTurboQuantLayer("turbo3", "turbo3", 64, 1, 1, 8, device="cpu", planar=True)
    # turbo3 at head_dim 128: 48-byte code rows (16-byte aligned), the codec's bytes
    t3 = StaticTurboQuantLayer("turbo3", "turbo3", 128, 2, 2, 24, device="cpu", planar=True)
    assert t3.k_codes.shape == (2, 2, 24, 48) and t3.k_codes.stride(-2) == 48
    x3 = torch.randn(2, 2, 5, 128, generator=torch.Generator().manual_seed(9))
    t3.update(x3, 2 * x3)
    assert torch.equal(t3.chunks_k[0], Codec("turbo3", 128, seed=0).encode(x3))
    assert torch.equal(t3.chunks_v[0], Codec("turbo3", 128, seed=1).encode(2 * x3))


def test_static_cache_errors():
    model = tiny_model()
    cache = static_cache(model, "turbo4", batch_size=1, max_cache_len=8)
    with pytest.raises(ValueError, match="static cache"):
        GreedyStepGraph(model, DynamicCache(config=model.config), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens must be \[batch=1, 1\]"):
        GreedyStepGraph(model, cache, torch.zeros(2, 1, dtype=torch.long))
    dec = GreedyStepGraph(model, cache, torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="CUDA graphs need"):
        dec.capture()
    for _ in range(8):
        dec.step()
    with pytest.raises(ValueError, match="static cache is full"):
        dec.step()
    assert cache.host_lengths() == [8, 8] and cache.lengths.tolist() == [8]  # nothing lost or half-written
    with pytest.raises(ValueError, match="sliding-window"):
        static_cache(tiny_model(sliding_window=16, layer_types=["sliding_attention", "full_attention"]), "f16",
                     batch_size=1, max_cache_len=8)
    with pytest.raises(ValueError, match="fractional"):
        static_cache(model, "turbo3.5", batch_size=1, max_cache_len=8)
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="compactkv.attach"):
        model(input_ids=torch.zeros(1, 1, dtype=torch.long), past_key_values=static_cache(model, "f16", 1, 8))
    with pytest.raises(ValueError, match="tokens must be in"):
        cache.fill(9)


def test_static_dense_nomask_is_a_timing_proxy_only():
    """Without the exact mask a 1-token step attends empty slots too: its logits differ while slots are empty,
    and equal the exact ones once the cache is full."""
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(3))
    for max_len, same in ((21, True), (22, False)):  # the step writes the last slot / leaves one empty
        exact = static_cache(model, "f16", batch_size=1, max_cache_len=max_len)
        loose = static_cache(model, "f16-nomask", batch_size=1, max_cache_len=max_len)
        with torch.no_grad():
            for cache in (exact, loose):
                model(input_ids=ids, past_key_values=cache, use_cache=True)
            a, b = (model(input_ids=torch.tensor([[3]]), position_ids=c.lengths.long()[:, None],
                          past_key_values=c).logits for c in (exact, loose))
        assert torch.allclose(a, b, atol=1e-5) == same


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("kind,head_dim", [("f16", 64), ("turbo4", 64), ("turbo2", 64), ("turbo3", 64),
                                           ("turbo3", 128), ("turbo4", 128)])
def test_graph_replay_matches_eager(kind, head_dim):
    model = tiny_model("cuda", torch.float16, head_dim=head_dim)
    ids = torch.randint(0, VOCAB, (3, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    eager, _ = greedy_static(model, static_cache(model, kind, 3, 400), ids, 24, chunk=128)
    cache = static_cache(model, kind, 3, 400)
    graphed, dec = greedy_static(model, cache, ids, 24, graph=True, chunk=128)
    assert dec.graph is not None
    assert torch.equal(graphed, eager)
    assert cache.host_lengths() == [300 + 23] * 2 and cache.lengths.tolist() == [323] * 3


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU"))])
@pytest.mark.parametrize("kind", ["turbo4", "f16"])
def test_compiled_model_steps_give_the_uncompiled_logits(device, kind):
    """engine.graphs.compiled_model (torch.compile of the model's code; compactkv's attention function and the
    static cache's update left out): the same next-token logits as the uncompiled model, step after step over the
    same static cache kind (on CUDA both captured and replayed), with graph breaks only at those two functions."""
    from torch._dynamo.utils import counters

    from compactkv.engine.graphs import LogitsStepGraph, compiled_model
    dtype = torch.float32 if device == "cpu" else torch.float16
    model = tiny_model(device, dtype)
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, VOCAB, (1, 40), generator=g).to(device)
    feed = torch.randint(0, VOCAB, (6,), generator=g).tolist()
    counters.clear()
    runs = {}
    for compile in (False, True):
        cache = static_cache(model, kind, 1, 64, device)
        with torch.no_grad():
            model(input_ids=ids, past_key_values=cache, use_cache=True)
        step = LogitsStepGraph(model, cache, ids[:, -1:], compile=compile)
        step.feed(feed[0])
        out = [x.float() for x in step.capture(warmup=2)] if device == "cuda" else \
            [step.step().clone().float() for _ in range(2)]
        for tok in feed[1:]:
            step.feed(tok)
            step.step()  # (a replay returns the token buffer; the logits are in step.logits either way)
            out.append(step.logits.clone().float())
        runs[compile] = torch.stack(out)
        assert cache.host_lengths()[0] == 40 + 2 + len(feed) - 1
    plain, compiled = runs[False], runs[True]
    tol = (1e-4 if device == "cpu" else 2e-2) * plain.abs().max()
    assert (compiled - plain).abs().max() <= tol
    assert compiled_model(model) is compiled_model(model)
    breaks = list(counters["graph_break"])
    assert breaks and all("compactkv_attention_forward" in r or "StaticKVCache.update" in r for r in breaks), breaks


@pytest.mark.parametrize("kind", ["turbo4", "turbo2", "f16"])
def test_rewound_step_leaves_the_sequence_as_it_was(kind):
    """A compiled step graph runs one more eager step before capturing and undoes it (`rewound_step`): the next
    steps give the logits of a run without it, and every layer's host and device counts come back (turbo4 with
    its default fp16 sinks: both count rows)."""
    from compactkv.engine.graphs import LogitsStepGraph
    model = tiny_model()
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(0, VOCAB, (1, 30), generator=g)
    feed = torch.randint(0, VOCAB, (4,), generator=g).tolist()
    runs, counts = {}, {}
    for rewind in (False, True):
        cache = static_cache(model, kind, 1, 40, "cpu")
        with torch.no_grad():
            model(input_ids=ids, past_key_values=cache, use_cache=True)
        step = LogitsStepGraph(model, cache, ids[:, -1:])
        out = []
        for i, tok in enumerate(feed):
            step.feed(tok)
            out.append(step.step().clone())
            if rewind and i == 1:
                before = (cache.host_lengths(), [[t.clone() for t in lay._device_counts()] for lay in cache.layers])
                step.rewound_step()
                assert torch.equal(step.logits, out[-1])
                after = (cache.host_lengths(), [[t.clone() for t in lay._device_counts()] for lay in cache.layers])
                assert before[0] == after[0] and all(torch.equal(a, b) for x, y in zip(before[1], after[1])
                                                     for a, b in zip(x, y))
        runs[rewind] = torch.stack(out)
        counts[rewind] = [lay.lengths.tolist() for lay in cache.layers]
    assert torch.equal(runs[True], runs[False])
    assert counts[True] == counts[False] == [[34]] * 2
    empty = LogitsStepGraph(model, static_cache(model, kind, 1, 8, "cpu"), ids[:, :1])
    with pytest.raises(ValueError, match="rewound_step needs tokens in the cache"):
        empty.rewound_step()


@pytest.mark.parametrize("kind", ["f16", "turbo4"])
def test_static_layers_ignore_the_transformers_mask_on_single_token_steps(kind):
    """transformers sizes its mask by the host's token count, and builds one whenever a CUDA graph is being
    captured; a captured step replays it while the cache grows. Static layers must not read it for one-token steps:
    a mask covering the wrong number of keys gives the same output as no mask."""
    from compactkv.attention.interface import compactkv_attention_forward
    model = tiny_model()
    cache = static_cache(model, kind, batch_size=2, max_cache_len=16)
    layer = cache.layers[0]
    g = torch.Generator().manual_seed(5)
    k, v = layer.update(torch.randn(2, 2, 9, 64, generator=g), torch.randn(2, 2, 9, 64, generator=g))
    q = torch.randn(2, 8, 1, 64, generator=g)
    want, _ = compactkv_attention_forward(None, q, k, v, None, scaling=0.125)
    short = torch.ones(2, 1, 1, 4, dtype=torch.bool)  # covers 4 of the 9 stored keys
    got, _ = compactkv_attention_forward(None, q, k, v, short, scaling=0.125)
    assert torch.equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("kind,head_dim", [("turbo4", 64), ("turbo3", 64), ("turbo2", 64), ("turbo3", 128),
                                           ("turbo4", 128), ("turbo2", 128)])
def test_static_kernels_match_torch_reference(kind, head_dim, monkeypatch):
    """Chunked prefill (the prefill path: 128-token chunks) and a decode step over a static cache: logits of the
    Triton backend vs the torch reference (the rows are written by the same encode kernel in both runs). Planar
    storage (read by the Gluon or table kernel) for turbo4/turbo2, and turbo3 at head_dim 128."""
    model = tiny_model("cuda", torch.float16, head_dim=head_dim)
    ids = torch.randint(0, VOCAB, (2, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(6))
    logits = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("COMPACTKV_BACKEND", backend)
        cache = static_cache(model, kind, 2, 320)
        assert cache.layers[0].planar == (kind != "turbo3" or head_dim == 128)
        with torch.no_grad():
            for s in range(0, 300, 128):
                model(input_ids=ids[:, s:s + 128], past_key_values=cache, use_cache=True)
            out = model(input_ids=ids[:, :1], position_ids=cache.lengths.long()[:, None], past_key_values=cache)
        logits[backend] = out.logits.float()
    err = (logits["torch"] - logits["triton"]).abs().max() / logits["torch"].abs().max()
    assert err < 2e-2, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
def test_static_decode_step_merges_sinks_in_one_launch(kind, monkeypatch):
    """A static cache with fp16 sinks and centered, scaled keys: its one-token steps run the finishing table kernel
    with the sinks and key mean merged there (backend.FUSE_SINKS), and give the logits of the two-launch path
    (table kernel + finish_decode) and of the torch reference."""
    from compactkv.attention.triton import backend, gluon
    calls = []
    real = gluon.attend_planes

    def spy(*args, **kw):
        calls.append(kw.get("sinks") is not None and kw.get("k_mean") is not None)
        return real(*args, **kw)
    monkeypatch.setattr(backend, "attend_planes", spy)
    model = tiny_model("cuda", torch.float16, head_dim=128)
    ids = torch.randint(0, VOCAB, (2, 200), device="cuda", generator=torch.Generator("cuda").manual_seed(8))
    logits = {}
    for name, env, fuse in (("torch", "torch", True), ("two launches", "triton", False), ("one", "triton", True)):
        monkeypatch.setenv("COMPACTKV_BACKEND", env)
        monkeypatch.setattr(backend, "FUSE_SINKS", fuse)
        cache = static_cache(model, kind, 2, 260, scale_keys=True)
        with torch.no_grad():
            model(input_ids=ids, past_key_values=cache, use_cache=True)  # (its queries fix the key scale)
            out = model(input_ids=ids[:, :1], position_ids=cache.lengths.long()[:, None], past_key_values=cache)
        assert cache.layers[0].n_sink == 4 and cache.layers[0].k_mean is not None
        logits[name] = out.logits.float()
    assert calls and all(calls) and len(calls) == len(model.model.layers)  # the fused run only, every layer
    ref = logits["torch"].abs().max()
    assert (logits["one"] - logits["two launches"]).abs().max() / ref < 5e-3
    assert (logits["one"] - logits["torch"]).abs().max() / ref < 2e-2


def test_static_layer_keeps_its_query_map():
    """The decode step's query map is made once per static layer (a graphed step must not hold a kernel remaking
    it at every replay), and the table kernel's column-ordered copy of it once per map."""
    pytest.importorskip("triton", reason="triton is not installed")
    from compactkv.attention.triton.backend import _query_maps
    from compactkv.attention.triton.gluon import lut_query_map
    from compactkv.cache.static import StaticTurboQuantLayer
    layer = StaticTurboQuantLayer("turbo4", "turbo4", 64, 1, 2, 16, device="cpu")
    w = _query_maps(layer, 0.125, torch.device("cpu"))
    assert _query_maps(layer, 0.125, torch.device("cpu")) is w
    assert _query_maps(layer, 0.25, torch.device("cpu")) is not w  # another scale: another map
    assert lut_query_map(w, 4) is lut_query_map(w, 4)
    from compactkv.attention.triton import gluon
    w2 = w.clone()
    lut_query_map(w2, 4)
    key = (id(w2), ("cols", 4))
    assert key in gluon._LUT_MAPS
    del w2
    assert key not in gluon._LUT_MAPS  # a freed map's entry goes with it


def test_static_sinks_are_taken_from_the_first_update_and_follow_crops_resets_and_reorders():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(4))
    cache = StaticTurboQuantCache(model.config, "turbo4", "turbo4", batch_size=2, max_cache_len=64, device="cpu",
                                  sink_tokens=4)
    layer = cache.layers[0]
    with torch.no_grad():
        model(input_ids=ids[:, :24], past_key_values=cache, use_cache=True)
    assert layer.n_sink == 4 and layer.sink_k.dtype == torch.float16 and layer.k_mean is layer.key_center
    assert layer.lengths.tolist() == [24, 24] and layer.comp_lengths.tolist() == [20, 20]
    mem = layer.memory()
    assert mem["window_bytes"] == 2 * 2 * 2 * 4 * 64 * 2 and mem["tokens"] == 24  # K+V, rows, heads, fp16
    sink0 = layer.sink_k.clone()
    cache.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(layer.sink_k, sink0.flip(0)) and layer.comp_lengths.tolist() == [20, 20]
    cache.crop(10)
    assert layer.n_sink == 4 and layer.comp_lengths.tolist() == [6, 6] and layer.n_compressed == 6
    cache.crop(3)  # fewer than the sinks: their first three are what is left
    assert layer.n_sink == 3 and layer.n_compressed == 0 and layer.comp_lengths.tolist() == [0, 0]
    assert torch.equal(layer.sink_k, sink0.flip(0)[..., :3, :])
    cache.reset()
    assert layer.n_sink == 0 and layer.comp_lengths is layer.lengths and layer.k_mean is None
    with torch.no_grad():  # a first update shorter than the sinks: none taken, every token compressed
        model(input_ids=ids[:, :3], past_key_values=cache, use_cache=True)
    assert layer.n_sink == 0 and layer.n_compressed == 3 and layer.comp_lengths is layer.lengths
    cache.fill(16)
    assert layer.n_sink == 0 and layer.n_compressed == 16 and layer.k_mean is None
    with pytest.raises(ValueError, match="sink_tokens must be an integer in"):
        StaticTurboQuantCache(model.config, batch_size=1, max_cache_len=4, device="cpu", sink_tokens=4)


def test_static_scale_keys_waits_for_the_queries_and_never_loses_a_pending_update():
    """With scale_keys the first update's compressed tokens wait for the attention call's queries; a reader or
    another update before that encodes them without a scale (nothing stored is ever skipped)."""
    model = tiny_model()
    cfg = model.config
    k = torch.randn(1, 2, 24, 64)
    v = torch.randn(1, 2, 24, 64)
    for then in ("observe", "read", "update"):
        cache = StaticTurboQuantCache(cfg, "turbo4", "turbo4", batch_size=1, max_cache_len=64, device="cpu",
                                      sink_tokens=4, scale_keys=True)
        layer = cache.layers[0]
        layer.update(k, v)
        assert layer._pending is not None and not layer.calibrated and layer.k_scale is None
        if then == "observe":
            layer.observe(torch.randn(1, 8, 24, 64))
            assert layer.k_scale is not None and layer.k_scale.shape == (2, 64)
        elif then == "read":
            layer.chunks_k
            assert layer.k_scale is None
        else:
            layer.update(k[:, :, :3], v[:, :, :3])
            assert layer.k_scale is None and layer.n_compressed == 23
        assert layer._pending is None and layer.calibrated
        from compactkv.cache.static import centered_scaled
        want = layer.k_codec.encode(centered_scaled(k[:, :, 4:], layer.key_center, layer.k_scale))
        assert torch.equal(layer.chunks_k[0][:, :, :20], want)
    with pytest.raises(ValueError, match="does not fit this layer"):
        fresh = StaticTurboQuantCache(cfg, batch_size=1, max_cache_len=64, device="cpu", scale_keys=True).layers[0]
        fresh.update(k, v)
        fresh.observe(torch.randn(1, 3, 24, 64))


def test_static_sink_layer_advances_both_counts_in_one_buffer():
    """With sinks the token count and the compressed rows' count are the two rows of one int32 buffer, so a decode
    step advances both with one operation (one launch per layer in a CUDA graph); crops, resets, reorders and
    resized copies keep them views of their layer's buffer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class IntAdds(TorchDispatchMode):  # in-place adds on int32 tensors (the count updates) during an update
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.add_ and args[0].dtype == torch.int32:
                IntAdds.n += 1
            return func(*args, **(kwargs or {}))
    model = tiny_model()
    cache = StaticTurboQuantCache(model.config, batch_size=2, max_cache_len=64, device="cpu", sink_tokens=4)
    layer = cache.layers[0]
    g = torch.Generator().manual_seed(2)
    kv = [torch.randn(2, 2, 20, 64, generator=g) for _ in range(2)]
    layer.update(*kv)

    def linked(lay):
        return (lay.lengths.data_ptr() == lay._counts[0].data_ptr()
                and lay.comp_lengths.data_ptr() == lay._counts[1].data_ptr())
    assert linked(layer) and layer._counts.tolist() == [[20, 20], [16, 16]]
    with IntAdds():
        layer.update(kv[0][:, :, :1], kv[1][:, :, :1])
    assert IntAdds.n == 1 and layer._counts.tolist() == [[21, 21], [17, 17]]
    layer.reorder_cache(torch.tensor([1, 0]))
    copy = layer.resized(40)
    assert linked(copy) and copy._counts.data_ptr() != layer._counts.data_ptr()
    copy.update(kv[0][:, :, :2], kv[1][:, :, :2])
    assert copy._counts.tolist() == [[23, 23], [19, 19]] and layer._counts.tolist() == [[21, 21], [17, 17]]
    layer.crop(10)
    assert linked(layer) and layer._counts.tolist() == [[10, 10], [6, 6]]
    layer.reset()
    assert layer.comp_lengths is layer.lengths and layer.lengths.data_ptr() == layer._counts.data_ptr()
    layer.update(*kv)
    assert linked(layer) and layer._counts.tolist() == [[20, 20], [16, 16]]


def test_static_layer_encodes_both_operands_through_the_encoders_pair_when_it_takes_them():
    """An encoder's `pair` (triton.encode.encode_into's: one launch for a decode step's K and V) gets the centered,
    scaled keys' arguments first; when it declines (False) the layer encodes each operand, when it accepts
    nothing else is called. Same rows either way."""
    from compactkv.cache.static import StaticTurboQuantLayer, _torch_encode
    g = torch.Generator().manual_seed(4)
    kv = [torch.randn(2, 2, 20, 64, generator=g) for _ in range(2)]
    step = [x[:, :, :1].clone() for x in kv]
    query = torch.randn(2, 4, 20, 64, generator=g)
    layers = {}
    for accept in (False, True):
        calls = []

        def one(codec, x, target, positions, center=None, scale=None):
            calls.append(("one", center is not None, scale is not None))
            _torch_encode(codec, x, target, positions, center=center, scale=scale)

        def pair(k_codec, keys, k_target, v_codec, values, v_target, positions, center=None, scale=None):
            calls.append(("pair", center is not None, scale is not None))
            if accept:
                _torch_encode(k_codec, keys, k_target, positions, center=center, scale=scale)
                _torch_encode(v_codec, values, v_target, positions)
            return accept
        one.pair = pair
        layer = StaticTurboQuantLayer("turbo4", "turbo2", 64, 2, 2, 40, device="cpu", encode=one, scale_keys=True)
        layer.update(*kv)
        layer.observe(query)
        calls.clear()
        layer.update(*step)
        want = [("pair", True, True)] + ([] if accept else [("one", True, True), ("one", False, False)])
        assert calls == want, (accept, calls)
        layers[accept] = layer
    assert torch.equal(layers[False].k_rows, layers[True].k_rows)
    assert torch.equal(layers[False].v_rows, layers[True].v_rows)


@pytest.mark.parametrize("kind", ["turbo4", "f16"])
def test_resized_static_cache_holds_the_same_tokens_and_continues_identically(kind):
    """What `serve --graphs`' prefix store does: keep a finished static cache at its own length, then give a reused
    copy room for a whole context again; the copy must continue exactly as the original would."""
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(6))
    cache = static_cache(model, kind, 1, 64, "cpu", scale_keys=True) if kind != "f16" else \
        StaticDenseCache(model.config, batch_size=1, max_cache_len=64, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    small = cache.resized(40)
    assert small.max_cache_len == 40 and small.get_seq_length() == 40
    assert small.memory_report()["kv_bytes"] < cache.memory_report()["kv_bytes"]
    with pytest.raises(ValueError, match="capacity must be an integer >= the 40 stored tokens"):
        cache.resized(39)
    big = small.resized(64)
    want, _ = greedy_static(model, cache, ids[:, -1:] * 0 + 7, 6)
    got, _ = greedy_static(model, big, ids[:, -1:] * 0 + 7, 6)
    assert torch.equal(got, want)
    for a, b in zip(cache.layers, big.layers):  # the same bytes, and the copy's own buffers
        if kind == "f16":
            assert torch.equal(a.keys, b.keys) and a.keys.data_ptr() != b.keys.data_ptr()
        else:
            assert torch.equal(a.chunks_k[0], b.chunks_k[0]) and torch.equal(a.sink_k, b.sink_k)
            assert torch.equal(a.k_scale, b.k_scale) and b.k_mean is b.key_center
            assert a.k_rows.data_ptr() != b.k_rows.data_ptr() and b.backend_state == {}


@torch.no_grad()
def greedy_padded(model, cache, ids, mask, steps, static):
    """Prefill of a padded batch (mask int64 [B, T], 0 = padding; positions = slots) + `steps` greedy tokens; the
    dynamic cache gets the grown mask each step, a static one only its prompt's (GreedyStepGraph's eager steps).
    (tokens [B, steps], the last step's logits)."""
    out = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    tok = out.logits[:, -1:].argmax(-1)
    toks, logits = [tok], None
    dec = GreedyStepGraph(model, cache, tok) if static else None
    for _ in range(steps - 1):
        if static:
            logits = dec._logits().float()
            dec.tokens.copy_(logits.argmax(-1, keepdim=True))
            tok = dec.tokens.clone()
        else:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            logits = model(input_ids=tok, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, -1]
            logits = logits.float()
            tok = logits.argmax(-1, keepdim=True)
        toks.append(tok)
    return torch.cat(toks, 1), logits


@pytest.mark.parametrize("kind,planar,sinks", [("f16", False, 0), ("turbo4", False, 0), ("turbo2", True, 4),
                                               ("turbo3", False, 4)])
def test_static_caches_keep_a_padded_batch_s_padding_hidden(kind, planar, sinks):
    """A left-padded batch: the static cache records the padding from its prompt's mask and hides it from every
    later one-token step (which ignore transformers' mask): the same greedy tokens as a cache that transformers
    masks at every step (DynamicCache for f16; a TurboQuantCache compressing every token, as
    test_static_turbo_matches_compress_everything_cache, for the compressed kinds). Without the record, the padded
    row's logits move: the padding would be attended."""
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (3, 30), generator=torch.Generator().manual_seed(11))
    mask = torch.ones(3, 30, dtype=torch.long)
    mask[1, :7] = 0
    mask[2, :19] = 0
    if kind == "f16":
        model.set_attn_implementation("sdpa")
        ref = greedy_padded(model, DynamicCache(config=model.config), ids, mask, 8, static=False)
        compactkv.attach(model)
        cache = StaticDenseCache(model.config, batch_size=3, max_cache_len=48, device="cpu", dtype=torch.float32)
    else:
        ref_cache = compactkv.TurboQuantCache(model.config, k=kind, v=kind, sink_tokens=sinks, residual_length=0,
                                              block_size=1, center_keys=True, scale_keys=False, unbiased_keys=False)
        ref = greedy_padded(model, ref_cache, ids, mask, 8, static=False)
        cache = StaticTurboQuantCache(model.config, kind, kind, batch_size=3, max_cache_len=48, device="cpu",
                                      planar=planar, center_keys=True, sink_tokens=sinks)
    got = greedy_padded(model, cache, ids, mask, 8, static=True)
    assert torch.equal(got[0], ref[0])
    assert torch.allclose(got[1], ref[1], atol=2e-3, rtol=2e-3)
    for layer in cache.layers:
        want = torch.zeros(3, 48 + sinks)
        want[1, :7] = want[2, :19] = float("-inf")
        assert torch.equal(layer.pad_bias, want)
    # the control: the same cache without its record attends the padding (rows 1 and 2 move, row 0 does not)
    toks = got[0][:, -1:]
    kept, counts = [layer.pad_bias for layer in cache.layers], cache.counts_snapshot()
    for layer in cache.layers:
        layer.pad_bias = None
    with torch.no_grad():
        blind = GreedyStepGraph(model, cache, toks)._logits().float()
    cache.restore_counts(counts)  # (the step is taken again over the same tokens)
    for layer, bias in zip(cache.layers, kept):
        layer.pad_bias = bias
    with torch.no_grad():
        seen = GreedyStepGraph(model, cache, toks)._logits().float()
    assert torch.allclose(blind[0], seen[0], atol=1e-5)
    assert not torch.allclose(blind[1], seen[1], atol=1e-2) and not torch.allclose(blind[2], seen[2], atol=1e-2)


@pytest.mark.parametrize("kind", ["f16", "turbo4"])
def test_record_padding_takes_boolean_and_additive_masks_and_follows_the_cache(kind):
    """record_padding reads the last query row over the stored slots (bool keep or additive; extra slots past them
    ignored), allocates nothing for an unpadded prompt, and its record follows crop / reset / reorder / resize;
    a mask that does not cover the stored tokens is refused."""
    model = tiny_model()
    cache = static_cache(model, kind, batch_size=3, max_cache_len=16)
    layer = cache.layers[0]
    g = torch.Generator().manual_seed(5)
    layer.update(torch.randn(3, 2, 9, 64, generator=g), torch.randn(3, 2, 9, 64, generator=g))
    keep = torch.ones(3, 1, 9, 12, dtype=torch.bool)
    keep[..., 9:] = False  # slots past the 9 stored tokens: not padding
    keep[:, :, :-1, -4:] = False  # earlier query rows' hidden keys are the causal part: only the last row counts
    layer.record_padding(keep)
    assert layer.pad_bias is None
    keep[2, 0, -1, 1:3] = False
    layer.record_padding(torch.where(keep, 0.0, torch.finfo(torch.float16).min))
    extra = 4 if kind != "f16" else 0
    assert layer.pad_bias.shape == (3, 16 + extra)
    assert layer.pad_bias[2, 1:3].eq(float("-inf")).all() and layer.pad_bias[2, :1].eq(0).all()
    assert layer.pad_bias[:2].eq(0).all() and layer.pad_bias[2, 3:].eq(0).all()
    assert layer.padding_mask().shape == (3, 1, 1, 9)
    layer.reorder_cache(torch.tensor([2, 0, 1]))
    assert layer.pad_bias[0, 1:3].eq(float("-inf")).all() and layer.pad_bias[1:].eq(0).all()
    bigger = layer.resized(20)
    assert bigger.pad_bias.shape == (3, 20 + extra) and torch.equal(bigger.pad_bias[:, :9], layer.pad_bias[:, :9])
    layer.crop(2)
    assert layer.pad_bias[0, 1].item() == float("-inf") and layer.pad_bias[0, 2:].eq(0).all()
    layer.reset()
    assert layer.pad_bias is not None and layer.pad_bias.eq(0).all()  # kept for a captured step, emptied
    with pytest.raises(ValueError, match="does not cover this cache's 3 batch rows x 0 stored"):
        layer.record_padding(torch.ones(2, 1, 1, 4, dtype=torch.bool))


def test_static_dense_timing_baseline_refuses_a_padded_batch():
    cache = StaticDenseCache(tiny_model().config, batch_size=2, max_cache_len=16, device="cpu", exact_mask=False)
    layer = cache.layers[0]
    layer.update(torch.randn(2, 2, 5, 64), torch.randn(2, 2, 5, 64))
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    layer.record_padding(keep)  # nothing hidden: fine
    keep[1, 0, -1, 0] = False
    with pytest.raises(ValueError, match="exact_mask=False .* cannot hide a padded batch's padding"):
        layer.record_padding(keep)


def test_a_captured_step_refuses_padding_that_arrived_after_its_capture():
    """A step captured over an unpadded cache reads no padding buffer; if the cache (reset) then takes a padded
    prompt, replaying it would attend the padding: step() refuses and asks for a new capture."""
    model = tiny_model()
    cache = static_cache(model, "turbo4", batch_size=2, max_cache_len=32)
    with torch.no_grad():
        model(input_ids=torch.zeros(2, 6, dtype=torch.long), past_key_values=cache, use_cache=True)
    dec = GreedyStepGraph(model, cache, torch.zeros(2, 1, dtype=torch.long))
    replays = []
    dec.graph, dec._captured_padding = SimpleNamespace(replay=lambda: replays.append(1)), dec._padding()
    dec.step()
    assert replays == [1]
    cache.reset()
    mask = torch.tensor([[1] * 6, [0, 0] + [1] * 4])
    with torch.no_grad():
        model(input_ids=torch.zeros(2, 6, dtype=torch.long), attention_mask=mask, past_key_values=cache)
    assert all(layer.pad_bias is not None for layer in cache.layers)
    with pytest.raises(ValueError, match="capture the step again"):
        dec.step()
    assert replays == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("kind,head_dim", [("turbo4", 128), ("turbo3", 128), ("turbo2", 128), ("turbo4", 64),
                                           ("turbo2", 64), ("q8_0", 128)])
def test_static_padded_batch_kernels_match_torch_reference(kind, head_dim, monkeypatch):
    """A left-padded batch over a static cache (4 fp16 sinks, centered keys) on CUDA: the one-token step's logits
    on the kernels (planar turbo at head_dim 128 and turbo4 at 64: the table kernel over planes with the padding
    as its bias + finish_decode; turbo2 at 64: the Gluon kernel takes no bias, so the rows path; q8_0: row buffers,
    the split kernels) against the torch reference, and the padded row's logits away from those of a step that
    does not hide its padding."""
    from compactkv.attention.triton import backend
    biased = []
    real = backend.launch_gluon
    monkeypatch.setattr(backend, "launch_gluon", lambda *a, **kw: biased.append(kw.get("bias") is not None)
                        or real(*a, **kw))
    model = tiny_model("cuda", torch.float16, head_dim=head_dim)
    ids = torch.randint(0, VOCAB, (3, 200), device="cuda", generator=torch.Generator("cuda").manual_seed(12))
    mask = torch.ones(3, 200, dtype=torch.long, device="cuda")
    mask[1, :37] = 0
    mask[2, :150] = 0
    logits = {}
    for backend_name in ("torch", "triton", "blind"):
        monkeypatch.setenv("COMPACTKV_BACKEND", "torch" if backend_name == "torch" else "triton")
        cache = static_cache(model, kind, 3, 240)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
            if backend_name == "blind":
                for layer in cache.layers:
                    layer.pad_bias = None
            out = model(input_ids=ids[:, :1], position_ids=cache.lengths.long()[:, None], past_key_values=cache)
        logits[backend_name] = out.logits.float()[:, -1]
    ref = logits["torch"].abs().max()
    assert (logits["triton"] - logits["torch"]).abs().max() / ref < 2e-2
    assert (logits["blind"][1:] - logits["torch"][1:]).abs().max() / ref > 5e-2
    planar_lut = kind in ("turbo4", "turbo3", "turbo2") and (head_dim == 128 or kind == "turbo4")
    assert any(biased) == planar_lut


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("kind,head_dim", [("turbo4", 128), ("turbo2", 128), ("f16", 128), ("turbo4", 64)])
def test_graph_replay_of_a_padded_batch_matches_eager(kind, head_dim):
    """The captured step reads the padding from the cache's fixed buffer: replayed steps give the eager steps'
    tokens for a left-padded batch, and those differ from the same batch's tokens with its padding attended."""
    model = tiny_model("cuda", torch.float16, head_dim=head_dim)
    ids = torch.randint(0, VOCAB, (3, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(13))
    mask = torch.ones(3, 300, dtype=torch.long, device="cuda")
    mask[1, :100] = 0
    mask[2, :250] = 0

    def run(graph, padded=True):
        cache = static_cache(model, kind, 3, 400)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask if padded else None, past_key_values=cache)
        dec = GreedyStepGraph(model, cache, out.logits[:, -1:].argmax(-1))
        toks = [dec.tokens.clone()]
        if graph:
            toks += dec.capture(warmup=2)
        while len(toks) < 24:
            toks.append(dec.step().clone())
        return torch.cat(toks, 1), dec
    eager, _ = run(False)
    graphed, dec = run(True)
    assert dec.graph is not None and all(dec._captured_padding)
    assert torch.equal(graphed, eager)
    unpadded, _ = run(False, padded=False)
    assert torch.equal(unpadded[0], eager[0]) and not torch.equal(unpadded[1:], eager[1:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_a_padded_batch_without_a_biased_kernel_decodes_eagerly_and_refuses_a_capture():
    """turbo2 at head_dim 64 (planar; no table kernel, the Gluon kernel takes no bias): a padded batch's steps run
    eagerly over row copies of the planes (the tokens of the torch reference), and a capture is refused with a
    message instead of freezing copies sized by the host's count."""
    model = tiny_model("cuda", torch.float16, head_dim=64)
    ids = torch.randint(0, VOCAB, (2, 100), device="cuda", generator=torch.Generator("cuda").manual_seed(14))
    mask = torch.ones(2, 100, dtype=torch.long, device="cuda")
    mask[1, :40] = 0
    logits = {}
    for backend_name in ("torch", "triton"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("COMPACTKV_BACKEND", backend_name)
            cache = static_cache(model, "turbo2", 2, 140)
            assert cache.layers[0].planar
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
                dec = GreedyStepGraph(model, cache, ids[:, :1])
                logits[backend_name] = torch.stack([dec._logits().float() for _ in range(3)])  # 3 steps, same input
    assert (logits["triton"] - logits["torch"]).abs().max() / logits["torch"].abs().max() < 2e-2
    with pytest.raises(ValueError, match="runs eager steps only"):
        dec.capture(warmup=1)
