"""What one static layer's decode-step write costs (CUDA graphs): plain rows vs centered keys vs fp16 sinks.

    python scripts/static_update_bench.py [--heads 8] [--head-dim 128] [--context 1024] [--steps 32] [--json PATH]

Per variant a StaticTurboQuantLayer (turbo4, planar where the decode kernels read planes) is prefilled with
--context random bf16 tokens (then shown random queries, which fix scale_keys' key scale), then --steps one-token
updates (encode K and V at the device-side counts) are
captured in one CUDA graph and replayed; reported: microseconds per update (median of 20 replays / steps), so the
difference between variants is what centering, sinks (a second count) and the key scale add per layer and step
(the encode kernel picked by `encode_rows`' auto rule; COMPACTKV_ENCODE_KERNEL=lanes forces the lanes kernel).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from compactkv.bench.common import write_json  # noqa: E402
from compactkv.bench.provenance import commit  # noqa: E402


def one(variant: dict, heads: int, d: int, context: int, steps: int) -> float:
    from compactkv.attention.triton.encode import encode_into
    from compactkv.cache.static import StaticTurboQuantLayer
    layer = StaticTurboQuantLayer("turbo4", "turbo4", d, 1, heads, context + steps + 8, device="cuda",
                                  encode=encode_into, **variant)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, heads, context, d, device="cuda", dtype=torch.bfloat16, generator=g)
    layer.update(x, x.clone())
    layer.observe(torch.randn(1, heads * 4, context, d, device="cuda", dtype=torch.bfloat16, generator=g))
    # a decode step's K/V: a view of a [B, 1, H, D] projection, as the model hands them over
    k = torch.randn(1, 1, heads, d, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    v = torch.randn_like(k)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        layer.update(k, v)  # warm-up: compiles
    torch.cuda.current_stream().wait_stream(side)
    base = layer.cumulative_length
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            layer.update(k, v)
    times = []
    for _ in range(20):
        layer.crop(base)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / steps)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    variants = {"plain": dict(center_keys=False), "centered": dict(center_keys=True),
                "centered + 4 sinks": dict(center_keys=True, sink_tokens=4),
                "centered + 4 sinks + scaled": dict(center_keys=True, sink_tokens=4, scale_keys=True)}
    rows = []
    for name, variant in variants.items():
        us = one(variant, args.heads, args.head_dim, args.context, args.steps)
        rows.append({"variant": name, "us_per_update": us})
        print(f"{name:20s} {us:7.2f} us per layer update (K and V, one token)", flush=True)
    write_json(args.json, {"card": torch.cuda.get_device_name(), "commit": commit(), "heads": args.heads,
                           "head_dim": args.head_dim, "context": args.context, "steps": args.steps, "rows": rows,
                           "command": "python " + " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
