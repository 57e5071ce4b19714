"""Quality benches: scoring math on hand-computed inputs, chunking, config tokens, NIAH placement, and smoke runs
of ppl / niah / fidelity / prompts / session on a tiny random-weight Llama (no download)."""

import math

import pytest
import torch

from compactkv.bench import fidelity, niah, ppl, prompts, session
from compactkv.bench.common import parse_kv_list, score


class ByteTokenizer:
    """Bytes as token ids: enough tokenizer for the benches."""

    eos_token_id = None

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=True):
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    import compactkv

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=4096)
    model = LlamaForCausalLM(cfg).eval()
    compactkv.attach(model)
    return model, ByteTokenizer()


def test_score_matches_hand_computation():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    ref = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    got = score(logits, ref, torch.tensor([1, 0]))
    # p = [.25,.75], [.5,.5]; ref = [.5,.5], [.75,.25]
    assert got["nll"] == pytest.approx(-math.log(0.75) - math.log(0.5))
    kl1 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl2 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert got["kl"] == pytest.approx(kl1 + kl2, abs=1e-6)
    assert got["top1"] == 1 and got["n"] == 2  # row 2: argmax ties pick index 0 on both sides


def test_rows_and_gate():
    acc = {"f16": {"nll": 2 * math.log(10), "kl": 0, "top1": 2, "n": 2},
           "x": {"nll": 2 * math.log(12), "kl": 0.2, "top1": 1, "n": 2}}
    rows = ppl.rows_from(acc, {"f16": (16.0, 100), "x": (4.25, 27)})
    assert rows[1]["ppl"] == pytest.approx(12) and rows[1]["dppl_pct"] == pytest.approx(20)
    assert rows[1]["kl"] == pytest.approx(0.1) and rows[1]["top1"] == 0.5 and rows[1]["gate"] == "KILL"
    assert [ppl.gate(x) for x in (0.5, 0.7, 1.01)] == ["PASS", "WARN", "KILL"]


def test_chunks_and_config_tokens():
    ids = torch.arange(10)
    assert [c.tolist() for c in ppl.chunks_of(ids, 4, 2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="fewer than --chunks"):
        ppl.chunks_of(ids, 4, 3)
    names = [c.name for c in parse_kv_list("turbo4,q8_0/turbo4,q8-edges:turbo3,turbo3+qjl,turbo4")]
    assert names == ["f16", "turbo4", "q8_0/turbo4", "q8-edges:turbo3", "turbo3+qjl"]
    for bad in ("turbo5", "q8_0/turbo4/f16", "nopreset:turbo4", "turbo4,,f16"):
        with pytest.raises(ValueError, match="accepted|spell|empty"):
            parse_kv_list(bad)


def test_niah_needle_placed_where_it_says():
    tok = ByteTokenizer()
    filler = torch.tensor(tok.encode("a" * 2000))
    for depth in (0, 50, 100):
        ids, at = niah.haystack(tok, filler, 600, depth, "123456")
        assert ids.numel() == 600
        assert tok.decode(ids[at:at + 32].tolist()).startswith(" The secret passcode is 123456.")
        n = 600 - len(tok.encode(" The secret passcode is 123456. ")) - len(tok.encode(niah.QUESTION))
        assert at == round(depth / 100 * n)
    with pytest.raises(ValueError, match="--depths"):
        niah.int_list("0,120", "--depths", 0, 100)


def test_ppl_smoke_f16_in_cache_equals_itself(tiny):
    model, _ = tiny
    chunks = ppl.chunks_of(torch.randint(0, 256, (256,), generator=torch.Generator().manual_seed(1)), 64, 2)
    rows = ppl.evaluate(model, chunks, parse_kv_list("f16,turbo4,q8_0/turbo3"), bar=False)
    assert rows[0]["kl"] == 0 and rows[0]["top1"] == 1 and rows[0]["dppl"] == 0
    assert rows[0]["tokens"] == 2 * 31 and rows[0]["bits"] == 16
    # 64-token chunks: 4.25 bits of rows + 4 fp16 sinks + per-head key mean and scale (float32) = 5.48 bits
    assert 4.25 < rows[1]["bits"] < 5.5 and rows[1]["kl"] > 0 and math.isfinite(rows[2]["ppl"])


def test_batched_logits_equal_one_forward_for_f16(tiny):
    model, _ = tiny
    ids = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(4))
    from compactkv.bench.common import make_cache

    whole = ppl.batched_logits(model, ids, make_cache(model, parse_kv_list("f16")[0]), 32, 64)
    for batch in (32, 20, 7):  # splits before, at and across the scored half
        got = ppl.batched_logits(model, ids, make_cache(model, parse_kv_list("f16")[0]), 32, batch)
        assert got.shape == whole.shape == (1, 32, whole.shape[-1])
        torch.testing.assert_close(got, whole, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="--batch"):
        ppl.batched_logits(model, ids, make_cache(model, parse_kv_list("f16")[0]), 32, 0)


