"""`compactkv bench e2e` on the 2-layer --tiny model (CPU): eager and --graphs cells, the JSON, bad input."""

import json

import pytest
import torch

from compactkv.cli import main


def run(tmp_path, *extra):
    out = tmp_path / "e2e.json"
    rc = main(["bench", "e2e", "--tiny", "--device", "cpu", "--steps", "3", "--warmup", "2", "--chunk-tokens", "64",
               "--json", str(out), *extra])
    return rc, json.loads(out.read_text()) if out.exists() else None


def test_eager_cells(tmp_path):
    rc, info = run(tmp_path, "--batches", "2", "--contexts", "40", "--kinds", "f16,turbo4")
    assert rc == 0 and not info["cuda_graphs"]
    f16, turbo = info["cells"]
    assert [c["status"] for c in info["cells"]] == ["ok", "ok"]
    assert f16["fill"] == turbo["fill"] == "prefill" and turbo["prefill_chunk"] == 40
    assert f16["prefill_warmed"] and turbo["prefill_warmed"]
    assert turbo["tokens_held"] == 40 + 2 + 3 and turbo["x_f16"] == turbo["tok_s"] / f16["tok_s"]
    assert "no CUDA graphs" in info["table"]


def test_graph_cells_on_cpu_run_the_static_step_eagerly(tmp_path):
    rc, info = run(tmp_path, "--graphs", "--batches", "2", "--contexts", "40", "--synthetic-contexts", "32",
                   "--kinds", "f16,f16-nomask,turbo4,turbo3")
    assert rc == 0 and not info["cuda_graphs"]  # captured on CUDA only
    cells = info["cells"]
    assert [c["status"] for c in cells] == ["ok"] * 8, [c.get("error") for c in cells]
    assert [c["fill"] for c in cells] == ["prefill"] * 4 + ["synthetic"] * 4
    assert all(c["prefill_warmed"] for c in cells[:4])
    for c in cells:
        assert c["cuda_graph"] is False and c["eager_step_ms_median"] > 0 and c["tok_s"] > 0
        # eager steps (warm-up: at least 2) + the timed steps, on top of the context
        assert c["tokens_held"] == c["context"] + 2 + 3
    turbo = [c for c in cells if c["kind"] == "turbo4"]
    assert all(c["kv_bytes"] < c["kv_fp16_bytes"] for c in turbo)
    assert all("x_f16" in c for c in turbo)
    assert "static caches, eager" in info["table"]


def test_cold_prefill(tmp_path):
    rc, info = run(tmp_path, "--batches", "1", "--contexts", "40", "--kinds", "turbo4", "--no-prefill-warmup")
    assert rc == 0 and info["cells"][0]["prefill_warmed"] is False


def test_full_prefill_warmup(tmp_path):
    # TTFT comparisons: the untimed warm-up is the same prompt in the same chunks, then the timed prefill
    rc, info = run(tmp_path, "--batches", "1", "--contexts", "40", "--kinds", "f16,turbo4", "--prefill-warmup-full")
    assert rc == 0 and [c["prefill_warmed"] for c in info["cells"]] == ["full", "full"]
    assert all(c["status"] == "ok" and c["prefill_s"] > 0 for c in info["cells"])
    rc, info = run(tmp_path, "--graphs", "--batches", "1", "--contexts", "600", "--kinds", "turbo4",
                   "--prefill-warmup-full")  # a static scratch cache that holds the whole prompt (> 512 tokens)
    assert rc == 0 and info["cells"][0]["status"] == "ok" and info["cells"][0]["prefill_warmed"] == "full"


def test_bad_input(tmp_path, capsys):
    rc, _ = run(tmp_path, "--graphs", "--kinds", "f16,q8_0/turbo4")
    assert rc == 2
    err = capsys.readouterr().err
    assert "q8_0/turbo4" in err and "f16-nomask, turbo4, turbo3, turbo2" in err
    rc, _ = run(tmp_path, "--kinds", "turbo9")
    assert rc == 2 and "unknown cache 'turbo9'" in capsys.readouterr().err
    rc, _ = run(tmp_path, "--prefill-warmup-full", "--no-prefill-warmup")
    assert rc == 2 and "contradict" in capsys.readouterr().err
    for bad, says in (("--batches", "expected comma-separated integers"), ("--contexts", "must be >= 1")):
        rc, _ = run(tmp_path, bad, "x" if bad == "--batches" else "0")
        out = capsys.readouterr()
        assert rc == 2 and says in out.err and "model built" not in out.out  # refused before building the model
    for flag, value in (("--steps", "0"), ("--warmup", "-1")):
        with pytest.raises(SystemExit) as e:
            run(tmp_path, flag, value)
        assert e.value.code == 2 and f"argument {flag}: expected an integer" in capsys.readouterr().err


