"""User input (sizes, contexts, configs), memory `auto`, and the `compactkv plan` command end to end."""

import json

import pytest

from compactkv.cli import main
from compactkv.plan import parse_config, parse_context, parse_memory
from compactkv.plan import units


@pytest.mark.parametrize("text, expected", [
    ("32GiB", 32 * 2**30), ("24GB", 24 * 10**9), ("16G", 16 * 2**30), ("16g", 16 * 2**30),
    ("512 MiB", 512 * 2**20), ("1.5TiB", 3 * 2**39), ("100B", 100),
])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text, message", [
    ("32XB", "bad memory size"), ("32", "no unit"), ("-1GiB", "bad memory size"), ("", "bad memory size"),
    ("auto", "bad memory size"), ("0GiB", "positive"), ("lots", "bad memory size"),
])
def test_bad_memory_strings(text, message):
    with pytest.raises(ValueError, match=message):
        parse_memory(text)


def test_parse_context():
    assert parse_context("131072") == parse_context("128K") == parse_context("128k") == 131072
    assert parse_context("1M") == 2**20 and parse_context(4096) == 4096
    for bad in ("0", "1.5", "12Q", "-5", "many"):
        with pytest.raises(ValueError, match="context"):
            parse_context(bad)


def test_config_spellings():
    assert parse_config("turbo4").name == "turbo4"
    assert parse_config("q8_0/turbo4") == parse_config("q8_0/turbo4")
    assert (parse_config("q8_0/turbo4").k, parse_config("q8_0/turbo4").v) == ("q8_0", "turbo4")
    assert parse_config("turbo3/turbo3").name == "turbo3"
    assert parse_config("1:turbo3").name == "q8-edges:turbo3"
    assert parse_config("q8-edges", k="turbo2").name == "q8-edges:turbo2"
    assert parse_config("v4-edges:q8_0") == parse_config("5:q8_0/f16")  # V is fixed by the preset
    assert parse_config("uniform:q8_0/turbo3").name == "q8_0/turbo3"


@pytest.mark.parametrize("text, message", [
    ("turbo5", "unknown KV kind 'turbo5'.*accepted kinds: f16"), ("q8_0/turbo4/f16", "K/V"),
    ("q8_0/", "K/V"), ("fancy:turbo4", "unknown layer policy preset 'fancy'"), ("9", "unknown layer policy"),
    ("", "empty KV config"),
])
def test_bad_configs(text, message):
    with pytest.raises(ValueError, match=message):
        parse_config(text)


def test_meminfo_and_auto(tmp_path, monkeypatch):
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\n")
    assert units.meminfo_available(fake) == 20_000_000 * 1024
    fake.write_text("MemTotal: 1 kB\n")
    with pytest.raises(ValueError, match="MemAvailable"):
        units.meminfo_available(fake)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # /proc/meminfo changes between two reads: point detect_memory at a fixed file instead of comparing live values.
    fake.write_text("MemTotal:       32000000 kB\nMemAvailable:   12345678 kB\n")
    read = units.meminfo_available
    monkeypatch.setattr(units, "meminfo_available", lambda path=fake: read(path))
    memory, device, how = units.detect_memory()
    assert device == "cpu" and "MemAvailable" in how and memory == 12345678 * 1024
    monkeypatch.setattr(units, "meminfo_available", lambda path=tmp_path / "missing": read(path))
    with pytest.raises(ValueError, match="--memory SIZE"):
        units.detect_memory()


def test_cli_plan_json_and_table(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = main(["plan", "--model", "qwen3-14b", "--memory", "24GiB", "--context", "64K", "--weights", "q4_k_m",
               "--k", "q8_0", "--v", "turbo4", "--fp16-tokens", "0", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Qwen3-14B" in text and "q8_0/turbo4 *" in text and "recommended:" in text
    plan = json.loads(out.read_text())
    rows = {r["config"]: r for r in plan["rows"]}
    assert rows["f16"]["kv_bytes"] == 10_240 * 2**20 and rows["turbo4"]["kv_bytes"] == 2_640 * 2**20
    assert plan["memory_bytes"] == 24 * 2**30 and plan["context"] == 65_536
    assert all(r["total_bytes"] == r["weights_bytes"] + r["kv_bytes"] + r["overhead_bytes"] for r in plan["rows"])
    assert plan["recommendation"] in rows and rows[plan["recommendation"]]["fits"]


def test_cli_counts_the_cache_default_fp16_window(tmp_path):
    from compactkv.cache.config import CacheConfig

    window = CacheConfig().sink_tokens + CacheConfig().residual_length
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", "qwen3-14b", "--memory", "24GiB", "--context", "64K", "--configs", "turbo4,f16",
                 "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["fp16_tokens"] == window
    turbo4, f16 = (r["kv_bytes"] for r in plan["rows"])
    assert f16 == 10_240 * 2**20  # f16 rows are f16 either way
    assert turbo4 == 2_640 * 2**20 + window * 40 * 8 * 2 * (256 - 66)


def test_cli_batch_and_configs(tmp_path):
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", "gemma-3-12b", "--memory", "64GiB", "--context", "32K", "--batch", "3",
                 "--configs", "f16,turbo3", "--policy", "6", "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert [r["config"] for r in plan["rows"]] == ["f16", "turbo3", "v4-last8:turbo4"]
    per_seq = (8 * 32_768 + 40 * 1024) * 8 * 256 * 2 * 2  # 8 global + 40 sliding layers, f16
    assert plan["rows"][0]["kv_bytes"] == 3 * per_seq and plan["n_sliding"] == 40


@pytest.mark.parametrize("argv, message", [
    (["--memory", "32XB"], "bad memory size"), (["--k", "turbo9"], "unknown KV kind"),
    (["--policy", "fancy"], "unknown layer policy"), (["--model", "llama-9-1b"], "not a file, folder or built-in"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(["plan", "--model", "qwen3-8b", "--memory", "8GiB", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compactkv plan: error:") and message in err and "Traceback" not in err
