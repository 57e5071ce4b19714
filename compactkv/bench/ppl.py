"""`compactkv bench ppl`: perplexity, KL divergence and top-1 agreement of KV configs vs f16, llama-perplexity style.

The corpus is cut into non-overlapping chunks of --ctx tokens (the first --chunks of them). Each chunk is one
forward through a fresh cache with no fp16 recent window (residual_length=0), so every scored token attends to the
compressed K/V; the cache's default attention sinks (first 4 tokens in fp16) stay unless --sinks says otherwise.
Logits at positions ctx/2 .. ctx-2 predict tokens ctx/2+1 .. ctx-1
(the second half, as llama-perplexity scores). KL and top-1 compare each config with the f16 config's logits.
Gate (the original plan): ΔPPL <= 0.5 PASS, > 1.0 KILL, between: WARN.
"""

from __future__ import annotations

import argparse

import math
import os

import torch
from tqdm import tqdm

from compactkv.cache import CacheConfig

from .common import (DEFAULT_CORPUS, add_model_args, bits_and_bytes, corpus_ids, forward, load, make_cache,
                     parse_kv_list, score, table, write_json)

DEFAULT_KV = ("f16,q8_0,turbo4,turbo3.5,turbo3,turbo2.5,turbo2,q8_0/turbo4,q8_0/turbo3,turbo4/turbo3,"
              "q8-edges:turbo3,q8-last8:turbo3,v4-edges:turbo4,v4-last8:turbo4,vq8-edges:turbo4,"
              "turbo4+qjl,turbo3+qjl,turbo2+qjl")
PASS, KILL = 0.5, 1.0


def register(subparsers) -> None:
    p = subparsers.add_parser("ppl", help="perplexity/KL/top-1 of KV configs vs f16 (llama-perplexity scoring)")
    p.add_argument("--kv", default=os.environ.get("COMPACTKV_BENCH_KV", DEFAULT_KV),
                   help="comma-separated KV configs (KIND, K/V, PRESET:KIND); f16 is always added first")
    p.add_argument("--ctx", type=int, default=1024, help="tokens per chunk (default 1024)")
    p.add_argument("--chunks", type=int, default=16, help="first N chunks of the corpus (default 16)")
    p.add_argument("--corpus", default=os.environ.get("COMPACTKV_CORPUS", DEFAULT_CORPUS))
    p.add_argument("--peers", default="", help="also score peers: quanto4,quanto2,hqq4,hqq2 (transformers backends), gq8_0,gq4_0,gq4_1 (llama.cpp block formats emulated; see bench/peers.py)")
    p.add_argument("--batch", type=int, default=512,
                   help="tokens per forward within a chunk (llama-perplexity's n_batch, default 512)")
    p.add_argument("--sinks", type=int, default=None,
                   help="fp16 sink tokens per chunk (default: the cache's, 4); 0 compresses every token")
    p.add_argument("--png", metavar="PATH", help="plot ΔPPL vs bits per value")
    add_model_args(p)
    p.set_defaults(func=main)


def run_argv(argv: list[str]) -> int:
    """Run the bench from its command-line arguments (as after `compactkv bench ppl`); for scripts that patch the
    cache first (scripts/rd_bound.py, score_scale.py, seed_spread.py)."""
    parser = argparse.ArgumentParser(prog="ppl")
    register(parser.add_subparsers())
    return main(parser.parse_args(["ppl", *argv]))


def chunks_of(ids: torch.Tensor, ctx: int, n: int) -> list[torch.Tensor]:
    """The first `n` non-overlapping chunks of `ctx` tokens; ValueError when the corpus is too short."""
    if ctx < 4 or n < 1:
        raise ValueError(f"--ctx must be >= 4 and --chunks >= 1, got ctx={ctx}, chunks={n}")
    have = ids.numel() // ctx
    if have < n:
        raise ValueError(f"the corpus holds {have} chunks of {ctx} tokens, fewer than --chunks {n}")
    return [ids[i * ctx:(i + 1) * ctx] for i in range(n)]


def scored_logits(out_logits: torch.Tensor, ctx: int) -> torch.Tensor:
    """Logits [ctx/2 - 1, V] at positions ctx/2 .. ctx-2 from a forward run with logits_to_keep=ctx - ctx/2."""
    return out_logits[0, :-1]


def gate(dppl: float) -> str:
    return "PASS" if dppl <= PASS else ("KILL" if dppl > KILL else "WARN")


def batched_logits(model, ids: torch.Tensor, cache, keep: int, batch: int) -> torch.Tensor:
    """Feed ids [1, T] through `cache` `batch` tokens per forward; logits [1, keep, V] of the last `keep` positions."""
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    total, start, outs = ids.shape[1], ids.shape[1] - keep, []
    for s in range(0, total, batch):
        e = min(total, s + batch)
        want = e - max(s, start)
        out = forward(model, ids[:, s:e], cache, max(want, 1)).logits  # logits_to_keep=0 would mean all
        if want > 0:
            outs.append(out[:, -want:])
    return torch.cat(outs, dim=1)


