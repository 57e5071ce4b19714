"""Decode-kernel variants on one GPU: the fast kernel's settings vs the split kernel vs fp16 SDPA (CUDA graphs).

    python scripts/decode_sweep.py [--json PATH] [--shapes 8x32768,1x131072] [--kinds turbo4,turbo3,turbo2]

Prints one line per (shape, kind, variant): median µs of CUDA-graph replays of the whole decode step (query
rotation, kernel, split merge, inverse rotation), x = SDPA / ours, GB/s on the compressed K+V bytes.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


VARIANTS = [
    {"fast": False},
    {"fast": True, "block_n": 64, "num_warps": 4, "prefetch": False},
    {"fast": True, "block_n": 64, "num_warps": 4, "prefetch": True},
    {"fast": True, "block_n": 64, "num_warps": 8, "prefetch": True},
    {"fast": True, "block_n": 128, "num_warps": 8, "prefetch": False},
    {"fast": True, "block_n": 32, "num_warps": 4, "prefetch": False},
    {"fast": True, "block_n": 64, "num_warps": 4, "prefetch": False, "splits_per_sm": 8.0},
    {"fast": True, "block_n": 64, "num_warps": 4, "prefetch": False, "splits_per_sm": 2.0},
    {"fast": True, "block_n": 32, "num_warps": 4, "prefetch": False, "splits_per_sm": 8.0},
]


def main(argv=None) -> int:
    import triton.testing as tt
    import torch.nn.functional as F
    from compactkv.bench.kernels import HEAD_DIM, HKV, HQ, decode_step
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--shapes", default="8x32768,1x131072")
    ap.add_argument("--kinds", default="turbo4,turbo3,turbo2")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name(dev)
    rows = []
    for shape in args.shapes.split(","):
        b, t = (int(x) for x in shape.split("x"))
        q = torch.randn(b, HQ, 1, HEAD_DIM, device=dev, dtype=torch.float16)
        k = torch.randn(b, HKV, t, HEAD_DIM, device=dev, dtype=torch.float16)
        v = torch.randn_like(k)
        sdpa = tt.do_bench_cudagraph(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), rep=100,
                                     return_mode="median") * 1e3
        del k, v
        print(f"{card} B={b} T={t}: SDPA fp16 {sdpa:.1f} us (graph)", flush=True)
        for kind in args.kinds.split(","):
            for var in VARIANTS:
                try:
                    step, nbytes = decode_step(kind, b, t, dev, **var)
                    us = tt.do_bench_cudagraph(step, rep=100, return_mode="median") * 1e3
                except Exception as e:  # a variant that does not compile must not hide the others
                    print(f"  {kind} {var}: FAILED {repr(e)[:200]}", flush=True)
                    continue
                r = {"batch": b, "context": t, "kind": kind, **var, "us": us, "sdpa_us": sdpa,
                     "x": sdpa / us, "gbps": nbytes / us / 1e3}
                rows.append(r)
                print(f"  {kind:7s} {str(var):90s} {us:8.1f} us  x{sdpa / us:5.2f}  {nbytes / us / 1e3:6.0f} GB/s",
                      flush=True)
                del step
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
