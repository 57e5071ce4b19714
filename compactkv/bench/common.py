"""Shared pieces of the quality benchmarks: model loading, KV config tokens, caches, scoring math, JSON output.

A KV config token is the planner's one-token spelling (compactkv.plan.kvconfig): `turbo4`, `q8_0/turbo4`,
`q8-edges:turbo3`, `turbo4+qjl`. Quality benches keep no fp16 recent window (residual_length=0, block_size=1)
unless told otherwise, so each scored token attends to the compressed K/V; the first `sink_tokens` (the cache
default, 4) stay fp16 as in the product, and `--sinks 0` compresses those too.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import torch

from compactkv.plan.kvconfig import KVConfig, parse_config

from .codec import machine

DEFAULT_CORPUS = os.path.join("..", "shared", "corpora", "wikitext-2-raw-test.txt")
STRICT = {"residual_length": 0, "block_size": 1}


def parse_kv_list(text: str) -> list[KVConfig]:
    """Configs from a comma-separated list; f16 always first (the reference). ValueError for a bad token."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty --kv list; spell configs as KIND, K/V, PRESET:KIND, e.g. f16,turbo4,q8_0/turbo4")
    out, seen = [parse_config("f16")], {"f16"}
    for token in text.split(","):
        token = token.strip()
        if not token:
            raise ValueError(f"empty entry in --kv {text!r}")
        config = parse_config(token)
        if config.name not in seen:
            seen.add(config.name)
            out.append(config)
    return out


def make_cache(model, config: KVConfig, **options):
    """A fresh TurboQuantCache of `config` for `model` (STRICT windows unless `options` override them)."""
    from compactkv.cache import TurboQuantCache

    kw = dict(STRICT, **options)
    policy = None if config.policy == "uniform" else config.policy
    return TurboQuantCache(model.config, k=config.k, v=config.v, policy=policy, **kw)


def forward(model, ids: torch.Tensor, cache, logits_to_keep: int = 0):
    """One forward of ids [1, T] through `cache`; returns the model output."""
    from compactkv.engine.caches import cache_kwarg

    with torch.inference_mode():
        return model(ids, use_cache=True, logits_to_keep=logits_to_keep, **{cache_kwarg(model): cache})


def bits_and_bytes(cache) -> tuple[float, int]:
    """(stored bits per K/V value, KV bytes held) of a filled cache."""
    rep = cache.memory_report()
    return (16.0 * rep["kv_bytes"] / rep["fp16_bytes"] if rep["fp16_bytes"] else 0.0), int(rep["kv_bytes"])


def score(logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Sums over positions: `nll` of targets, `kl` = KL(ref || logits), `top1` = argmax agreement, and `n`.

    logits, ref_logits: [N, V]; targets: [N] token ids.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref = torch.log_softmax(ref_logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.view(-1, 1)).sum()
    kl = (ref.exp() * (ref - logp)).sum(dim=-1).clamp_min(0).sum()
    top1 = (logp.argmax(-1) == ref.argmax(-1)).sum()
    return {"nll": float(nll), "kl": float(kl), "top1": int(top1), "n": int(targets.numel())}


def load(model: str | None = None, gguf_file: str | None = None, device: str = "cpu"):
    """(model, tokenizer, display name) for the quality benches: the default model unless told otherwise."""
    from compactkv.engine.loader import ModelSpec, load_model

    lm = load_model(ModelSpec(model=model, gguf_file=gguf_file, device=device))
    return lm.model, lm.tokenizer, lm.name


def corpus_ids(tokenizer, path: str, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids [N] of a UTF-8 text file (the first ~8 chars per wanted token when max_tokens is set)."""
    if not os.path.isfile(path):
        raise ValueError(f"corpus {path!r} not found; pass --corpus PATH (a UTF-8 text file)")
    with open(path, encoding="utf-8") as f:
        text = f.read(8 * max_tokens + 4096 if max_tokens else -1)
    ids = torch.tensor(tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)
    return ids[:max_tokens] if max_tokens else ids


def add_model_args(p) -> None:
    """--model/--gguf-file/--device/--json flags shared by the quality benches."""
    p.add_argument("--model", default=os.environ.get("COMPACTKV_MODEL"), help="model path or id (default model)")
    p.add_argument("--gguf-file", default=os.environ.get("COMPACTKV_GGUF_FILE"), help="GGUF file inside --model")
    p.add_argument("--device", default=os.environ.get("COMPACTKV_DEVICE", "cpu"), help="cpu (default) or cuda")
    p.add_argument("--json", metavar="PATH", help="write the figures and the machine description as JSON")


def write_json(path: str | None, report: dict) -> None:
    """Write `report` (with `machine` and the command line added) to `path` when given."""
    if not path:
        return
    report.setdefault("machine", machine())
    report.setdefault("command", "compactkv " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1) + "\n")


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table: columns are (key, header, format) with format like '{:.3f}'."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("" if r.get(k) is None else fmt.format(r[k])) for k, _, fmt in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c[i].rjust(widths[i]) if i else c[i].ljust(widths[i]) for i in range(len(c))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def greedy(model, ids: torch.Tensor, cache, max_new: int, stop_ids=()) -> list[int]:
    """Greedy continuation of ids [T] through `cache` (which keeps every fed and generated token but the last)."""
    out = forward(model, ids.view(1, -1), cache, 1)
    new = []
    for _ in range(max_new):
        tok = out.logits[0, -1].argmax()
        new.append(int(tok))
        if int(tok) in stop_ids:
            break
        out = forward(model, tok.view(1, 1), cache, 1)
    return new


def chat_format(tokenizer) -> tuple[str, str]:
    """(user turn template with {msg}, end-of-assistant-turn text): ChatML when the model's template uses it."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" in template:
        return "<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n"
    return "User: {msg}\nAssistant:", "\n"


def stop_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that end an assistant turn (eos, ChatML <|im_end|>)."""
    ids = {getattr(tokenizer, "eos_token_id", None)}
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is not None and "<|im_start|>" in (getattr(tokenizer, "chat_template", None) or ""):
        ids.add(convert("<|im_end|>"))
    return tuple(i for i in ids if isinstance(i, int))


def agreement(a: list[int], b: list[int]) -> tuple[float, int | None]:
    """(fraction of positions with equal tokens over the longer output, first differing index or None)."""
    n = max(len(a), len(b))
    if n == 0:
        return 1.0, None
    same = sum(x == y for x, y in zip(a, b))
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    return same / n, first


def repetition(ids: list[int], n: int = 4) -> float:
    """Fraction of repeated n-grams in ids (0 = none repeated)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0
