"""Why the fast decode kernel runs slower inside a captured model step than alone (issue 7 diagnostic).

Inside the captured decode step of the random Llama-3.1-8B-shaped model (B=8, T=32K, turbo4) the torch profiler
shows decode_fast_kernel at ~377 us per call against ~247 us eager and in the kernel sweep's graphs. This times the
kernel (torch profiler, device events) in four settings over 32 static layers of that shape:

    eager      attention of each layer, host-issued, device idle between calls
    graph      the 32 attention calls captured back to back
    graph+mm   each call preceded by bf16 GEMMs streaming as many weight bytes as one decoder layer (~436 MB)
    graph+enc  each call preceded by the layer's K and V encode (the static layer's update)

--model builds the model and a static cache instead, records each layer's query during one eager step, and times
the kernel in: eager model steps, the captured model step, and a graph of the 32 attention calls alone on those
recorded queries (same layers, same values).

    PYTHONPATH=. python scripts/graph_neighbors.py [--batch 8] [--context 32768] [--kind turbo4] [--model]
"""

from __future__ import annotations

import argparse

import torch
from torch.autograd import DeviceType
from transformers import LlamaConfig

from compactkv.attention.triton.backend import triton_attention
from compactkv.bench.kernels import profile_kernels
from compactkv.attention.triton.encode import encode_into
from compactkv.bench.e2e import static_fill
from compactkv.cache.static import StaticKVCache, StaticTurboQuantLayer


def kernel_us(fn, reps: int = 3) -> dict[str, float]:
    """Mean device time per launch (us) of each kernel name run by fn()."""
    prof = profile_kernels(fn, reps)
    return {e.key: e.self_device_time_total / e.count for e in prof.key_averages()
            if e.device_type == DeviceType.CUDA and e.count}


def model_settings(args) -> None:
    import compactkv
    from compactkv.attention.triton import backend
    from compactkv.bench.e2e import build_model
    from compactkv.engine.graphs import GreedyStepGraph, static_cache

    model, _ = build_model(False, torch.device("cuda"))
    compactkv.attach(model)
    cache = static_cache(model, args.kind, args.batch, args.context + 64)
    static_fill(cache, args.context)
    dec = GreedyStepGraph(model, cache, torch.zeros(args.batch, 1, dtype=torch.long, device="cuda"))
    for _ in range(3):
        dec.step()
    seen = []
    real = backend.triton_attention

    def record(layer, query, *a, **k):
        seen.append((layer, query.clone()))
        return real(layer, query, *a, **k)

    backend.triton_attention = record
    try:
        dec.step()
    finally:
        backend.triton_attention = real
    d = seen[0][1].shape[-1]

    def attend_recorded():
        for layer, q in seen:
            real(layer, q, None, d ** -0.5)

    rows = {"eager model": kernel_us(dec.step, 1), "eager attn": kernel_us(attend_recorded)}
    graph = torch.cuda.CUDAGraph()
    attend_recorded()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        attend_recorded()
    rows["graph attn"] = kernel_us(graph.replay)
    dec.capture(warmup=1)
    rows["graph model"] = kernel_us(dec.step, 1)
    rows["graph attn again"] = kernel_us(graph.replay)
    # the carveout hypothesis: ask for the largest shared-memory carveout on every compiled decode kernel, recapture
    import ctypes
    from compactkv.attention.triton.kernels_fast import decode_fast_kernel
    cuda = ctypes.CDLL("libcuda.so.1")
    for entry in decode_fast_kernel.device_caches.values():
        for k in entry[0].values():
            k._init_handles()
            rc = cuda.cuFuncSetAttribute(ctypes.c_void_p(k.function), 9, 100)  # PREFERRED_SHARED_MEMORY_CARVEOUT
            print(f"decode_fast_kernel variant: shared {k.metadata.shared} B, {k.n_regs} registers, "
                  f"{k.metadata.num_warps} warps; carveout set rc={rc}")
    dec2 = GreedyStepGraph(model, cache, torch.zeros(args.batch, 1, dtype=torch.long, device="cuda"))
    dec2.capture(warmup=1)
    rows["graph model carveout"] = kernel_us(dec2.step, 1)
    rows["eager model carveout"] = kernel_us(lambda: dec2._forward(), 1)
    print(f"{torch.cuda.get_device_name()} B={args.batch} T={args.context} {args.kind}, model: us per launch; "
          f"query dtype {seen[0][1].dtype}, strides {seen[0][1].stride()}, finite {bool(seen[0][1].isfinite().all())}")
    for k in sorted({k for r in rows.values() for k in r if "decode" in k or "encode" in k}):
        print(f"{k[:30]:30s} " + " ".join(f"{n}: {rows[n].get(k, float('nan')):7.1f}" for n in rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--kind", default="turbo4")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--model", action="store_true")
    args = ap.parse_args()
    if args.model:
        return model_settings(args)
    b, hkv, g, d, t = args.batch, 8, 4, 128, args.context
    layers = [StaticTurboQuantLayer(args.kind, args.kind, d, b, hkv, t + 64, encode=encode_into)
              for _ in range(args.layers)]
    static_fill(StaticKVCache(LlamaConfig(), layers), t)  # (the config is not read by the fill)
    q = torch.randn(b, hkv * g, 1, d, device="cuda", dtype=torch.bfloat16)
    kn = torch.randn(b, hkv, 1, d, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(b, 4096, device="cuda", dtype=torch.bfloat16)
    w = [torch.randn(4096, 53248, device="cuda", dtype=torch.bfloat16) for _ in range(2)]  # 2 x 436 MB

    def attend_all():
        for layer in layers:
            triton_attention(layer, q, None, d ** -0.5)

    def with_mm():
        for i, layer in enumerate(layers):
            x @ w[i % 2]
            triton_attention(layer, q, None, d ** -0.5)

    def with_encode():
        for layer in layers:
            layer.encode(layer.k_codec, kn, layer.k_target, layer.lengths)
            layer.encode(layer.v_codec, kn, layer.v_target, layer.lengths)
            triton_attention(layer, q, None, d ** -0.5)

    rows = {"eager": kernel_us(attend_all)}
    for name, fn in (("graph", attend_all), ("graph+mm", with_mm), ("graph+enc", with_encode)):
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        rows[name] = kernel_us(graph.replay)
    print(f"{torch.cuda.get_device_name()} B={b} T={t} {args.kind}, {args.layers} layers: us per launch")
    names = sorted({k for r in rows.values() for k in r if "decode" in k or "encode" in k or "nvjet" in k})
    print(f"{'kernel':50s} " + " ".join(f"{n:>10s}" for n in rows))
    for k in names:
        print(f"{k[:50]:50s} " + " ".join(f"{rows[n].get(k, float('nan')):10.1f}" for n in rows))


if __name__ == "__main__":
    main()
