"""Decode-kernel variants on one GPU: the fast kernel's settings vs the split kernel vs fp16 SDPA (CUDA graphs).

    python scripts/decode_sweep.py [--json PATH] [--shapes 8x32768,1x131072] [--kinds turbo4,turbo3,turbo2]

Prints one line per (shape, kind, variant): median µs of CUDA-graph replays of the whole decode step as the backend runs it (query
rotation, kernel, split merge, inverse rotation), x = SDPA / ours, GB/s on the compressed K+V bytes, and the
relative error of the variant's output against the first variant's on the same rows and query.
--variants takes a JSON list of attend_packed keyword sets (e.g. '[{"fast": false}, {}, {"maxnreg": 128}]').
With --kernels, each variant's step is also run eagerly under torch.profiler: the device time of each of its
kernels (median over the profiled steps), to split a step's time into the decode kernel and what surrounds it.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


VARIANTS = [
    {"fast": False},
    {},
    {"block_n": 64, "num_warps": 8},
    {"block_n": 128, "num_warps": 8},
    {"block_n": 32, "num_warps": 4},
    {"splits_x": 0.5},
    {"splits_x": 2.0},
]


def _kernel_args(var: dict, b: int, t: int, dev) -> dict:
    """splits_x: that multiple of the fast kernel's default split count (head_dim 128, register cap: at least 4
    programs per SM)."""
    from compactkv.attention.triton.decode import FAST_MIN_SPLIT, choose_splits
    from compactkv.bench.kernels import HKV
    var = dict(var)
    x = var.pop("splits_x", None)
    if x is not None:
        var["num_splits"] = max(1, round(x * choose_splits(b * HKV, t, 64, dev, 8.0, FAST_MIN_SPLIT, 4)))
    return var


def kernel_times(step, n: int = 5) -> list[tuple[str, float]]:
    """(kernel name, median µs) of each kernel launched by step(), in launch order (eager, torch.profiler)."""
    import statistics
    from torch.autograd import DeviceType
    from compactkv.bench.kernels import profile_kernels
    prof = profile_kernels(step, n)
    evs = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    per = len(evs) // n
    names = [e.name for e in evs[:per]]
    return [(names[i][:60], statistics.median(evs[j * per + i].time_range.elapsed_us() for j in range(n)))
            for i in range(per)]


def main(argv=None) -> int:
    import triton.testing as tt
    import torch.nn.functional as F
    from compactkv.bench.kernels import HEAD_DIM, HKV, HQ, commit, decode_step, parse_shapes
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--shapes", default="8x32768,1x131072")
    ap.add_argument("--kinds", default="turbo4,turbo2")
    ap.add_argument("--variants", help="JSON list of attend_packed keyword sets (default: VARIANTS)")
    ap.add_argument("--head-dim", type=int, default=HEAD_DIM, help="head_dim of queries and rows (default 128)")
    ap.add_argument("--kernels", action="store_true", help="also each kernel's device time (eager, profiler)")
    args = ap.parse_args(argv)
    from compactkv.attention.triton.decode import HEAD_DIMS
    if args.head_dim not in HEAD_DIMS:
        ap.error(f"--head-dim {args.head_dim}: the kernels take {', '.join(map(str, HEAD_DIMS))}")
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(f"--shapes: {e}")
    try:
        variants = json.loads(args.variants) if args.variants else VARIANTS
    except ValueError as e:
        ap.error(f"--variants {args.variants!r}: not JSON ({e})")
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        ap.error(f"--variants {args.variants!r}: a JSON list of objects (attend_packed keyword sets)")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name(dev)
    rows = []
    for b, t in shapes:
        d = args.head_dim
        q = torch.randn(b, HQ, 1, d, device=dev, dtype=torch.float16)
        k = torch.randn(b, HKV, t, d, device=dev, dtype=torch.float16)
        v = torch.randn_like(k)
        torch.cuda.synchronize()  # do_bench_cudagraph runs on a side stream that does not wait for randn
        sdpa = tt.do_bench_cudagraph(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), rep=100,
                                     return_mode="median") * 1e3
        del k, v
        print(f"{card} B={b} T={t} d={d}: SDPA fp16 {sdpa:.1f} us (graph)", flush=True)
        for kind in args.kinds.split(","):
            ref = None  # output of the first variant (the split kernel by default)
            for var in variants:
                try:
                    torch.manual_seed(1234)  # same rows and query for every variant: outputs are compared
                    step, nbytes = decode_step(kind, b, t, dev, head_dim=d, **_kernel_args(var, b, t, dev))
                    out = step().float()
                    if ref is None:
                        ref = out
                    err = ((out - ref).norm() / ref.norm()).item() if torch.isfinite(out).all() else float("inf")
                    us = tt.do_bench_cudagraph(step, rep=100, return_mode="median") * 1e3
                except Exception as e:  # a variant that does not compile must not hide the others
                    print(f"  {kind} {var}: FAILED {repr(e)[:200]}", flush=True)
                    continue
                r = {"batch": b, "context": t, "head_dim": d, "kind": kind, **var, "us": us, "sdpa_us": sdpa,
                     "x": sdpa / us, "gbps": nbytes / us / 1e3, "rel_err_vs_first": err}
                if args.kernels:
                    r["kernels_us"] = kernel_times(step)
                rows.append(r)
                if args.json:  # after every row: a run cut short by a time limit keeps what it measured
                    with open(args.json, "w") as f:
                        json.dump({"card": card, "commit": commit(), "rows": rows}, f, indent=1)
                print(f"  {kind:7s} {str(var):40s} {us:8.1f} us  x{sdpa / us:5.2f}  {nbytes / us / 1e3:6.0f} GB/s"
                      f"  err {err:.1e}", flush=True)
                for name, k_us in r.get("kernels_us", []):
                    print(f"      {k_us:8.1f} us  {name}", flush=True)
                del step
    return 0


if __name__ == "__main__":
    sys.exit(main())
