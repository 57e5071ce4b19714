"""Where a decode step's time goes (issue 7): torch.profiler over greedy decode steps of a random-weight
Llama-3.1-8B-shaped model after a real prefill, for DynamicCache+SDPA (f16) and TurboQuantCache kinds.

    PYTHONPATH=. python scripts/profile_step.py --batch 1 --context 32768 --kinds f16,turbo4 --json out.json

With --static, the caches are static (compactkv.cache.static; kinds f16, f16-nomask, turbo*), filled synthetically
and stepped eagerly by engine/graphs.GreedyStepGraph; --graph captures the step and profiles its replays instead;
--compile runs the model's code through torch.compile first (engine/graphs.compiled_model);
--launches NAME prints the duration of every launch of the kernels whose name holds NAME (eager, then replayed).
With --prefill, profiles the chunked prefill instead (a second prefill into a fresh cache, after an unprofiled
one that pays the kernels' compilation): per-prefill totals; with --static too, into static caches.

Prints, per kind: the median step time without the profiler, the profiled step's CPU time and GPU busy time (the
sum of its kernels), the operators with the largest self CPU time (host cost) and the kernels with the largest
device time.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
import traceback
import warnings

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import compactkv
from compactkv.bench.e2e import build_model, decode, make_cache, prefill, static_fill, timed_steps
from compactkv.engine.caches import cache_kwarg
from compactkv.engine.graphs import GreedyStepGraph, static_cache


def sync_stacks(fn) -> list[tuple[int, str]]:
    """Run fn() under torch.cuda.set_sync_debug_mode("warn"); (count, stack) of each distinct Python stack (the
    frames in compactkv, transformers and this script, innermost last) that made a synchronizing CUDA call."""
    seen: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1]
                      if any(k in f.filename for k in ("compactkv", "transformers", "profile_step"))]
            seen["\n".join(f"    {f.filename.split('/')[-1]}:{f.lineno} {f.name}: {f.line}" for f in frames[-8:])] += 1
    old = warnings.showwarning
    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        warnings.showwarning = old
    return sorted(((n, k) for k, n in seen.items()), reverse=True)


def print_launches(label: str, prof, name: str) -> None:
    """Durations (us) of the kernels whose name holds `name`, in launch order, and the idle time before each."""
    evs = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    durs, gaps, prev_end = [], [], None
    for e in evs:
        if name in e.name:
            durs.append(e.time_range.elapsed_us())
            gaps.append(e.time_range.start - prev_end if prev_end is not None else 0)
        prev_end = e.time_range.end
    print(f"  {label}: {len(durs)} launches of *{name}*, us: " + " ".join(f"{d:.0f}" for d in durs))
    print(f"  {label}: idle before each, us: " + " ".join(f"{g:.0f}" for g in gaps))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=32768)
    p.add_argument("--chunk", type=int, default=16384)
    p.add_argument("--kinds", default="f16,turbo4")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=14)
    p.add_argument("--prefill", action="store_true", help="profile the prefill, not decode steps")
    p.add_argument("--static", action="store_true", help="static caches, synthetic fill (see above)")
    p.add_argument("--graph", action="store_true", help="with --static: capture the step, profile its replays")
    p.add_argument("--compile", action="store_true",
                   help="with --static: the model's code through torch.compile (engine.graphs.compiled_model)")
    p.add_argument("--launches", default="", help="print each launch's duration (us) of kernels whose name holds "
                                                   "this, in order (with --static --graph: eager, then replays)")
    p.add_argument("--sync-stacks", action="store_true",
                   help="with --prefill: also print where the prefill synchronizes (torch sync debug mode)")
    p.add_argument("--json")
    args = p.parse_args()
    if args.compile and (args.prefill or not args.static):
        p.error("--compile profiles static decode steps: add --static, drop --prefill")
    if args.sync_stacks and not args.prefill:
        p.error("--sync-stacks looks at a prefill: add --prefill")
    dev = torch.device("cuda")
    model, shape = build_model(False, dev)
    kw = cache_kwarg(model)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = None if args.static and not args.prefill else torch.randint(0, shape["vocab_size"], (args.batch, args.context),
                                                 generator=g).to(dev)
    report = {"card": torch.cuda.get_device_name(), "args": vars(args), "kinds": {}}
    for kind in args.kinds.split(","):
        chunk = max(256, args.chunk // args.batch)
        if args.static and not args.prefill:
            compactkv.attach(model)
            cache = static_cache(model, kind, args.batch, args.context + 32 + args.steps)
            static_fill(cache, args.context)
            dec = GreedyStepGraph(model, cache, torch.zeros(args.batch, 1, dtype=torch.long, device=dev),
                                  compile=args.compile)

            def steps(n):
                return timed_steps(dec.step, n, dev)
            plain = steps(10)[2:]
            if args.launches:
                with profile(activities=[ProfilerActivity.CUDA]) as p_eager:
                    steps(1)
                print_launches("eager", p_eager, args.launches)
            if args.graph:
                dec.capture(warmup=1)
                plain = steps(10)[2:]
                if args.launches:
                    with profile(activities=[ProfilerActivity.CUDA]) as p_graph:
                        steps(1)
                    print_launches("graph", p_graph, args.launches)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                steps(args.steps)
        elif args.prefill:
            if args.static:
                compactkv.attach(model)

            def new_cache():
                return static_cache(model, kind, args.batch, args.context + 32) if args.static \
                    else make_cache(model, kind)
            cache = new_cache()
            tok = prefill(model, cache, ids, chunk, kw)
            del cache
            torch.cuda.empty_cache()
            cache = new_cache()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            prefill(model, cache, ids, chunk, kw)
            torch.cuda.synchronize()
            plain = [time.perf_counter() - t0]
            del cache
            torch.cuda.empty_cache()
            cache = new_cache()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                prefill(model, cache, ids, chunk, kw)
                torch.cuda.synchronize()
            args.steps = 1
            if args.sync_stacks:
                del cache
                torch.cuda.empty_cache()
                cache = new_cache()
                stacks = sync_stacks(lambda: prefill(model, cache, ids, chunk, kw))
                print(f"== {kind}: {sum(n for n, _ in stacks)} synchronizing calls in one prefill")
                for n, k in stacks:
                    print(f"  {n} x\n{k}")
                report.setdefault("sync_stacks", {})[kind] = stacks
        else:
            cache = make_cache(model, kind)
            tok = prefill(model, cache, ids, chunk, kw)
            plain = decode(model, cache, tok, 10, kw, dev)[2:]
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                decode(model, cache, tok, args.steps, kw, dev)
        ev = prof.key_averages()
        kernels = [e for e in ev if e.device_type == DeviceType.CUDA]  # device events only: an operator's
        cpu_rows = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.top]  # time is its kernels'
        gpu_rows = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:args.top]
        gpu_total = sum(e.self_device_time_total for e in kernels) / args.steps / 1e3
        cpu_total = sum(e.self_cpu_time_total for e in ev) / args.steps / 1e3
        info = {"step_ms_median": statistics.median(plain) * 1e3, "profiled_cpu_ms_per_step": cpu_total,
                "profiled_gpu_ms_per_step": gpu_total,
                "top_cpu": [(e.key, e.count // args.steps, e.self_cpu_time_total / args.steps / 1e3) for e in cpu_rows],
                "top_gpu": [(e.key, e.count // args.steps, e.self_device_time_total / args.steps / 1e3)
                            for e in gpu_rows]}
        report["kinds"][kind] = info
        what = "prefill" if args.prefill else "step"
        print(f"== {kind}: {what} {info['step_ms_median']:.2f} ms (median, no profiler); profiled per {what}: "
              f"self CPU {cpu_total:.1f} ms, GPU busy {gpu_total:.1f} ms")
        print("  host (self CPU ms/step, calls/step):")
        for k, n, t in info["top_cpu"]:
            print(f"    {t:7.2f} {n:6d}  {k[:70]}")
        print("  device kernels (ms/step, launches/step):")
        for k, n, t in info["top_gpu"]:
            print(f"    {t:7.2f} {n:6d}  {k[:70]}")
        del cache
        dec = None
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
