"""The engine's CUDA-graph decode (`Generation(graphs=True)`, `compactkv run --graphs`) on a tiny random Llama.

CPU: the logits step (`LogitsStepGraph`) run eagerly gives the tokens of an ordinary generation over the same kind
of static cache, and bad set-ups are refused with a clear error before anything runs. CUDA (skipped elsewhere):
replayed steps give the eager generation's tokens, greedy and sampled, compressed and fp16.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compactkv.cli import main as cli_main
from compactkv.engine import Generation, SamplingConfig, make_cache, stream_generate
from compactkv.engine.graphs import LogitsStepGraph, static_cache
from test_engine_support import VOCAB, tiny_lm

PROMPT = list(range(5, 45))


def _generate(lm, cache, graphs: bool, **sampling) -> Generation:
    gen = Generation(lm, PROMPT, SamplingConfig(**{"max_new_tokens": 12, **sampling}), cache, graphs=graphs,
                     prefill_chunk=16)
    list(stream_generate(gen))
    return gen


@pytest.mark.parametrize("kind", ["turbo4", "f16"])
def test_logits_step_matches_generation_over_a_static_cache(kind):
    lm = tiny_lm(eos=False)
    want = _generate(lm, static_cache(lm.model, kind, 1, 64, "cpu"), graphs=False).output_ids
    cache = static_cache(lm.model, kind, 1, 64, "cpu")
    with torch.inference_mode():
        for s in range(0, len(PROMPT), 16):
            out = lm.model(input_ids=torch.tensor([PROMPT[s:s + 16]]), past_key_values=cache, use_cache=True)
        got = [int(out.logits[0, -1].argmax())]
        step = LogitsStepGraph(lm.model, cache, torch.tensor([[got[0]]]))
        while len(got) < len(want):
            logits = step.step()
            assert logits is step.logits and logits.dtype == torch.float32 and logits.shape == (1, VOCAB)
            got.append(int(logits[0].argmax()))
            step.feed(got[-1])
    assert got == want
    assert cache.get_seq_length() == len(PROMPT) + len(want) - 1


def test_graphs_refuses_what_it_cannot_run():
    lm = tiny_lm()
    with pytest.raises(ValueError, match="needs a static cache"):
        Generation(lm, PROMPT, SamplingConfig(), make_cache(lm.model), graphs=True)
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        Generation(lm, PROMPT, SamplingConfig(), static_cache(lm.model, "turbo4", 1, 512, "cpu"), graphs=True)


@pytest.mark.parametrize("flags, message", [
    (["--k", "q8_0"], "--graphs takes K/V kinds turbo4, turbo3, turbo2, f16"),
    (["--k", "f16", "--v", "turbo4"], "both f16 or both compressed"),
    (["--policy", "1"], "--graphs takes one K/V pair, not a per-layer policy"),
])
def test_run_graphs_flags_are_checked_before_loading(flags, message, capsys):
    # --model points nowhere: the flags must be refused before any model is looked for
    assert cli_main(["run", "hi", "--graphs", "--model", "/nonexistent", *flags]) == 2
    assert message in capsys.readouterr().err


def test_compile_is_refused_without_graphs_before_loading(capsys, monkeypatch):
    """`run --compile` (or COMPACTKV_COMPILE) compiles the graphed step: without --graphs it is refused before the
    model is looked for; so are the engine's and the scheduler's compile without graphs."""
    from compactkv.engine.scheduler import EngineConfig
    monkeypatch.delenv("COMPACTKV_GRAPHS", raising=False)
    assert cli_main(["run", "hi", "--compile", "--model", "/nonexistent"]) == 2
    assert "--compile (COMPACTKV_COMPILE) compiles the graphed decode step: add --graphs" in capsys.readouterr().err
    monkeypatch.setenv("COMPACTKV_COMPILE", "on")
    assert cli_main(["run", "hi", "--model", "/nonexistent"]) == 2
    assert "add --graphs" in capsys.readouterr().err
    monkeypatch.setenv("COMPACTKV_COMPILE", "sometimes")
    assert cli_main(["run", "hi", "--graphs", "--model", "/nonexistent"]) == 2
    assert "COMPACTKV_COMPILE='sometimes' is not a valid switch" in capsys.readouterr().err
    with pytest.raises(ValueError, match="compile compiles the graphed decode step: it needs graphs=True"):
        EngineConfig(compile=True)


def test_env_switches_share_one_parser(monkeypatch):
    """core.switches.env_switch: what `run` (COMPACTKV_GRAPHS) and the Triton backend (COMPACTKV_FUSE_SINKS, default
    on) read; unset or empty gives the default, a bad value is refused by name."""
    from compactkv.core.switches import env_switch
    monkeypatch.delenv("COMPACTKV_FUSE_SINKS", raising=False)
    assert env_switch("FUSE_SINKS", default=True) is True
    for text, want in (("", True), ("0", False), (" Off ", False), ("false", False), ("YES", True)):
        monkeypatch.setenv("COMPACTKV_FUSE_SINKS", text)
        assert env_switch("FUSE_SINKS", default=True) is want
    monkeypatch.setenv("COMPACTKV_FUSE_SINKS", "2")
    with pytest.raises(ValueError, match=r"COMPACTKV_FUSE_SINKS='2' is not a valid switch \(1/true/yes/on"):
        env_switch("FUSE_SINKS", default=True)


def test_run_reads_compactkv_graphs_as_serve_does(capsys, monkeypatch):
    """COMPACTKV_GRAPHS is an on/off switch like serve's (false/no/off/0 mean off); a value that is neither is
    refused by name before the model loads."""
    monkeypatch.setenv("COMPACTKV_GRAPHS", "maybe")
    assert cli_main(["run", "hi", "--model", "/nonexistent"]) == 2
    assert "COMPACTKV_GRAPHS='maybe' is not a valid switch (1/true/yes/on" in capsys.readouterr().err
    monkeypatch.setenv("COMPACTKV_GRAPHS", "on")  # on: the graph kinds are checked before loading
    assert cli_main(["run", "hi", "--model", "/nonexistent", "--k", "q8_0"]) == 2
    assert "--graphs takes K/V kinds" in capsys.readouterr().err
    monkeypatch.setenv("COMPACTKV_GRAPHS", "false")  # off: q8_0 is fine, the missing model is what fails
    assert cli_main(["run", "hi", "--model", "/nonexistent", "--k", "q8_0"]) != 0
    assert "--graphs takes" not in capsys.readouterr().err


def _cuda_lm():
    lm = tiny_lm(eos=False)
    lm.model.to("cuda")
    return dataclasses.replace(lm, device="cuda")


@pytest.mark.parametrize("kind", ["turbo4", "turbo2", "f16"])
@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_p": 0.9, "seed": 3}], ids=["greedy", "sampled"])
def test_graph_generation_matches_eager_on_cuda(kind, sampling):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (CUDA graphs)")
    pytest.importorskip("triton", reason="the static compressed cache captures with the Triton encoder")
    lm = _cuda_lm()
    eager = _generate(lm, static_cache(lm.model, kind, 1, 64, "cuda"), graphs=False, **sampling)
    graphed = _generate(lm, static_cache(lm.model, kind, 1, 64, "cuda"), graphs=True, **sampling)
    assert graphed._graph is not None and graphed._graph.graph is not None  # captured, then replayed
    assert graphed.output_ids == eager.output_ids and len(eager.output_ids) == 12
    assert graphed.cache.get_seq_length() == eager.cache.get_seq_length() == len(PROMPT) + 11
    with pytest.raises(ValueError, match="this prompt and max_new_tokens need 52"):
        Generation(lm, PROMPT, SamplingConfig(max_new_tokens=12), static_cache(lm.model, kind, 1, 51, "cuda"),
                   graphs=True)


@pytest.mark.parametrize("kind", ["turbo4", "turbo3"])
def test_graph_generation_with_scaled_keys_matches_eager_and_the_cpu_cache_on_cuda(kind):
    """The static cache's query-aware key scaling (off by default until this passes on a GPU:
    engine.graphs.STATIC_SCALE_KEYS): the first update's queries fix the scale (observe), every later key is
    encoded times it inside the Triton kernel; graph replay = eager, and the stored rows of the prompt equal
    those the CPU cache (Codec.encode of the same keys) writes."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (CUDA graphs)")
    pytest.importorskip("triton", reason="the static compressed cache captures with the Triton encoder")
    lm = _cuda_lm()
    runs = []
    for graphs in (False, True):  # the whole prompt in one chunk: its 36 compressed tokens fix mean and scale
        gen = Generation(lm, PROMPT, SamplingConfig(max_new_tokens=12),
                         static_cache(lm.model, kind, 1, 64, "cuda", scale_keys=True), graphs=graphs,
                         prefill_chunk=64)
        list(stream_generate(gen))
        runs.append(gen)
    assert runs[1].output_ids == runs[0].output_ids and len(runs[0].output_ids) == 12
    for layer in runs[1].cache.layers:
        assert layer.k_scale is not None and layer.k_scale.shape == (1, 64) and layer.calibrated
    # the kernel's keys against the CPU's for the same center and scale
    layer = runs[1].cache.layers[0]
    x = torch.randn(1, 1, 5, 64, device="cuda", dtype=torch.bfloat16)
    from compactkv.attention.triton.encode import encode_rows
    from compactkv.cache.static import centered_scaled
    got = encode_rows(layer.k_codec, x, center=layer.key_center, scale=layer.k_scale).cpu()
    want = layer.k_codec.encode(centered_scaled(x.cpu(), layer.key_center.cpu(), layer.k_scale.cpu()))
    assert torch.equal(got, want)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_p": 0.9, "seed": 3}], ids=["greedy", "sampled"])
