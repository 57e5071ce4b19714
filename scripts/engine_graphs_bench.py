"""What `compactkv run --graphs` changes: the engine's decode speed (Generation, host sampling) with and without
CUDA graphs, compressed and fp16, on a random-weight Llama-3.1-8B-shaped model in bf16 (CUDA GPU, no download).

    python scripts/engine_graphs_bench.py [--prompt 1024] [--new 128] [--kinds turbo4,f16] [--tiny] --json PATH
    python scripts/engine_graphs_bench.py --serve 4 ...   # also N concurrent sequences through the server's engine
    python scripts/engine_graphs_bench.py --compile ...   # graphed rows as `run --graphs --compile` (serve's too)

Per kind, one sequence of --prompt random token ids, --new tokens greedy, through `Generation` as `compactkv run`
drives it: "eager" = the cache `run` makes (TurboQuantCache; for f16 its f16 layers), "graphs" = `run --graphs`
(a static cache sized for the sequence, decode steps replayed from a CUDA graph captured at the first step). A
warm-up sequence of the same kind runs first (kernel compiles). Reported: prefill seconds, decode tok/s over the
whole decode (capture included) and the median inter-token time of the second half (steady state).
With --serve N: N sequences (different prompts) submitted at once to the scheduler `compactkv serve` runs (fair
round-robin, one cache each; eager vs `serve --graphs`: a static cache of --prompt + --new tokens per sequence,
each captured at its first decode step), after a warm-up of N short ones with caches of the same size; reported:
the aggregate decode rate (tokens after each sequence's first, over the time from the first such token to the
last, captures included) and the steady one (N / the median inter-token gap of each sequence's second half).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from compactkv.bench.common import write_json  # noqa: E402
from compactkv.bench.provenance import commit  # noqa: E402


class _Ids:
    """A tokenizer stand-in: ids decode to nothing, no end-of-sequence token (every sequence runs to --new)."""

    eos_token_id = None
    chat_template = None

    def decode(self, ids, **kw) -> str:
        return ""


def _lm(model):
    from compactkv.engine.loader import LoadedModel
    model.generation_config.eos_token_id = None
    return LoadedModel(model, _Ids(), "random-llama", "random", "cuda", "compactkv", 0.0, {})


def _one(lm, kind: str, graphs: bool, prompt: list[int], new: int, sinks: int | str | None = None,
         compile: bool = False) -> dict:
    from compactkv.engine import Generation, SamplingConfig, make_cache
    from compactkv.engine.graphs import static_cache
    from compactkv.attention.triton import backend
    plain = sinks == "plain"  # no sinks, no key centering: the static cache before session 16
    scaled = sinks == "scaled"  # the default static cache with query-aware key scaling on
    two = sinks == "two-launch"  # the default cache, its sinks merged by finish_decode (backend.FUSE_SINKS off)
    cache = (static_cache(lm.model, kind, 1, len(prompt) + new, "cuda",
                          sink_tokens=0 if plain else None if scaled or two else sinks, center_keys=not plain,
                          scale_keys=True if scaled else None) if graphs
             else make_cache(lm.model, kind, kind))
    gen = Generation(lm, prompt, SamplingConfig(max_new_tokens=new), cache, graphs=graphs, prefill_chunk=4096,
                     compile=compile and graphs)
    stamps = []
    fuse, backend.FUSE_SINKS = backend.FUSE_SINKS, backend.FUSE_SINKS and not two
    try:
        while not gen.done:
            if gen.step() is not None:
                stamps.append(time.perf_counter())
    finally:
        backend.FUSE_SINKS = fuse
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    t = gen.timings
    row = {"kind": kind, "graphs": graphs, "compile": compile and graphs, "sinks": sinks,
           "prompt_s": t.prompt_seconds,
           "decode_tok_s": t.decode_steps / t.decode_seconds,
           "steady_ms": statistics.median(gaps[len(gaps) // 2:]) * 1e3, "tokens": gen.output_ids}
    del gen, cache
    torch.cuda.empty_cache()
    return row


def _serve(lm, kind: str, graphs: bool, prompts: list[list[int]], new: int, context: int,
           compile: bool = False) -> dict:
    import threading

    from compactkv.engine import SamplingConfig
    from compactkv.engine.scheduler import EngineConfig, Scheduler
    sched = Scheduler(lm, EngineConfig(k=kind, v=kind, max_context=context, max_active=len(prompts),
                                       prefill_chunk=256, prefix_cache_bytes=0, graphs=graphs,
                                       compile=compile and graphs))
    stamps: list[list[float]] = [[] for _ in prompts]
    left = threading.Semaphore(0)

    def sink(i):
        def emit(kind_, payload):
            if kind_ == "token":
                stamps[i].append(time.perf_counter())
            elif kind_ in ("done", "error"):
                if kind_ == "error":
                    print("error:", payload, flush=True)
                left.release()
        return emit
    start = time.perf_counter()
    for i, p in enumerate(prompts):
        sched.submit(p, SamplingConfig(max_new_tokens=new), sink(i))
    for _ in prompts:
        left.acquire()
    sched.close()
    firsts, lasts = [s[0] for s in stamps if s], [s[-1] for s in stamps if s]
    decoded = sum(max(len(s) - 1, 0) for s in stamps)
    span = max(lasts) - min(firsts) if firsts else float("nan")
    # steady state: each sequence gets one token per round, so N / the median gap of the rounds' second half
    gaps = [b - a for s in stamps for a, b in list(zip(s, s[1:]))[len(s) // 2:]]
    row = {"kind": kind, "graphs": graphs, "compile": compile and graphs, "sequences": len(prompts),
           "tokens": [len(s) for s in stamps],
           "wall_s": time.perf_counter() - start, "decode_tok_s": decoded / span if span > 0 else float("nan"),
           "steady_tok_s": len(prompts) / statistics.median(gaps) if gaps else float("nan")}
    torch.cuda.empty_cache()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--kinds", default="turbo4,f16")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model instead of the 8B shape (a quick check)")
    ap.add_argument("--graphs-only", action="store_true", help="skip the eager rows (one sequence and serve's)")
    ap.add_argument("--graph-sinks", default="",
                    help="comma-separated fp16 sink counts for extra graphed compressed rows (the default: 4), "
                         "'plain' (no sinks, no key centering), 'scaled' (scale_keys on) or 'two-launch' (the default "
                         "cache, sinks merged by a second launch: backend.FUSE_SINKS off)")
    ap.add_argument("--serve", type=int, default=0, help="also N concurrent sequences through the scheduler")
    ap.add_argument("--serve-only", action="store_true", help="with --serve: skip the one-sequence runs")
    ap.add_argument("--compile", action="store_true",
                    help="graphed rows (and serve's) run the model's own code through torch.compile, as "
                         "run/serve --graphs --compile do")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    import compactkv
    from compactkv.bench.e2e import build_model
    model, shape = build_model(args.tiny, torch.device("cuda"))
    compactkv.attach(model)
    lm = _lm(model)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, shape["vocab_size"], (args.prompt,), generator=gen).tolist()
    rows = []
    for kind in args.kinds.split(",") if not (args.serve and args.serve_only) else []:
        for graphs in (False, True) if not args.graphs_only else (True,):
            _one(lm, kind, graphs, prompt[:64], 8, compile=args.compile)  # warm-up: compiles
            rows.append(_one(lm, kind, graphs, prompt, args.new, compile=args.compile))
            r = rows[-1]
            print(f"{kind:7s} {'graphs' if graphs else 'eager ':6s} prefill {r['prompt_s']:.3f} s  decode "
                  f"{r['decode_tok_s']:7.1f} tok/s  steady {r['steady_ms']:6.2f} ms/token", flush=True)
    info = {"card": torch.cuda.get_device_name(), "commit": commit(), "shape": "tiny" if args.tiny else "llama-3.1-8b",
            "compile": args.compile,
            "prompt": args.prompt, "new": args.new, "rows": rows}
    for kind in args.kinds.split(",") if rows and not args.graphs_only else []:
        e, g = (next(r for r in rows if r["kind"] == kind and r["graphs"] == x and r["sinks"] is None)
                for x in (False, True))
        # (compressed kinds: the eager cache keeps fp16 sink/recent windows, the static one does not, so their
        # tokens may differ; f16: the same attention over the same values)
        same = e["tokens"] == g["tokens"]
        info.setdefault("same_tokens", {})[kind] = same
        print(f"{kind}: graphs/eager steady speed {e['steady_ms'] / g['steady_ms']:.2f}x, same tokens: {same}")
    sink_counts = ([x if x in ("plain", "scaled", "two-launch") else int(x) for x in args.graph_sinks.split(",")]
                   if args.graph_sinks else [])
    for kind in (k for k in args.kinds.split(",") if k != "f16" and sink_counts):
        default = next((x for x in rows if x["kind"] == kind and x["graphs"] and x["sinks"] is None), None)
        for n in sink_counts:
            _one(lm, kind, True, prompt[:64], 8, n, compile=args.compile)
            rows.append(_one(lm, kind, True, prompt, args.new, n, compile=args.compile))
            r = rows[-1]
            same = default is not None and r["tokens"] == default["tokens"]
            label = n if n in ("plain", "scaled", "two-launch") else f"{n} fp16 sinks"
            print(f"{kind:7s} graphs, {label}: steady {r['steady_ms']:6.2f} ms/token (same tokens as the default "
                  f"graphed row: {same})", flush=True)
    base = next((r for r in rows if r["kind"] == "f16" and not r["graphs"]), None)
    if base:
        for r in rows:
            print(f"  {r['kind']} {'graphs' if r['graphs'] else 'eager'}: {base['steady_ms'] / r['steady_ms']:.2f}x "
                  f"the f16 eager steady tok/s")
    if args.serve:
        info["serve"] = []
        prompts = [torch.randint(0, shape["vocab_size"], (args.prompt,), generator=gen).tolist()
                   for _ in range(args.serve)]
        for kind in args.kinds.split(","):
            for graphs in (False, True) if not args.graphs_only else (True,):
                context = args.prompt + args.new  # the warm-up's caches too: the same strides, the same compiles
                _serve(lm, kind, graphs, [p[:64] for p in prompts], 8, context, args.compile)
                r = _serve(lm, kind, graphs, prompts, args.new, context, args.compile)
                info["serve"].append(r)
                print(f"serve x{args.serve} {kind:7s} {'graphs' if graphs else 'eager ':6s} decode "
                      f"{r['decode_tok_s']:7.1f} tok/s (all sequences; steady {r['steady_tok_s']:7.1f})  wall "
                      f"{r['wall_s']:.1f} s", flush=True)
    info["command"] = "python " + " ".join(sys.argv)  # (write_json's default names the compactkv CLI)
    write_json(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
