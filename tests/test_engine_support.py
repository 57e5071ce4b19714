"""A tiny random-weight Llama and a character tokenizer, built locally, for engine tests that must run in seconds."""

from __future__ import annotations

import threading
import time

import torch

from compactkv.engine.loader import LoadedModel, attention_implementation

VOCAB = 96
EOS = 0


class CharTokenizer:
    """id 0 is EOS (special); id i > 0 is the character chr(31 + i). No chat template."""

    eos_token_id = EOS
    chat_template = None

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) -> str:
        return "".join("" if i == EOS and skip_special_tokens else "<eos>" if i == EOS else chr(31 + i) for i in ids)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [min(max(ord(c) - 31, 1), VOCAB - 1) for c in text]}


def tiny_lm(seed: int = 0, layers: int = 2, eos: bool = True) -> LoadedModel:
    """A LoadedModel around a random LlamaForCausalLM (head_dim 64, GQA 2:1) using the compactkv attention.
    `eos=False` gives it no end-of-sequence token, so it always generates up to the limit."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=EOS, pad_token_id=EOS)
    attn = attention_implementation()
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation(attn)
    model.eval()
    tokenizer = CharTokenizer()
    if not eos:
        model.generation_config.eos_token_id = None
        tokenizer.eos_token_id = None
    details = {"format": "safetensors", "family": "llama", "parameter_count": 1, "dtype": "float32"}
    return LoadedModel(model, tokenizer, "tiny", "random", "cpu", attn, 0.0, details)


class Collector:
    """A scheduler request's emit callback: every (kind, payload, time); `done` is set at 'done' or 'error'."""

    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, kind, payload):
        self.events.append((kind, payload, time.perf_counter()))
        if kind in ("done", "error"):
            self.done.set()

    def tokens(self):
        return [p.token for k, p, _ in self.events if k == "token"]

    def summary(self):
        return next(p for k, p, _ in self.events if k == "done")