def test_eager_generation_on_cuda_over_compressed_rows(sampling, monkeypatch):
    """`compactkv run` without --graphs on a GPU: the dynamic cache under the engine's inference mode, a prompt long
    enough that rows are compressed, so decode steps read them with the table kernel (its query map was once
    cached by version counter, which inference tensors lack), and sampling with the request's generator."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("triton", reason="the kernels need Triton")
    from compactkv.attention.triton import backend
    calls = []
    real = backend.launch_rows
    monkeypatch.setattr(backend, "launch_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    lm = _cuda_lm()
    prompt = [5 + i % 80 for i in range(300)]
    runs = []
    for _ in range(2):
        gen = Generation(lm, prompt, SamplingConfig(max_new_tokens=12, **sampling), make_cache(lm.model, "turbo4",
                                                                                                "turbo4"))
        list(stream_generate(gen))
        runs.append(gen.output_ids)
    assert len(runs[0]) == 12 and runs[0] == runs[1]  # seeded sampling repeats itself
    assert calls, "the decode steps did not read the compressed rows with the table kernel"


def test_scheduler_with_graphs_refuses_a_cpu_model_and_bad_kinds():
    from compactkv.engine.scheduler import EngineConfig, Scheduler
    with pytest.raises(ValueError, match="graphed decoding needs a CUDA device"):
        Scheduler(tiny_lm(), EngineConfig(graphs=True))
    with pytest.raises(ValueError, match="graphs takes K/V kinds"):
        EngineConfig(k="q8_0", v="q8_0", graphs=True)


@pytest.mark.parametrize("kind", ["turbo4", "f16"])
def test_scheduler_with_graphs_on_cuda_matches_eager_and_reuses_prefixes(kind):
    """`compactkv serve --graphs`: concurrent sequences, each decoding from its own captured graph over a static
    cache of the whole context, give the tokens of eager generations; a finished one's cache is kept as a prefix
    and a later prompt sharing it continues from a copy."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (CUDA graphs)")
    pytest.importorskip("triton", reason="the static compressed cache captures with the Triton encoder")
    from compactkv.engine.scheduler import EngineConfig, Scheduler
    from test_engine_support import Collector
    lm = _cuda_lm()
    prompts = [list(range(s, s + 30)) for s in (3, 13, 23)]
    eager = [_eager(lm, kind, p) for p in prompts]
    want = [g.output_ids for g in eager]
    sched = Scheduler(lm, EngineConfig(k=kind, v=kind, max_context=256, max_active=3, prefill_chunk=8,
                                       graphs=True))
    sinks = [Collector() for _ in prompts]
    for p, sink in zip(prompts, sinks):
        sched.submit(p, SamplingConfig(max_new_tokens=10), sink)
    assert all(s.done.wait(120) for s in sinks)
    assert [s.tokens() for s in sinks] == want
    assert all(s.summary()["finish_reason"] == "length" for s in sinks)
    assert sched.stats()["prefix_entries"] == 3 and sched.stats()["active"] == 0
    longer = prompts[1] + want[1][:-1] + [7, 8, 9]  # the second sequence as stored, then a new turn
    sink = Collector()
    sched.submit(longer, SamplingConfig(max_new_tokens=10), sink)
    assert sink.done.wait(120)
    assert sink.summary()["timings"].cached_tokens == 39  # its 30 prompt tokens and 9 of its 10 answers
    # expected: the eager second sequence's own cache continued eagerly (the same K/V rows as the stored copy)
    assert sink.tokens() == _eager(lm, kind, longer, eager[1].cache, cached=39).output_ids
    sched.close()


def _eager(lm, kind, prompt, cache=None, cached=0):
    cache = cache if cache is not None else static_cache(lm.model, kind, 1, 256, "cuda")
    gen = Generation(lm, prompt, SamplingConfig(max_new_tokens=10), cache, cached_tokens=cached, prefill_chunk=8)
    list(stream_generate(gen))
    return gen