def test_llama_cpp_block_formats_by_hand():
    from compactkv.bench.peers import ggml_roundtrip

    x = torch.zeros(32)
    x[:4] = torch.tensor([-4.0, 1.0, 2.5, 3.9])
    # q4_0: d = (value of largest magnitude) / -8 = 0.5, q = trunc(x/d + 8.5) clamped to 15, x^ = (q - 8) d
    want = torch.zeros(32)
    want[:4] = torch.tensor([-4.0, 1.0, 2.5, 3.5])  # 3.9/0.5 + 8.5 = 16.3 -> 15 -> 3.5
    torch.testing.assert_close(ggml_roundtrip(x, "gq4_0"), want)
    # q4_1: min -4, max 3.9, d = 7.9/15; q = trunc((x - min)/d + 0.5); x^ = q d + min with fp16 d and min
    d = torch.tensor(7.9 / 15).half().float()
    q = torch.trunc((x + 4.0) / (7.9 / 15) + 0.5).clamp_max(15)
    torch.testing.assert_close(ggml_roundtrip(x, "gq4_1"), q * d - 4.0)
    # q8_0: d = amax / 127, q = roundf(x / d) (half away from zero)
    y = torch.full((32,), 0.5)
    y[0] = 127.0  # d = 1: 0.5 rounds away from zero to 1, not to even 0
    assert ggml_roundtrip(y, "gq8_0")[1] == 1.0 and ggml_roundtrip(-y, "gq8_0")[1] == -1.0
    with pytest.raises(ValueError, match="divisible by 32"):
        ggml_roundtrip(torch.zeros(2, 48), "gq4_0")
    # keys in rotate-half order are blocked as llama.cpp's interleaved pairs: (i, i + 32) -> (2i, 2i + 1)
    k = torch.randn(3, 64)
    inter = torch.stack([k[:, :32], k[:, 32:]], -1).reshape(3, 64)
    back = ggml_roundtrip(inter, "gq4_0").reshape(3, 32, 2)
    torch.testing.assert_close(ggml_roundtrip(k, "gq4_0", interleaved=True), torch.cat([back[..., 0], back[..., 1]], -1))


def test_f16_cache_matches_uncompressed_model(tiny):
    model, _ = tiny
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(2))
    from compactkv.bench.common import forward, make_cache

    got = forward(model, ids, make_cache(model, parse_kv_list("f16")[0]), 24).logits
    with torch.inference_mode():
        want = model(ids, use_cache=False).logits[:, -24:]
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)  # only fp16 storage rounding differs


def test_niah_fidelity_prompts_session_smoke(tiny):
    model, tok = tiny
    filler = torch.tensor(tok.encode("lorem ipsum dolor sit amet " * 40))
    cells = niah.run_grid(model, tok, filler, parse_kv_list("turbo4"), [200], [0, 100], strict=False, bar=False)
    assert set(niah.verdicts(cells)) == {"f16", "turbo4"}
    q, k, v = fidelity.capture_qkv(model, filler[:64].view(1, -1))[0]
    row = fidelity.layer_fidelity("turbo4", q, k, v)
    assert 0.8 < row["k_cos"] <= 1.0001 and 0.5 < row["attn_cos"] <= 1.0001
    assert fidelity.layer_fidelity("f16", q, k, v)["attn_cos"] > 0.9999
    out = prompts.run_prompts(model, tok, parse_kv_list("turbo4"), prompts.PROMPTS[:2], max_new=4, bar=False)
    assert len(out) == 2 and {"f16", "turbo4"} <= set(out[0]["outputs"])
    turns = session.run_session(model, tok, parse_kv_list("turbo4")[1], turns=2, max_new=4, bar=False)
    assert len(turns) == 2 and "agree" in turns[0]


