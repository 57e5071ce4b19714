"""The ceiling benchmark's arithmetic: ceilings from records and the overhead fit, on synthetic runs."""

import pytest

from compactkv.bench.ceiling import Run, fit_overhead
from compactkv.plan import kv_bytes, parse_config
from compactkv.plan.shapes import KVLayer, ModelShape

SHAPE = ModelShape("tiny", 4, 8, 256, 512, 1000, (KVLayer(2, 64, 64),) * 4, 10**6, "test")
WEIGHTS = 4 * 10**6


def _run(kind, a, b, contexts, limit=10**12, s=0, block=1024):
    cfg = parse_config(kind)
    recs = tuple((t, WEIGHTS + kv_bytes(SHAPE, cfg, t) + a + s * min(t, block) + b * t, 0, kv_bytes(SHAPE, cfg, t))
                 for t in contexts)
    return Run(kind, WEIGHTS + a, limit, recs, any(r[1] > limit for r in recs), 0.0, {})


def test_ceiling_is_the_last_context_under_the_limit():
    run = _run("f16", 1000, 10, [128, 256, 384, 512], limit=WEIGHTS + 1000 + 384 * (10 + 4 * 2 * 2 * 128))
    assert run.hit_limit and run.ceiling == 384
    assert _run("f16", 1000, 10, [128]).ceiling == 128


@pytest.mark.parametrize("kind", ["f16", "turbo4"])
def test_fit_recovers_the_overhead_curve(kind):
    a, b, s, chunk = 5_000_000, 300, 20_000, 128
    run = _run(kind, a, b, [128, 256, 512, 1024, 1536, 2048], s=s)
    model = fit_overhead(SHAPE, [run], chunk, WEIGHTS, "test", 1024)
    for t in (128, 700, 4096):
        assert model.bytes(SHAPE, t) == pytest.approx(a + s * min(t, 1024) + b * t, rel=1e-6)
    assert model.prefill_chunk == chunk and model.score_block == 1024 and model.source == "test"


def test_fit_predicts_the_other_kind():
    a, b = 5_000_000, 300
    model = fit_overhead(SHAPE, [_run("f16", a, b, [128, 256, 512])], 128, WEIGHTS, "test", 1024)
    turbo = _run("turbo4", a, b, [1024])
    context, peak = turbo.records[0][:2]
    predicted = WEIGHTS + kv_bytes(SHAPE, parse_config("turbo4"), context) + model.bytes(SHAPE, context)
    assert predicted == pytest.approx(peak, rel=1e-6)



def test_cuda_fit_subtracts_the_counted_copies():
    """On CUDA the attention copies are counted from the code; the fit recovers base and mask terms around them."""
    from compactkv.plan.overhead import PROVISIONAL
    from compactkv.plan.planner import is_dense
    cuda = PROVISIONAL["cuda"]
    a, b, chunk = 7_000_000, 600, 64
    runs = []
    for kind in ("f16", "turbo4"):
        cfg = parse_config(kind)
        copies = [cuda.copies_bytes(SHAPE, t, is_dense(SHAPE, cfg)) for t in (64, 128, 256, 512)]
        recs = tuple((t, WEIGHTS + kv_bytes(SHAPE, cfg, t) + a + b * t + c, 0, 0)
                     for t, c in zip((64, 128, 256, 512), copies))
        runs.append(Run(kind, WEIGHTS, 10**12, recs, False, 0.0, {}))
    model = fit_overhead(SHAPE, runs[:1], chunk, WEIGHTS, "test", None, device="cuda")
    for t in (64, 1000, 5000):
        dense = model.bytes(SHAPE, t, dense=True) - cuda.copies_bytes(SHAPE, t, True)
        assert dense == pytest.approx(a + b * t, rel=1e-6)
    assert model.score_block is None and model.score_bytes == 0.0 and model.mask_bytes == pytest.approx(b / chunk)
    both = fit_overhead(SHAPE, runs, chunk, WEIGHTS, "test", None, device="cuda")
    assert both.base_bytes == pytest.approx(model.base_bytes, abs=2)
