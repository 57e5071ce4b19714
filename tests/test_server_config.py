"""Server configuration: precedence flag > env > profile > default, the example profile, bad values, bad flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from compactkv import cli
from compactkv.server.config import FIELDS, GenerationDefaults, ServerConfig, build_config, load_profile

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "profile.yaml"


def test_example_profile_loads_and_matches_the_defaults():
    cfg = build_config({}, {}, load_profile(EXAMPLE))
    assert cfg.k == cfg.v == "turbo4" and cfg.host == "127.0.0.1" and cfg.port == 11434
    assert cfg.alias == "smollm2-135m-instruct" and cfg.defaults == GenerationDefaults()
    assert cfg == ServerConfig(alias="smollm2-135m-instruct")


def test_precedence_flag_over_env_over_profile_over_default(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("port: 9000\nk: q8_0\nv: turbo3\ncontext_length: 2048\nkv: {policy: q8-edges}\n"
                       "defaults: {temperature: 0.2}\n")
    data = load_profile(profile)
    env = {"COMPACTKV_PORT": "9100", "COMPACTKV_V": "turbo2"}
    cfg = build_config({"port": 9200}, env, data)
    assert (cfg.port, cfg.k, cfg.v, cfg.context_length, cfg.policy) == (9200, "q8_0", "turbo2", 2048, "q8-edges")
    assert cfg.defaults.temperature == 0.2 and cfg.defaults.top_k == 40
    assert build_config({}, env, data).port == 9100
    assert build_config({}, {}, data).port == 9000
    assert build_config({}, {}, {}).port == 11434


def test_explicit_policy_lists_are_checked():
    cfg = ServerConfig(policy=[["q8_0", "q8_0"], ["turbo4", "turbo3"]])
    assert cfg.policy == [("q8_0", "q8_0"), ("turbo4", "turbo3")]
    with pytest.raises(ValueError, match="accepted: f16"):
        ServerConfig(policy=[["q8_0", "turbo7"]])


@pytest.mark.parametrize("text, match", [
    ("colour: blue\n", "unknown profile keys"), ("- a\n- b\n", "mapping"), ("port: [\n", "not valid YAML"),
    ("port: 70000\n", "port"), ("k: turbo9\n", "accepted: f16"), ("parallel: 0\n", "parallel"),
    ("defaults: {temperature: -1}\n", "temperature"), ("defaults: {colour: 1}\n", "defaults"),
    ("policy: sideways\n", "accepted: uniform"),
])
def test_bad_profiles_raise_value_errors_naming_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        build_config({}, {}, load_profile(path))


def test_bad_environment_values_name_the_variable():
    with pytest.raises(ValueError, match="COMPACTKV_PORT"):
        build_config({}, {"COMPACTKV_PORT": "eighty"}, {})
    assert set(FIELDS) >= {"model", "k", "v", "policy", "context_length", "host", "port", "api_key"}


@pytest.mark.parametrize("args, match", [
    (["--k", "turbo9"], "unknown KV kind"), (["--port", "x"], "invalid int"),
    (["--config", "/nonexistent.yaml"], "cannot read profile"), (["--policy", "q8_0:nope"], "accepted"),
    (["--parallel", "0"], "positive integer"),
])
def test_serve_rejects_bad_flags_with_one_line_and_status_2(args, match, capsys):
    try:
        rc = cli.main(["serve", *args])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("compactkv serve: error:") and match in lines[0], err


def test_the_cli_and_engine_do_not_import_the_web_stack():
    import subprocess
    import sys

    code = ("import sys, compactkv.cli as c, compactkv.engine; c.build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'sse_starlette', 'prometheus_client') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_graphs_switch_from_flag_env_and_profile_with_its_kinds_checked(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("graphs: true\nkv: {k: turbo3, v: turbo3}\n")
    assert build_config({}, {}, load_profile(profile)).graphs is True
    assert build_config({}, {"COMPACTKV_GRAPHS": "off"}, load_profile(profile)).graphs is False
    assert build_config({"graphs": True}, {"COMPACTKV_GRAPHS": "0"}, {}).graphs is True
    assert build_config({}, {"COMPACTKV_GRAPHS": "Yes"}, {}).graphs is True
    assert build_config({}, {}, {}).graphs is False
    with pytest.raises(ValueError, match=r"COMPACTKV_GRAPHS='maybe' is not a valid graphs \(1/true/yes/on"):
        build_config({}, {"COMPACTKV_GRAPHS": "maybe"}, {})
    with pytest.raises(ValueError, match="graphs must be true or false"):
        ServerConfig(graphs="yes")
    with pytest.raises(ValueError, match="graphs takes K/V kinds turbo4, turbo3, turbo2, f16"):
        ServerConfig(graphs=True, k="q8_0")
    with pytest.raises(ValueError, match="both f16 or both compressed"):
        ServerConfig(graphs=True, k="f16", v="turbo4")
    with pytest.raises(ValueError, match="graphs takes one K/V pair, not a per-layer policy"):
        ServerConfig(graphs=True, policy="q8-edges")


def test_compile_switch_needs_graphs():
    assert build_config({}, {"COMPACTKV_GRAPHS": "on", "COMPACTKV_COMPILE": "yes"}, {}).compile is True
    assert build_config({"graphs": True}, {}, {"compile": True}).compile is True
    assert build_config({}, {}, {}).compile is False
    with pytest.raises(ValueError, match="compile compiles the graphed decode step: it needs graphs"):
        build_config({}, {"COMPACTKV_COMPILE": "1"}, {})
    with pytest.raises(ValueError, match=r"COMPACTKV_COMPILE='fast' is not a valid compile \(1/true/yes/on"):
        build_config({}, {"COMPACTKV_COMPILE": "fast"}, {})
    with pytest.raises(ValueError, match="compile must be true or false"):
        ServerConfig(graphs=True, compile="yes")


def test_serve_refuses_graphs_with_a_kind_it_cannot_capture(capsys):
    try:
        rc = cli.main(["serve", "--graphs", "--k", "turbo3.5", "--v", "turbo3.5"])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "graphs takes K/V kinds" in err[0], err


def test_warmup_is_on_by_default_and_can_be_turned_off():
    assert build_config({}, {}, {}).warmup is True
    assert build_config({}, {"COMPACTKV_WARMUP": "0"}, {}).warmup is False
    assert build_config({"warmup": False}, {"COMPACTKV_WARMUP": "1"}, {}).warmup is False
    with pytest.raises(ValueError, match="warmup must be true or false"):
        ServerConfig(warmup=1)
    from compactkv.commands.serve import config_from_args
    parser = cli.build_parser()
    assert config_from_args(parser.parse_args(["serve", "--no-warmup"])).warmup is False
    assert config_from_args(parser.parse_args(["serve"])).warmup is True