def test_a_broken_cell_is_recorded_and_the_run_goes_on(monkeypatch):
    """A cell that fails is a result with its error and stage, and the next cell still runs. The failure here: a
    fractional kind let through the kind check, which the static cache then refuses."""
    import torch

    import compactkv.bench.e2e as e2e

    class Args:
        steps, warmup, chunk_tokens = 2, 2, 64

    model, shape = e2e.build_model(True, torch.device("cpu"))
    monkeypatch.setattr(e2e, "GRAPH_KINDS", e2e.GRAPH_KINDS + ("turbo3.5",))
    bad = e2e.run_graph_cell(model, shape, "turbo3.5", 1, 16, "synthetic", Args, torch.device("cpu"))
    assert bad["status"] == "error" and "fractional" in bad["error"] and bad["stage"] == "fill"
    good = e2e.run_graph_cell(model, shape, "turbo4", 1, 16, "synthetic", Args, torch.device("cpu"))
    assert good["status"] == "ok" and good["tokens_held"] == 16 + 2 + 2


def test_padded_batch_cells_pass_a_mask_to_every_step(tmp_path, monkeypatch):
    """--pad: each decode step of a left-padded batch carries its attention mask (row i of B padded by
    pad * i // (B - 1)), on the fp16 side and to compactkv's attention (which gets a 4D mask masking those keys)."""
    import compactkv.attention.interface as interface
    from compactkv.bench.e2e import pad_mask
    m = pad_mask(3, 10, 4, "cpu")
    assert m.tolist() == [[1] * 10, [0, 0] + [1] * 8, [0] * 4 + [1] * 6]
    seen = []
    real = interface.attend
    monkeypatch.setattr(interface, "attend", lambda layer, q, mask, *a, **k: seen.append(mask) or real(layer, q, mask,
                                                                                                     *a, **k))
    rc, info = run(tmp_path, "--batches", "3", "--contexts=", "--synthetic-contexts", "48", "--kinds", "f16,turbo4",
                   "--pad", "20")
    assert rc == 0 and [c["status"] for c in info["cells"]] == ["ok", "ok"]
    assert all(c["pad"] == 20 for c in info["cells"])
    assert len(seen) == 2 * (2 + 3)  # 2 layers x (warm-up + timed steps), each with its mask
    for x in seen:  # bool keep-mask or float additive: row 2's first 20 keys off, row 0's on
        keep = x if x.dtype == torch.bool else x == 0
        assert not bool(keep[2, ..., :20].any()) and bool(keep[2, ..., 20:].all()) and bool(keep[0].all())


def test_padded_batch_graph_cells_record_the_padding_in_every_static_layer(tmp_path, monkeypatch):
    """--graphs --pad: after the fill every static layer holds the padding (row i's first pad * i // (B - 1) slots
    -inf), so each step (captured ones too) hides it; f16-nomask, whose steps take no mask, is an error cell that
    says why, and the run goes on."""
    import compactkv.engine.graphs as graphs
    caches = []
    real = graphs.GreedyStepGraph.__init__

    def spy(self, model, cache, *a, **k):
        caches.append(cache)
        real(self, model, cache, *a, **k)
    monkeypatch.setattr(graphs.GreedyStepGraph, "__init__", spy)
    rc, info = run(tmp_path, "--graphs", "--batches", "3", "--contexts=", "--synthetic-contexts", "48", "--kinds",
                   "f16,turbo4,f16-nomask", "--pad", "20")
    assert rc == 0 and [c["status"] for c in info["cells"]] == ["ok", "ok", "error"]
    assert "exact_mask=False" in info["cells"][2]["error"]
    assert all(c["pad"] == 20 for c in info["cells"][:2]) and len(caches) == 2
    for cache in caches:
        for layer in cache.layers:
            assert bool(layer.pad_bias[2, :20].eq(float("-inf")).all()) and bool(layer.pad_bias[2, 20:].eq(0).all())
            assert bool(layer.pad_bias[1, :10].eq(float("-inf")).all()) and bool(layer.pad_bias[0].eq(0).all())


@pytest.mark.parametrize("extra, says", [
    (["--pad", "40"], "--pad 40: the padding must leave tokens to attend"),
    (["--graphs", "--pad", "40"], "--pad 40: the padding must leave tokens to attend"),
])
def test_pad_refusals(tmp_path, capsys, extra, says):
    rc, _ = run(tmp_path, "--batches", "2", "--contexts", "40", "--kinds", "f16", *extra)
    out = capsys.readouterr()
    assert rc == 2 and says in out.err and "model built" not in out.out  # refused before building the model
