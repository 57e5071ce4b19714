"""`compactkv bench niah`: needle in a haystack, exact-match retrieval per (haystack length, depth) cell per KV config.

The haystack is corpus text; the needle "The secret passcode is NNNNNN." is inserted at depth 0-100% of it
(token position round(depth * filler length)); the prompt ends "Question: What is the secret passcode? Answer: The
secret passcode is" and greedy decoding must produce the number. Each cell uses a fresh cache with the cache's
own defaults (fp16 recent window and sinks as shipped) unless --strict stores every token compressed.
Pass = a config retrieves in every cell where f16 retrieves.
"""

from __future__ import annotations

import os
import random

import torch
from tqdm import tqdm

from .common import DEFAULT_CORPUS, add_model_args, corpus_ids, greedy, load, make_cache, parse_kv_list, write_json

QUESTION = "\n\nQuestion: What is the secret passcode? Answer: The secret passcode is"


def register(subparsers) -> None:
    p = subparsers.add_parser("niah", help="needle-in-a-haystack retrieval per length/depth cell vs f16")
    p.add_argument("--kv", default="f16,turbo4,turbo3.5,turbo3", help="comma-separated KV configs (f16 added)")
    p.add_argument("--lengths", default="1024,2048,4096", help="haystack lengths in tokens")
    p.add_argument("--depths", default="0,25,50,75,100", help="needle depths in percent")
    p.add_argument("--strict", action="store_true", help="store every token compressed (no fp16 windows)")
    p.add_argument("--seed", type=int, default=0, help="seed of the passcodes (default 0)")
    p.add_argument("--corpus", default=os.environ.get("COMPACTKV_CORPUS", DEFAULT_CORPUS))
    p.add_argument("--png", metavar="PATH", help="heatmap of retrieval per config")
    add_model_args(p)
    p.set_defaults(func=main)


def int_list(text: str, name: str, lo: int, hi: int | None = None) -> list[int]:
    """Comma-separated ints within [lo, hi]; ValueError naming the flag otherwise."""
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < lo or (hi is not None and v > hi) for v in vals):
        raise ValueError(f"{name} values must lie in [{lo}, {hi if hi is not None else 'inf'}], got {text!r}")
    return vals


def haystack(tokenizer, filler: torch.Tensor, length: int, depth: int, code: str) -> tuple[torch.Tensor, int]:
    """Prompt ids [T] of about `length` tokens with the needle at `depth`%, and the needle's first token index."""
    needle = torch.tensor(tokenizer.encode(f" The secret passcode is {code}. ", add_special_tokens=False))
    question = torch.tensor(tokenizer.encode(QUESTION, add_special_tokens=False))
    n = length - needle.numel() - question.numel()
    if n < 1 or filler.numel() < n:
        raise ValueError(f"haystack length {length} is too short for the needle or longer than the corpus")
    at = round(depth / 100 * n)
    ids = torch.cat([filler[:at], needle, filler[at:n], question])
    return ids, at


def answer(model, tokenizer, ids: torch.Tensor, cache, max_new: int = 12) -> str:
    """Greedy continuation of ids [T] through `cache`, as text (12 tokens: tokenizers that split digits one by
    one need 7 for " NNNNNN")."""
    return tokenizer.decode(greedy(model, ids, cache, max_new))


def run_grid(model, tokenizer, filler, configs, lengths, depths, strict: bool, seed: int = 0, bar: bool = True):
    """Cells {config: {length: {depth: {'hit', 'answer', 'code'}}}}."""
    rng = random.Random(seed)
    cells = {c.name: {} for c in configs}
    progress = tqdm(total=len(configs) * len(lengths) * len(depths), desc="niah", disable=not bar)
    for length in lengths:
        for depth in depths:
            code = str(rng.randrange(100000, 1000000))
            ids, _ = haystack(tokenizer, filler, length, depth, code)
            for c in configs:
                cache = make_cache(model, c) if strict else _default_cache(model, c)
                text = answer(model, tokenizer, ids, cache)
                cells[c.name].setdefault(length, {})[depth] = {"hit": code in text, "answer": text, "code": code}
                progress.update()
    progress.close()
    return cells


def _default_cache(model, config):
    from compactkv.cache import TurboQuantCache

    policy = None if config.policy == "uniform" else config.policy
    return TurboQuantCache(model.config, k=config.k, v=config.v, policy=policy)


def verdicts(cells: dict) -> dict:
    """Per config: hits, cells, and PASS when it retrieves wherever f16 does."""
    ref = cells["f16"]
    out = {}
    for name, grid in cells.items():
        hits = sum(c["hit"] for row in grid.values() for c in row.values())
        total = sum(len(row) for row in grid.values())
        miss = [(l, d) for l, row in grid.items() for d, c in row.items() if ref[l][d]["hit"] and not c["hit"]]
        out[name] = {"hits": hits, "cells": total, "missed_where_f16_hits": miss, "verdict": "FAIL" if miss else "PASS"}
    return out


def plot(cells: dict, path: str) -> None:
    """One retrieval heatmap (length x depth) per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cells)
    fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        lengths = list(cells[name])
        depths = list(cells[name][lengths[0]])
        grid = [[float(cells[name][l][d]["hit"]) for d in depths] for l in lengths]
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(depths)), [f"{d}%" for d in depths], fontsize=7)
        ax.set_yticks(range(len(lengths)), [str(l) for l in lengths], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("needle depth", fontsize=8)
    axes[0][0].set_ylabel("haystack tokens", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> dict:
    configs = parse_kv_list(args.kv)
    lengths = int_list(args.lengths, "--lengths", 64)
    depths = int_list(args.depths, "--depths", 0, 100)
    model, tokenizer, name = load(args.model, args.gguf_file, args.device)
    filler = corpus_ids(tokenizer, args.corpus, max(lengths) + 64)
    cells = run_grid(model, tokenizer, filler, configs, lengths, depths, args.strict, args.seed)
    result = verdicts(cells)
    mode = "every token compressed" if args.strict else "cache defaults (fp16 recent window/sinks as shipped)"
    print(f"{name}, needle retrieval, {mode}; hits per config (rows: length, columns: depth %)")
    for cname, grid in cells.items():
        print(f"{cname:>18}  " + "  ".join(f"{l}:" + "".join("#" if c["hit"] else "." for c in row.values())
                                          for l, row in grid.items())
              + f"  {result[cname]['hits']}/{result[cname]['cells']} {result[cname]['verdict']}")
    report = {"bench": "niah", "model": name, "mode": mode, "lengths": lengths, "depths": depths,
              "cells": {n: {str(l): {str(d): c for d, c in row.items()} for l, row in g.items()}
                        for n, g in cells.items()}, "verdicts": result}
    write_json(args.json, report)
    if args.png:
        plot(cells, args.png)
    return 0
