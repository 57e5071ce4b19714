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
