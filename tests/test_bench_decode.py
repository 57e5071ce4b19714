"""`compactkv bench decode` timing loop on a tiny random Llama (no download): fills the cache to the context."""

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import compactkv
from compactkv.bench.decode import table, time_decode


def test_time_decode_fills_cache_and_reports():
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    model = LlamaForCausalLM(cfg).eval()
    compactkv.attach(model)
    ids = torch.randint(0, 64, (1, 40))
    rows = []
    for kind, cache in (("f16 (DynamicCache)", DynamicCache(config=cfg)),
                        ("turbo4", compactkv.TurboQuantCache(cfg, residual_length=8))):
        r = time_decode(model, cache, ids, steps=3, chunk=16)
        assert cache.get_seq_length() == 43
        assert r["tok_s"] > 0 and r["prefill_tok_s"] > 0
        r.update(context=40, kind=kind, kv_bytes=0, x_f16=1.0)
        rows.append(r)
    text = table(rows, "tiny")
    assert "turbo4" in text and "f16 (DynamicCache)" in text


def test_reports_name_the_commit(monkeypatch):
    """Every benchmark report names its tree's commit: $COMPACTKV_COMMIT first (a copy whose git metadata is stale,
    e.g. the GPU device's), else git's HEAD; the codec, kernel, e2e, serve and ceiling reports share the rule."""
    import subprocess
    from compactkv.bench import ceiling, kernels, provenance
    from compactkv.bench.codec import machine
    monkeypatch.setenv("COMPACTKV_COMMIT", "feed123")
    assert provenance.commit() == kernels.commit() == ceiling._commit() == machine()["commit"] == "feed123"
    monkeypatch.delenv("COMPACTKV_COMMIT")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:  # a checkout (CI's fresh clone is one)
        assert provenance.commit() == head


def test_kernel_table_reads_a_recorded_run():
    """`compactkv bench kernels`' table from a run's JSON (docs/perf/kernels-s13-h200.json, H200): the main columns,
    the kernel each replaced ('before' lines, ratios from graph replays where both were captured) and the planar
    lines."""
    import json
    from pathlib import Path
    from compactkv.bench.kernels import table as kernel_table
    info = json.loads((Path(__file__).resolve().parents[1] / "docs/perf/kernels-s13-h200.json").read_text())
    text = kernel_table(info, ["turbo4", "turbo3", "turbo2"])
    r = info["decode"][2]["kinds"]["turbo4"]  # B=8 T=32K
    assert (info["decode"][2]["batch"], info["decode"][2]["context"]) == (8, 32768)
    ratio = r["rowkernel_graph_us"] / r["graph_us"]
    assert f"B=8 T=32768 turbo4: {r['rowkernel_us']:.1f} us" in text and f"= {ratio:.2f}x faster (graphs)" in text
    assert ratio > 1.5  # the measured 251.0 vs 129.9 us
    assert text.count("before (row kernel: ") == 12 and text.count("planar (table kernel") == 12


def test_encode_lines_read_a_recorded_run():
    """The encode table (bench kernels and scripts/encode_bench.py) from docs/perf/encode-half-s35-h200.json (H200,
    the half-row, row and lanes kernels): one line per kind and configuration, GB/s as a share of that run's copy
    bandwidth, no byte mismatch flagged."""
    import json
    from pathlib import Path
    from compactkv.bench.kernels import ENCODE_CONFIGS, encode_lines
    info = json.loads((Path(__file__).resolve().parents[1] / "docs/perf/encode-half-s35-h200.json").read_text())
    lines = encode_lines(info)
    assert len(lines) == 3 * len(ENCODE_CONFIGS) == len(info["encode"])
    e = info["encode"][0]
    assert lines[0].startswith(f"encode {e['kind']} {e['kernel']} kernel") and \
        f"{e['gbps']:.0f} GB/s ({100 * e['gbps'] / info['copy_gbps']:.0f}% of copy)" in lines[0]
    assert not any("BYTES DIFFER" in line for line in lines)


def test_kernel_bench_names_what_the_dynamic_cache_runs():
    import pytest
    pytest.importorskip("triton", reason="the kernel choice is asked of the Triton backend")
    from compactkv.bench.kernels import kernel_name, rows_name
    assert rows_name("turbo4") and rows_name("turbo4", 64) and not rows_name("turbo2", 64) and not rows_name("q8_0")
    assert kernel_name("turbo4") == "table" and kernel_name("turbo4", rows=False) == "fast"


def test_shape_lists_parse_or_name_what_is_accepted():
    """`bench.kernels.parse_shapes`, the --shapes of decode_sweep / stream_bench / phase_clocks: BxT pairs, or a
    ValueError naming the form; each script turns it into an argparse error (exit 2, no traceback; the two that
    import Triton at start only where it is installed)."""
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest
    from compactkv.bench.kernels import parse_shapes
    assert parse_shapes("8x32768,1x131072") == [(8, 32768), (1, 131072)]
    for bad in ("8x", "0x5", "abc", "8x4x2", "", "8x-1"):
        with pytest.raises(ValueError, match="BxT pairs of positive integers"):
            parse_shapes(bad)
    root = Path(__file__).resolve().parents[1]
    scripts = ["phase_clocks.py"]
    if importlib.util.find_spec("triton") is not None:
        scripts += ["decode_sweep.py", "stream_bench.py"]
    for script in scripts:
        run = subprocess.run([sys.executable, str(root / "scripts" / script), "--shapes", "8x"], capture_output=True,
                             text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
        assert run.returncode == 2 and "--shapes: expected comma-separated BxT pairs" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def test_kernel_decode_step_refuses_a_padding_it_cannot_run():
    """`bench.kernels.decode_step(pad=N)` (a left-padded batch's mask): refused with the planar kernels, which take no
    mask, and where the padding would leave a batch row nothing to attend, before anything is launched."""
    import pytest
    pytest.importorskip("triton")  # (decode_step imports the launchers; the core install has no triton)
    from compactkv.bench.kernels import decode_step
    with pytest.raises(ValueError, match="planar kernels .* take no attention mask"):
        decode_step("turbo4", 2, 64, "cpu", gluon=True, pad=8)
    for pad in (64, 100, -1):
        with pytest.raises(ValueError, match=r"the padding must leave tokens to attend, 0 < pad < 64"):
            decode_step("turbo4", 2, 64, "cpu", pad=pad)
