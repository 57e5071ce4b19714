"""`compactkv run`: bad flags fail fast with one line; on the real default model it streams and reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from compactkv import cli
from test_server_support import needs_model


def run_cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "compactkv.cli", "run", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, env, match", [
    (["hi", "--k", "turbo9"], None, "unknown KV kind 'turbo9'; accepted: f16"),
    (["hi", "--v", ""], None, "unknown KV kind"),
    (["hi", "--max-new-tokens", "0"], None, "positive integer"),
    (["hi", "--policy", "sideways"], None, "accepted: uniform"),
    (["hi", "--policy", "q8_0:q9"], None, "unknown KV kind"),
    (["hi", "--device", "tpu"], None, "accepted: auto, cpu"),
    (["hi", "--model", "/nonexistent/model.gguf"], None, "no such file"),
    (["hi"], {"COMPACTKV_MAX_NEW_TOKENS": "many"}, "max-new-tokens"),
    (["hi"], {"COMPACTKV_K": "q4"}, "unknown KV kind 'q4'"),
    ([], None, "prompt"),
])
def test_bad_flags_fail_with_one_line_and_status_2(args, env, match, monkeypatch, capsys):
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    try:
        rc = cli.main(["run", *args])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("compactkv run: error:") and match in lines[0], err


@needs_model
@pytest.mark.slow
def test_run_streams_an_answer_and_reports_speed_and_kv_bytes():
    text = " ".join(f"Fact {i}: the number {i} comes after {i - 1}." for i in range(1, 20))
    done = run_cli(f"{text}\nWhich number comes after 7?", "--max-new-tokens", "8", "--temperature", "0",
                   env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    report = done.stderr[done.stderr.index("--- "):]
    assert "K turbo4 / V turbo4" in report and "turboquant cache" in report
    prompt_n = int(re.search(r"prompt\s+(\d+) tok\s+[\d.]+ s\s+[\d.]+ tok/s", report).group(1))
    assert prompt_n > 200, report  # longer than the fp16 recent window, so some rows are compressed
    assert re.search(r"decode\s+\d+ tok\s+[\d.]+ s\s+[\d.]+ tok/s", report), report
    held, fp16 = re.search(r"([\d.]+) MB held vs ([\d.]+) MB fp16", report).groups()
    assert float(held) < float(fp16)
    ratio = float(re.search(r"compressed rows [\d.]+ MB vs [\d.]+ MB fp16 \(([\d.]+)x", report).group(1))
    assert 3.0 < ratio < 8.0, report
