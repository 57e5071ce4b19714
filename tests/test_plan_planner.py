"""Fits / largest context / largest batch searches, the recommendation, overhead and weights arithmetic."""

import json

import pytest

from compactkv.plan import (OverheadModel, kv_bytes, load_overhead, load_ranking, make_plan, parse_config,
                            parse_configs, preset_shape, weights_bytes)
from compactkv.plan.shapes import KVLayer, ModelShape

NO_OVERHEAD = OverheadModel(0, 0.0, 0.0, 4, 0, 0.0, None, "test: zero")
GiB = 2**30


def _plan(shape, configs, memory, context, batch=1, overhead=NO_OVERHEAD, weights=(0, "test"), ranking=None):
    return make_plan(shape, parse_configs(configs), memory, context, batch=batch, weights=weights,
                     overhead=overhead, ranking=ranking or load_ranking())


def test_max_context_is_exact_at_the_boundary():
    shape = preset_shape("Llama-3.1-8B")  # f16: 131,072 B per token
    w = 5 * GiB
    for memory, expected in ((w + 10_000 * 131_072, 10_000), (w + 10_000 * 131_072 - 1, 9_999)):
        row = _plan(shape, ["f16"], memory, 4096, weights=(w, "test")).rows[0]
        assert row.max_context == expected


def test_fits_and_max_batch():
    shape, turbo4 = preset_shape("Qwen3-14B"), parse_config("turbo4")
    per_seq = kv_bytes(shape, turbo4, 32_768)
    plan = _plan(shape, ["turbo4"], 3 * per_seq + 10, 32_768, weights=(10, "test"))
    assert plan.rows[0].max_batch == 3 and plan.rows[0].fits
    plan = _plan(shape, ["turbo4"], 3 * per_seq + 10, 32_768, batch=4, weights=(10, "test"))
    assert not plan.rows[0].fits and plan.rows[0].kv_bytes == 4 * per_seq


def test_sliding_only_model_is_unbounded():
    shape = ModelShape("swa", 2, 4, 64, 128, 100, (KVLayer(2, 64, 64, 256),) * 2, 10, "test")
    chunked = OverheadModel(0, 8.0, 3.0, 4, 1, 0.0, 512, "test")
    row = _plan(shape, ["f16"], GiB, 1000, overhead=chunked).rows[0]
    assert row.max_context is None
    row = _plan(shape, ["f16"], GiB, 1000, overhead=OverheadModel(0, 8.0, 3.0, 4, 1, 0.0, None, "test")).rows[0]
    assert row.max_context is not None  # whole-prompt prefill activations grow with the context


def test_nothing_fits_when_weights_exceed_memory():
    plan = _plan(preset_shape("Llama-3.1-70B"), ["f16", "turbo2"], 8 * GiB, 4096, weights=(9 * GiB, "test"))
    assert plan.recommendation is None and "weights and runtime alone" in plan.recommendation_text
    assert [r.max_context for r in plan.rows] == [0, 0]


def test_recommendation_follows_the_ranking_file(tmp_path):
    shape = preset_shape("Qwen3-14B")
    memory = kv_bytes(shape, parse_config("q8_0"), 65_536) + 1  # f16 does not fit, q8_0 just does
    plan = _plan(shape, ["f16", "q8_0", "turbo3"], memory, 65_536)
    assert plan.recommendation == "q8_0"
    assert plan.ranking_source == load_ranking().source  # the shipped file (measured by compactkv bench ppl)
    measured = tmp_path / "r.json"
    measured.write_text(json.dumps({"source": "test measurement", "ranking": ["turbo3", "q8_0"]}))
    plan = _plan(shape, ["f16", "q8_0", "turbo3"], memory, 65_536, ranking=load_ranking(measured))
    assert plan.recommendation == "turbo3" and "test measurement" in plan.recommendation_text


def test_shipped_ranking_lists_the_default_configs():
    from compactkv.plan import DEFAULT_CONFIGS

    ranking = load_ranking()
    assert set(parse_config(c).name for c in DEFAULT_CONFIGS) <= set(ranking.order)
    assert ranking.order[0] == "f16" and ranking.source.startswith("measured: `compactkv bench ppl")


def test_bad_ranking_file(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"ranking": ["f16"]}))
    with pytest.raises(ValueError, match="source"):
        load_ranking(tmp_path / "r.json")


def test_overhead_formula_by_hand():
    shape = preset_shape("Qwen3-14B")  # hidden 5120, intermediate 17408, vocab 151936, 40 heads
    model = OverheadModel(100, 8.0, 3.0, 2, 1, 4.0, 512, "test")
    act = 512 * (8 * 5120 + 3 * 17408) * 2
    expected = 100 + 2 * (act + 1 * 151936 * 4 + 40 * 512 * 4096 * 4)
    assert model.bytes(shape, 4096, batch=2) == expected
    assert model.bytes(shape, 100, batch=1) == 100 + 100 * (8 * 5120 + 3 * 17408) * 2 + 151936 * 4 + 40 * 100 * 100 * 4


