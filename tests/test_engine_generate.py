"""Generation, prefix reuse and the scheduler on a tiny random Llama (seconds, no downloads)."""

from __future__ import annotations

import time

import pytest
import torch

from compactkv.engine import Generation, PrefixStore, SamplingConfig, make_cache, stream_generate
from compactkv.engine.caches import cache_memory
from compactkv.engine.scheduler import Draining, EngineConfig, QueueFull, Scheduler
from test_engine_support import Collector, tiny_lm

PROMPT = list(range(5, 45))


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def run(lm, prompt, kind="f16", chunk=512, cache=None, cached=0, **sampling):
    cache = cache if cache is not None else make_cache(lm.model, kind, kind)
    gen = Generation(lm, prompt, SamplingConfig(**{"max_new_tokens": 12, **sampling}), cache, cached_tokens=cached,
                     prefill_chunk=chunk)
    events = list(stream_generate(gen))
    return gen, events


def test_greedy_matches_transformers_generate(lm):
    from transformers import DynamicCache

    gen, events = run(lm, PROMPT, cache=DynamicCache(config=lm.model.config))
    ref = lm.model.generate(torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert gen.output_ids == ref[0, len(PROMPT):].tolist()
    assert [e.token for e in events] == gen.output_ids and gen.finish_reason == "length"


def test_chunked_prefill_gives_the_same_tokens_on_exact_storage(lm):
    # Compressed kinds differ by design: a later chunk attends to the earlier chunks' compressed rows.
    whole, _ = run(lm, PROMPT, "f16")
    chunked, _ = run(lm, PROMPT, "f16", chunk=7)
    assert chunked.output_ids == whole.output_ids
    assert chunked.cache.get_seq_length() == len(PROMPT) + 11


def test_turbo4_holds_fewer_bytes_than_f16(lm):
    long_prompt = list(range(1, 96)) * 3  # longer than the fp16 recent window
    f16, _ = run(lm, long_prompt, "f16")
    t4, _ = run(lm, long_prompt, "turbo4")
    a, b = cache_memory(f16.cache), cache_memory(t4.cache)
    assert a["tokens"] == b["tokens"] == len(long_prompt) + 11
    # f16 rows are fp16 bytes; beyond them each layer holds its recent window's buffer of residual_length +
    # block_size token slots, of which at most block_size are free
    assert b["fp16_bytes"] == a["fp16_bytes"] <= a["kv_bytes"]
    cfg = lm.model.config
    per_token = 2 * 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    assert a["kv_bytes"] - a["fp16_bytes"] <= cfg.num_hidden_layers * per_token * t4.cache.cache_config.block_size
    assert b["kv_bytes"] == b["compressed_bytes"] + b["window_bytes"] + b["aux_bytes"] < a["kv_bytes"]
    assert b["compressed_fp16_bytes"] == sum(layer.n_compressed for layer in t4.cache.layers) * per_token
    assert b["compressed_bytes"] > 0 and b["compressed_fp16_bytes"] / b["compressed_bytes"] > 3


def test_stop_string_and_context_limit(lm):
    free, _ = run(lm, PROMPT, max_new_tokens=12)
    text = lm.tokenizer.decode(free.output_ids)
    stop = text[5:7]
    gen, events = run(lm, PROMPT, max_new_tokens=12, stop=(stop,))
    shown = "".join(e.text for e in events)
    assert gen.finish_reason == "stop" and shown == text[:text.index(stop)]
    short = Generation(lm, PROMPT, SamplingConfig(max_new_tokens=50), make_cache(lm.model, "f16", "f16"),
                       max_context=len(PROMPT) + 3)
    list(stream_generate(short))
    assert len(short.output_ids) == 3 and short.finish_reason == "length"
    with pytest.raises(ValueError, match="context holds"):
        Generation(lm, PROMPT, SamplingConfig(), make_cache(lm.model), max_context=len(PROMPT))


def test_prefix_store_returns_a_private_cropped_copy_that_continues_identically(lm):
    first, _ = run(lm, PROMPT, "f16")
    store = PrefixStore(1 << 30)
    assert store.insert(first.cached_ids(), first.cache)
    follow_up = first.cached_ids() + [7, 8, 9]
    cache, n = store.lookup(follow_up)
    assert n == len(first.cached_ids()) and cache.get_seq_length() == n
    reused, _ = run(lm, follow_up, cache=cache, cached=n)
    fresh, _ = run(lm, follow_up, "f16")
    assert reused.output_ids == fresh.output_ids
    branch = PROMPT[:30] + [60, 61, 62]
    cache2, n2 = store.lookup(branch)
    assert n2 == 30 and cache2.get_seq_length() == 30
    assert store.stats().hits == 2 and store.stats().reused_tokens == n + 30
    assert store.lookup([90] * 20) == (None, 0)
    assert first.cache.get_seq_length() == len(first.cached_ids())  # the stored cache was not cropped


def test_prefix_store_budget_is_lru_and_supersedes_shorter_entries(lm):
    a, _ = run(lm, PROMPT, "f16")
    one = cache_memory(a.cache)["kv_bytes"]
    store = PrefixStore(int(one * 2.5))
    entries = []
    for start in (10, 20, 30):
        g, _ = run(lm, list(range(start, start + 40)), "f16")
        entries.append(g.cached_ids())
        assert store.insert(g.cached_ids(), g.cache)
    assert store.stats().entries == 2 and store.stats().kv_bytes <= store.budget
    assert store.lookup(entries[0] + [1])[1] == 0  # evicted, least recently used
    longer, _ = run(lm, entries[2] + [3, 4], "f16")
    store.insert(longer.cached_ids(), longer.cache)
    assert store.stats().entries == 2  # the entry it extends is dropped
    assert PrefixStore(0).insert(entries[0], a.cache) is False


def test_scheduler_interleaves_requests_fairly_with_independent_outputs(lm):
    prompts = [list(range(s, s + 30)) for s in (3, 13, 23, 33)]
    expected = [run(lm, p, "turbo4", chunk=8, max_new_tokens=10)[0].output_ids for p in prompts]
    sched = Scheduler(lm, EngineConfig(k="turbo4", v="turbo4", max_active=4, prefill_chunk=8,
                                       prefix_cache_bytes=0))
    sinks = [Collector() for _ in prompts]
    for p, sink in zip(prompts, sinks):
        sched.submit(p, SamplingConfig(max_new_tokens=10), sink)
    assert all(s.done.wait(60) for s in sinks)
    assert [s.tokens() for s in sinks] == expected
    times = sorted((t, i) for i, s in enumerate(sinks) for k, _, t in s.events if k == "token")
    order = [i for _, i in times]
    for r in range(10):  # round-robin: every request gets its r-th token before anyone gets an (r+2)-th
        assert sorted(order[4 * r:4 * r + 4]) == [0, 1, 2, 3], order
    assert sched.stats()["kv_bytes"] == 0 and sched.stats()["active"] == 0
    sched.close()


def test_cancel_frees_the_cache_and_drain_refuses_new_work(lm):
    sched = Scheduler(lm, EngineConfig(k="turbo4", v="turbo4", max_active=2, max_queue=1, prefix_cache_bytes=0))
    sink = Collector()
    req = sched.submit(PROMPT, SamplingConfig(max_new_tokens=400), sink)
    deadline = time.time() + 30
    while sched.stats()["kv_bytes"] == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert sched.stats()["kv_bytes"] > 0
    sched.cancel(req)
    assert sink.done.wait(30) and sink.summary()["finish_reason"] == "cancelled"
    assert sched.stats()["kv_bytes"] == 0 and sched.stats()["prefix_entries"] == 0
    with pytest.raises(ValueError, match="context holds"):
        sched.submit(list(range(1, 90)) * 10, SamplingConfig(), Collector())
    sched.drain(timeout=0.5)
    with pytest.raises(Draining):
        sched.submit(PROMPT, SamplingConfig(), Collector())
    sched.close()


def test_queue_limit_and_drain_deadline_cut_long_requests():
    sched = Scheduler(tiny_lm(eos=False), EngineConfig(k="f16", v="f16", max_active=1, max_queue=1, prefix_cache_bytes=0))
    sinks = [Collector(), Collector()]
    for s in sinks:
        sched.submit(PROMPT, SamplingConfig(max_new_tokens=400), s)
    with pytest.raises(QueueFull):
        sched.submit(PROMPT, SamplingConfig(), Collector())
    sched.drain(timeout=0.3)
    assert all(s.done.wait(30) for s in sinks)
    assert [s.summary()["finish_reason"] for s in sinks] == ["length", "length"]
    sched.close()


def test_warm_up_runs_one_sequence_and_leaves_nothing_behind(lm):
    sched = Scheduler(lm, EngineConfig(k="turbo4", v="turbo4", max_context=64, prefill_chunk=8))
    seconds = sched.warm_up(prompt_tokens=40, new_tokens=3)
    assert seconds > 0
    stats = sched.stats()
    assert stats["active"] == 0 and stats["queued"] == 0 and stats["kv_bytes"] == 0
    assert stats["prefix_entries"] == 0  # the warm-up's cache is not kept for reuse
    sched.drain(0.1)
    with pytest.raises(Draining):  # (a warm-up is a request like any other: refused while draining)
        sched.warm_up()
    sched.close()