def evaluate(model, chunks: list[torch.Tensor], configs, runners=(), bar: bool = True, on_chunk=None,
             batch: int = 512, **cache_options) -> list[dict]:
    """Rows per config (f16 first) and per peer runner: ppl, ΔPPL, KL, top-1, bits/value, KV bytes.

    Each chunk is fed `batch` tokens per forward (llama-perplexity's n_batch; 512 of a 1024 chunk = two forwards),
    so a cache calibrates and compresses the first half before the scored half's queries arrive.

    on_chunk(rows, chunks_done), when given, receives the running results after every chunk.
    """
    ctx = chunks[0].numel()
    first = ctx // 2
    keep = ctx - first
    acc = {c.name: {"nll": 0.0, "kl": 0.0, "top1": 0, "n": 0} for c in configs}
    acc.update({r.name: {"nll": 0.0, "kl": 0.0, "top1": 0, "n": 0} for r in runners})
    refs = {r.name: r.reference for r in runners if getattr(r, "reference", None)}
    info = {}
    progress = tqdm(total=len(chunks) * (len(configs) + len(runners)), desc="ppl", disable=not bar)
    for chunk in chunks:
        ids, targets = chunk.view(1, -1), chunk[first + 1:]
        ref = None
        for c in configs:
            cache = make_cache(model, c, **cache_options)
            logits = scored_logits(batched_logits(model, ids, cache, keep, batch), ctx)
            ref = logits if ref is None else ref
            for k, val in score(logits, ref, targets).items():
                acc[c.name][k] += val
            info[c.name] = bits_and_bytes(cache)
            progress.set_postfix_str(c.name)
            progress.update()
        peer_logits = {}
        for r in runners:
            logits = scored_logits(r.logits(ids, keep, batch), ctx)
            peer_logits[r.name] = logits
            against = peer_logits.get(getattr(r, "reference", None) or "", ref)
            for k, val in score(logits, against, targets).items():
                acc[r.name][k] += val
            info[r.name] = (r.bits, None)
            progress.set_postfix_str(r.name)
            progress.update()
        if on_chunk is not None:
            on_chunk(rows_from(acc, info, refs), acc[configs[0].name]["n"] // (ctx - first - 1))
    progress.close()
    return rows_from(acc, info, refs)


def rows_from(acc: dict, info: dict, refs: dict | None = None) -> list[dict]:
    """Final rows from accumulated sums; the first entry is the f16 reference. refs: name -> the row its ΔPPL
    and KL are taken against (llama.cpp peers against llama-f16); others against the first row."""
    names = list(acc)
    refs = refs or {}
    rows = []
    for name in names:
        a = acc[name]
        ref_name = refs.get(name) or names[0]
        base = math.exp(acc[ref_name]["nll"] / acc[ref_name]["n"])
        ppl = math.exp(a["nll"] / a["n"])
        bits, nbytes = info[name]
        rows.append({"config": name, "ppl": ppl, "dppl": ppl - base, "dppl_pct": 100 * (ppl - base) / base,
                     "kl": a["kl"] / a["n"], "top1": a["top1"] / a["n"], "bits": bits, "kv_bytes": nbytes,
                     "gate": gate(ppl - base), "tokens": a["n"], "vs": ref_name})
    return rows


COLUMNS = [("config", "config", "{}"), ("bits", "bits/val", "{:.2f}"), ("kv_bytes", "KV bytes", "{:,}"),
           ("ppl", "PPL", "{:.4f}"), ("dppl", "ΔPPL", "{:+.4f}"), ("dppl_pct", "Δ%", "{:+.2f}%"),
           ("kl", "mean KL", "{:.5f}"), ("top1", "top-1", "{:.2%}"), ("gate", "gate", "{}"), ("vs", "vs", "{}")]


def plot(rows: list[dict], path: str, title: str) -> None:
    """ΔPPL % vs bits per value, one labelled point per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        ax.scatter(r["bits"], r["dppl_pct"], color="tab:red" if r["gate"] == "KILL" else "tab:blue")
        ax.annotate(r["config"], (r["bits"], r["dppl_pct"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("stored bits per K/V value")
    ax.set_ylabel("ΔPPL vs f16 (%)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> dict:
    if args.batch < 1:  # checked before the model loads
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.sinks is not None and args.sinks < 0:
        raise ValueError(f"--sinks must be >= 0, got {args.sinks}")
    configs = parse_kv_list(args.kv)
    model, tokenizer, name = load(args.model, args.gguf_file, args.device)
    ids = corpus_ids(tokenizer, args.corpus, args.ctx * args.chunks)
    chunks = chunks_of(ids, args.ctx, args.chunks)
    runners = []
    if args.peers:
        from .peers import make_runners

        from compactkv.engine.model_files import default_gguf_path

        gguf = (os.path.join(args.model, args.gguf_file) if args.model and args.gguf_file else
                None if args.model else default_gguf_path())
        runners = make_runners(model, args.peers, gguf=gguf)
    options = {} if args.sinks is None else {"sink_tokens": args.sinks}
    sinks = CacheConfig(**options).sink_tokens
    note = (f"no fp16 recent window (residual_length=0): each scored token attends to the compressed K/V; the first "
            f"{sinks} tokens of each chunk are fp16 attention sinks" if sinks else
            "every token stored compressed (residual_length=0, sink_tokens=0)")
    report = {"bench": "ppl", "model": name, "corpus": args.corpus, "ctx": args.ctx, "chunks": args.chunks,
              "batch": args.batch, "sink_tokens": sinks,
              "scoring": "llama-perplexity: second half of each non-overlapping chunk", "note": note,
              "gate": {"pass_dppl": PASS, "kill_dppl": KILL}}

    def save(rows, done):  # partial results survive a run cut short
        write_json(args.json, {**report, "chunks_done": done, "rows": rows})

    rows = evaluate(model, chunks, configs, runners, on_chunk=save, batch=args.batch, **options)
    report.update(chunks_done=len(chunks), rows=rows)
    print(f"{name}, ctx {args.ctx}, {args.chunks} chunks, second halves scored; {note}")
    print(table(rows, COLUMNS))
    write_json(args.json, report)
    if args.png:
        plot(rows, args.png, f"{name}: ctx {args.ctx}, {args.chunks} chunks")
    return 0