def test_calibration_file_overrides_provisional(tmp_path):
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"cpu": {"base_bytes": 123, "source": "measured"}}))
    model = load_overhead("cpu", cal)
    assert model.base_bytes == 123 and model.source == "measured" and model.act_bytes == 4
    assert load_overhead("cpu", cal, prefill_chunk=None).prefill_chunk is None
    cal.write_text(json.dumps({"cpu": {"bogus": 1}}))
    with pytest.raises(ValueError, match="unknown calibration keys"):
        load_overhead("cpu", cal)
    with pytest.raises(ValueError, match="accepted: cpu, cuda"):
        load_overhead("tpu")


def test_weights_bytes():
    shape = preset_shape("Qwen3-14B")
    assert weights_bytes(shape)[0] == 14_768_307_200 * 2  # bf16 by default for a preset
    assert weights_bytes(shape, "q8_0")[0] == 14_768_307_200 * 17 // 16
    assert weights_bytes(shape, "Q4_K_M")[0] == int(14_768_307_200 * 4.84 / 8)
    assert weights_bytes(shape, "18GiB") == (18 * GiB, "given")
    with pytest.raises(ValueError, match="unknown weights spec"):
        weights_bytes(shape, "q9_x")
    with pytest.raises(ValueError, match="no weights file"):
        weights_bytes(shape, "file")


def test_attention_copies_by_path():
    """CUDA defaults: one layer's K/V expanded to every query head (f16 / DynamicCache + SDPA), plus two fp16 copies
    at the KV-head count on the compressed path; nothing on CPU."""
    shape = preset_shape("Llama-3.1-8B")  # 32 query heads, 8 KV heads, head_dim 128
    cuda = load_overhead("cuda", path=None)
    t = 10_000
    assert cuda.copies_bytes(shape, t, dense=True) == t * 32 * 256 * 2
    assert cuda.copies_bytes(shape, t, dense=False) == t * (2 * 8 + 32) * 256 * 2
    assert cuda.bytes(shape, t, dense=False) - cuda.bytes(shape, t, dense=True) == t * 2 * 8 * 256 * 2
    cpu = load_overhead("cpu")
    assert cpu.copies_bytes(shape, t, dense=True) == cpu.copies_bytes(shape, t, dense=False) == 0


def test_plan_rows_use_the_dense_path_for_f16_only():
    from compactkv.plan.planner import is_dense
    shape = preset_shape("Llama-3.1-8B")
    assert is_dense(shape, parse_config("f16"))
    assert not any(is_dense(shape, parse_config(c)) for c in ("turbo4", "q8_0/turbo4", "q8-edges:f16", "f16/turbo4"))
    cuda = load_overhead("cuda")
    plan = _plan(shape, ["f16", "turbo4"], 80 * GiB, 8192, overhead=cuda)
    f16, turbo = plan.rows
    assert f16.overhead_bytes == cuda.bytes(shape, 8192, dense=True) + cuda.alloc_reserve_bytes
    slack = cuda.slack_bytes(shape, parse_config("turbo4"), 8192)
    assert turbo.overhead_bytes == cuda.bytes(shape, 8192, dense=False) + slack


def test_small_pool_packing_of_chunk_tensors():
    """CUDA: a turbo4 chunk tensor of Llama-3.1-8B (1 x 8 heads x 1024 rows x 66 B = 540,672 B) shares a 2 MiB
    block with two others, so each costs 2 MiB / 3; at batch 8 it is 4.3 MB (large pool, no packing loss)."""
    from dataclasses import replace
    shape = preset_shape("Llama-3.1-8B")
    cuda = replace(load_overhead("cuda"), alloc_reserve_bytes=0)
    full = 2 * 2**20 / 3 - 540_672
    t = 128 + 5 * 1024  # 5 full chunks per layer and side past the 128 fp16 tokens
    assert cuda.slack_bytes(shape, parse_config("turbo4"), t, 1, fp16_tokens=128) == int(32 * 2 * 5 * full)
    assert cuda.slack_bytes(shape, parse_config("turbo4"), t, 8, fp16_tokens=128) == 0
    assert cuda.slack_bytes(shape, parse_config("f16"), t, 1, fp16_tokens=128) == 0
    q8 = 8 * 1024 * 136  # 1,114,112 B: over 1 MiB, so only the turbo4 V side loses
    assert q8 > 2**20
    assert cuda.slack_bytes(shape, parse_config("q8_0/turbo4"), t, 1, fp16_tokens=128) == int(32 * 5 * full)
    assert load_overhead("cpu").slack_bytes(shape, parse_config("turbo4"), t) == 0
