"""`compactkv bench decode`: decode tokens/s of a model at several context lengths, fp16 DynamicCache (SDPA)
vs TurboQuantCache kinds, in the same run on the same machine.

Each cell: fill the cache to the context length with WikiText text (chunked prefill), then time greedy decode
steps (median step time → tokens/s). `x f16` is the ratio to the DynamicCache baseline measured in the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch
from tqdm import tqdm

from .codec import machine

DEFAULT_CORPUS = os.path.join("..", "shared", "corpora", "wikitext-2-raw-test.txt")


def register(subparsers) -> None:
    p = subparsers.add_parser("decode", help="decode tokens/s at several contexts: f16 DynamicCache vs compressed")
    p.add_argument("--model", default=os.environ.get("COMPACTKV_MODEL"), help="model path or id (default model)")
    p.add_argument("--gguf-file", default=os.environ.get("COMPACTKV_GGUF_FILE"))
    p.add_argument("--contexts", default="512,2048,8192", help="comma-separated context lengths")
    p.add_argument("--kinds", default="turbo4,turbo3", help="comma-separated K=V kinds (or k/v pairs) to compare")
    p.add_argument("--steps", type=int, default=16, help="decode steps timed per cell (default 16)")
    p.add_argument("--residual-length", type=int, default=None, help="fp16 recent window (default: cache default)")
    p.add_argument("--corpus", default=os.environ.get("COMPACTKV_CORPUS", DEFAULT_CORPUS))
    p.add_argument("--device", default=os.environ.get("COMPACTKV_DEVICE", "cpu"))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    p.set_defaults(func=main)


def _context_ids(tokenizer, corpus: str, n: int) -> torch.Tensor:
    if not os.path.isfile(corpus):
        raise ValueError(f"corpus {corpus!r} not found; pass --corpus PATH (a UTF-8 text file)")
    with open(corpus, encoding="utf-8") as f:
        text = f.read(max(64 * n, 200_000))
    ids = tokenizer(text, return_tensors="pt").input_ids
    if ids.shape[1] < n:
        raise ValueError(f"corpus gives only {ids.shape[1]} tokens, fewer than the context {n}")
    return ids[:, :n]


@torch.no_grad()
def time_decode(model, cache, ids: torch.Tensor, steps: int, chunk: int = 512) -> dict:
    """Prefill `ids` into `cache` in chunks, then time `steps` greedy decode steps."""
    kw = _cache_kw(model)
    t0 = time.perf_counter()
    for i in range(0, ids.shape[1], chunk):
        out = model(ids[:, i:i + chunk], use_cache=True, **{kw: cache})
    prefill = time.perf_counter() - t0
    tok = out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        out = model(tok, use_cache=True, **{kw: cache})
        tok = out.logits[:, -1:].argmax(-1)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"prefill_s": prefill, "prefill_tok_s": ids.shape[1] / prefill, "step_ms": med * 1e3,
            "tok_s": 1.0 / med}


def _cache_kw(model) -> str:
    import inspect

    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def main(args) -> int:
    from transformers import DynamicCache

    from ..cache import TurboQuantCache
    from ..engine.loader import ModelSpec, load_model

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        contexts = [int(c) for c in args.contexts.split(",") if c]
    except ValueError:
        raise ValueError(f"--contexts must be comma-separated integers, got {args.contexts!r}") from None
    kinds = [k for k in args.kinds.split(",") if k]
    if not contexts or min(contexts) < 1:
        raise ValueError(f"--contexts must be positive integers, got {args.contexts!r}")
    lm = load_model(ModelSpec(model=args.model, gguf_file=args.gguf_file, device=args.device))
    model, tok = lm.model, lm.tokenizer
    opts = {} if args.residual_length is None else {"residual_length": args.residual_length}
    for kind in kinds:  # validate before the long run
        k, _, v = kind.partition("/")
        TurboQuantCache(model.config, k=k, v=v or k, **opts)
    ids_all = _context_ids(tok, args.corpus, max(contexts)).to(lm.device)
    rows = []
    cells = [(c, kind) for c in contexts for kind in ["f16 (DynamicCache)"] + kinds]
    for ctx, kind in tqdm(cells, desc="decode bench", unit="cell"):
        if kind.startswith("f16 ("):
            cache = DynamicCache(config=model.config)
        else:
            k, _, v = kind.partition("/")
            cache = TurboQuantCache(model.config, k=k, v=v or k, **opts)
        r = time_decode(model, cache, ids_all[:, :ctx], args.steps)
        mem = cache.memory_report() if hasattr(cache, "memory_report") else None
        r.update(context=ctx, kind=kind, kv_bytes=mem["kv_bytes"] if mem else _dynamic_bytes(cache),
                 window_bytes=mem["window_bytes"] if mem else 0)
        rows.append(r)
    for r in rows:
        base = next(b for b in rows if b["context"] == r["context"] and b["kind"].startswith("f16 ("))
        r["x_f16"] = r["tok_s"] / base["tok_s"]
    print(table(rows, lm.name))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "decode", "model": lm.name, "machine": machine(), "steps": args.steps,
                       "load_average": os.getloadavg(),
                       "results": rows}, f, indent=2)
    return 0


def _dynamic_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers if getattr(layer, "keys", None) is not None)


def table(rows: list[dict], model: str) -> str:
    lines = [f"decode tokens/s, {model}",
             f"{'context':>8} {'kind':<20} {'tok/s':>8} {'x f16':>7} {'step ms':>8} {'prefill tok/s':>14} {'KV MiB':>8}"]
    for r in rows:
        lines.append(f"{r['context']:>8} {r['kind']:<20} {r['tok_s']:>8.2f} {r['x_f16']:>7.2f} {r['step_ms']:>8.1f} "
                     f"{r['prefill_tok_s']:>14.1f} {r['kv_bytes'] / 2**20:>8.2f}")
    return "\n".join(lines)
