"""Tiny random-weight models of each supported architecture, built locally: the compressed cache plugs in,
f16 storage reproduces DynamicCache, compressed kinds generate finite logits, sliding windows are honoured."""

import pytest
import torch
import transformers as tf

import compactkv
from compactkv.cache import TurboQuantCache
from compactkv.engine.caches import cache_kwarg

ARCHS = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(head_dim=64)),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(head_dim=64, sliding_window=None)),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict()),
    "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(head_dim=128)),
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(pad_token_id=0)),
    "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, dict(head_dim=256, sliding_window=8)),
    "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(head_dim=256, sliding_window=8)),
}
HIDDEN = {"phi3": 96 * 4, "qwen2": 64 * 4}  # phi3: head_dim 96 = hidden / heads; qwen2: head_dim 64


def build(arch: str):
    cfg_cls, model_cls, extra = ARCHS[arch]
    cfg = cfg_cls(vocab_size=256, hidden_size=HIDDEN.get(arch, 128), intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **extra)
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    compactkv.attach(model)
    return model


def _forward(model, ids, cache):
    return model(ids, use_cache=True, **{cache_kwarg(model): cache}).logits


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_f16_storage_matches_dynamic_cache_and_turbo_runs(arch):
    model = build(arch)
    ids = torch.randint(0, 256, (2, 21))
    steps = torch.randint(0, 256, (2, 4))
    ref_cache = tf.DynamicCache(config=model.config)
    ref = [_forward(model, ids, ref_cache)] + [_forward(model, steps[:, i:i + 1], ref_cache) for i in range(4)]
    for kind, tol in (("f16", 2e-3), ("turbo4", None), ("turbo2.5", None), ("turbo3+qjl", None)):
        cache = TurboQuantCache(model.config, k=kind, v=kind)
        out = [_forward(model, ids, cache)] + [_forward(model, steps[:, i:i + 1], cache) for i in range(4)]
        for o, r in zip(out, ref):
            assert torch.isfinite(o).all()
            if tol is not None:
                torch.testing.assert_close(o, r, rtol=tol, atol=tol)
        assert cache.get_seq_length() == 25


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
@torch.no_grad()
def test_sliding_layers_keep_only_the_window(arch):
    model = build(arch)
    cache = TurboQuantCache(model.config, k="turbo4", v="turbo4", chunk_tokens=4)
    ids = torch.randint(0, 256, (1, 40))
    ref_cache = tf.DynamicCache(config=model.config)
    _forward(model, ids, cache)
    _forward(model, ids, ref_cache)
    for i in range(6):
        tok = torch.randint(0, 256, (1, 1))
        out, ref = _forward(model, tok, cache), _forward(model, tok, ref_cache)
        assert torch.isfinite(out).all()
    sliding = [layer for layer in cache.layers if layer.is_sliding]
    assert sliding and all(layer.stored_length() < 8 + 4 for layer in sliding)
    assert all(layer.stored_length() == 46 for layer in cache.layers if not layer.is_sliding)
    f16 = TurboQuantCache(model.config, k="f16", v="f16", chunk_tokens=4)
    ref_cache = tf.DynamicCache(config=model.config)
    for chunk in (ids[:, :30], ids[:, 30:31], ids[:, 31:32], ids[:, 32:40]):
        torch.testing.assert_close(_forward(model, chunk, f16), _forward(model, chunk, ref_cache),
                                   rtol=2e-3, atol=2e-3)


@torch.no_grad()
def test_generate_with_cache_argument_and_policy():
    model = build("llama")
    ids = torch.randint(0, 256, (1, 12))
    cache = TurboQuantCache(model.config, k="q8_0", v="turbo4", policy="uniform", residual_length=4)
    out = model.generate(ids, **{cache_kwarg(model): cache}, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 18) and cache.get_seq_length() == 17
