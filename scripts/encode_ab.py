"""A/B of the dynamic cache's encoder on CUDA: Codec.encode in torch vs the Triton encode kernel (issue 7).

Random-weight Llama-3.1-8B-shaped model (bf16, built on the GPU, no download). For each variant: one-prompt
prefill (B=1, T tokens, fed in chunks of --chunk tokens) and greedy decode steps, plus the time of one
`_compress` call of a prefill chunk's K/V for one layer. Prints a table; --json writes the figures.

    PYTHONPATH=. python scripts/encode_ab.py --context 32768 --chunk 16384 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import compactkv.attention.dispatch as dispatch
from compactkv.bench.e2e import build_model, decode, make_cache, prefill
from compactkv.cache.layer import TurboQuantLayer, set_encoder_factory
from compactkv.engine.caches import cache_kwarg


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--context", type=int, default=32768)
    p.add_argument("--chunk", type=int, default=16384)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--kinds", default="turbo4,turbo3")
    p.add_argument("--json")
    args = p.parse_args()
    dev = torch.device("cuda")
    model, shape = build_model(False, dev)
    kw = cache_kwarg(model)
    install = dispatch._install_encoder
    rows = []
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (1, args.context), generator=g).to(dev)
    variants = [("f16", "-")] + [(k, e) for k in args.kinds.split(",") for e in ("torch", "triton")]
    for kind, enc in variants * 2:  # every variant twice; the second pass is the one reported (JIT warm)
        dispatch._install_encoder = install if enc != "torch" else (lambda layer, query, backend: None)
        set_encoder_factory(dispatch.encoder_for if enc != "torch" else (lambda x: None))  # (first updates too)
        cache = make_cache(model, kind)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tok = prefill(model, cache, ids, args.chunk, kw)
        torch.cuda.synchronize()
        pre = time.perf_counter() - t0
        steps = decode(model, cache, tok, args.steps + 2, kw, dev)[2:]
        rows = [r for r in rows if (r["kind"], r["encoder"]) != (kind, enc)]
        rows.append({"kind": kind, "encoder": enc, "prefill_s": pre, "step_ms": statistics.median(steps) * 1e3})
        del cache
        torch.cuda.empty_cache()
    dispatch._install_encoder = install
    set_encoder_factory(dispatch.encoder_for)
    # one layer's compression of a prefill chunk (B=1, 8 KV heads, chunk tokens, head_dim 128)
    k = torch.randn(1, 8, args.chunk, 128, dtype=torch.bfloat16, device=dev)
    v = torch.randn_like(k)
    from compactkv.attention.triton.encode import layer_encoder
    comp = []
    for kind in args.kinds.split(","):
        for enc in ("torch", "triton"):
            ts = []
            for _ in range(6):
                layer = TurboQuantLayer(kind, kind, 128, residual_length=0, block_size=1, scale_keys=False)
                layer.encoder = layer_encoder if enc == "triton" else None
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                layer.update(k, v)
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
            comp.append({"kind": kind, "encoder": enc, "update_ms": statistics.median(ts[1:]) * 1e3})
    card = torch.cuda.get_device_name()
    print(f"card: {card}; model: random Llama-3.1-8B shape, bf16; B=1 T={args.context}, prefill chunks of "
          f"{args.chunk}; decode median of {args.steps} steps (no CUDA graphs)")
    f16 = next(r for r in rows if r["kind"] == "f16")
    print(f"{'kind':8} {'encoder':8} {'prefill s':>10} {'x f16':>6} {'step ms':>8} {'x f16':>6}")
    for r in rows:
        print(f"{r['kind']:8} {r['encoder']:8} {r['prefill_s']:10.3f} {r['prefill_s'] / f16['prefill_s']:6.2f} "
              f"{r['step_ms']:8.2f} {r['step_ms'] / f16['step_ms']:6.2f}")
    print(f"one layer update of [1, 8, {args.chunk}, 128] K and V (everything compressed):")
    for r in comp:
        print(f"  {r['kind']:8} {r['encoder']:8} {r['update_ms']:8.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "args": vars(args), "e2e": rows, "update": comp}, f, indent=1)


if __name__ == "__main__":
    main()