def test_hqq_peer_round_trip(tiny):
    pytest.importorskip("hqq", reason="HQQ peer needs `pip install hqq`")
    from compactkv.bench.peers import make_runners

    model, _ = tiny
    chunks = ppl.chunks_of(torch.randint(0, 256, (128,), generator=torch.Generator().manual_seed(3)), 64, 1)
    rows = ppl.evaluate(model, chunks, parse_kv_list("f16"), make_runners(model, "hqq4"), bar=False)
    assert rows[1]["config"] == "hqq4" and rows[1]["bits"] == 4.5 and 0 < rows[1]["kl"] < 1
    with pytest.raises(ValueError, match="accepted"):
        make_runners(model, "quanto3")


def test_report_from_json(tmp_path):
    from compactkv.bench import report

    acc = {"f16": {"nll": 2.0, "kl": 0, "top1": 2, "n": 2}, "turbo4": {"nll": 2.1, "kl": 0.1, "top1": 1, "n": 2}}
    rows = ppl.rows_from(acc, {"f16": (16.0, 100), "turbo4": (4.25, 27)})
    (tmp_path / "ppl.json").write_text(__import__("json").dumps(
        {"model": "m", "ctx": 8, "chunks": 1, "corpus": "c.txt", "rows": rows, "command": "compactkv bench ppl"}))
    peers = ppl.rows_from({"f16": acc["f16"], "hqq4": {"nll": 2.4, "kl": 0.3, "top1": 1, "n": 2}},
                          {"f16": (16.0, 100), "hqq4": (4.5, None)})
    (tmp_path / "ppl_quantized_cache.json").write_text(__import__("json").dumps(
        {"model": "m", "rows": peers, "command": "compactkv bench ppl --peers hqq4"}))
    cell = {"hits": 1, "cells": 2, "missed_where_f16_hits": [[8192, 50]], "verdict": "FAIL"}
    (tmp_path / "niah_8k.json").write_text(__import__("json").dumps(
        {"model": "m", "lengths": [8192], "depths": [0, 50], "mode": "defaults", "verdicts": {"turbo4": cell},
         "command": "compactkv bench niah --lengths 8192"}))
    report.main(["--dir", str(tmp_path), "--out", str(tmp_path / "q.md")])
    text = (tmp_path / "q.md").read_text()
    assert "turbo4" in text and "compactkv bench ppl" in text
    assert "hqq4" in text and "--peers hqq4" in text  # the peer run's rows and its command
    assert "8192@50%" in text and "quality/niah_8k.png" in text


@pytest.mark.slow
def test_llama_cpp_peer_scores_against_its_own_f16(tiny):
    pytest.importorskip("llama_cpp", reason="llama.cpp peer needs `pip install llama-cpp-python`")
    from compactkv.bench.peers import make_runners
    from compactkv.engine.model_files import default_gguf_path

    gguf = default_gguf_path()
    if gguf is None:
        pytest.skip("default model not installed")
    model, _ = tiny  # the peers ignore the transformers model; rows compare llama-q8_0 with llama-f16
    runners = make_runners(model, "llama-q8_0,llama-q4_0-norot", gguf=str(gguf))
    assert [r.name for r in runners] == ["llama-f16", "llama-q8_0", "llama-q4_0-norot"]
    assert runners[1].reference == "llama-f16" and runners[0].reference is None
    ids = torch.randint(0, 4000, (1, 64), generator=torch.Generator().manual_seed(5))
    f16 = runners[0].logits(ids, 32, 32)
    q8 = runners[1].logits(ids, 32, 32)
    q4 = runners[2].logits(ids, 32, 32)
    assert f16.shape == q8.shape == (1, 32, 49152) and not torch.equal(f16, q8)
    kl8 = score(q8[0], f16[0], ids[0, 32:])["kl"]
    kl4 = score(q4[0], f16[0], ids[0, 32:])["kl"]
    assert 0 < kl8 < kl4  # 8-bit K/V is closer to f16 than plain 4-bit
    with pytest.raises(ValueError, match="GGUF"):
        make_runners(model, "llama-q4_0", gguf=None)
