"""Host (Python + launch) cost of one layer's decode step on CUDA, compressed vs fp16 (issue 7).

One Llama-3.1-8B-shaped attention layer (8 KV heads, 32 query heads, head_dim 128) at --context tokens, B=--batch:
per call, the compressed path (TurboQuantLayer.update of one token + compactkv's attention function, cache
defaults: a compression of 32 tokens every 32 calls) and the fp16 path (DynamicLayer update, which copies the whole
history, + transformers' SDPA attention function without cuDNN), each timed over --calls calls with one
synchronize at the end (wall time per call; the device work per call is far shorter than the host work at B=1),
then the compressed path under cProfile (top functions by own time).

    PYTHONPATH=. python scripts/host_overhead.py --json out.json
    PYTHONPATH=. python scripts/host_overhead.py --device cpu --stub-launches   # glue only, any machine

--stub-launches (for a CPU run): the compressed path goes through the Triton backend's host code (query map,
chunk tables, split choice, buffers, window handling) with every Triton launch replaced by a no-op and the encode
kernel by a stand-in returning zero rows: what is timed is the Python and torch-op work around the kernels,
without Triton's launcher (~2 launches per call) or a GPU. A proxy for comparing versions of the glue code on a
CPU, not a GPU figure.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class _NoLaunch:
    """Stands in for a Triton kernel: kernel[grid](...) does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _stub_launches() -> None:
    from compactkv.attention import dispatch
    from compactkv.attention.triton import backend, decode
    for name in ("decode_fast_kernel", "decode_split_kernel", "decode_finish_kernel", "decode_reduce_kernel"):
        if hasattr(decode, name):
            setattr(decode, name, _NoLaunch())
    backend.why_not_triton = lambda *a, **k: None
    dispatch.triton_unavailable = lambda *a, **k: None
    # the table kernel over rows (gluon.launch_rows): its launch a no-op too, on a "device" with 132 SMs
    from types import SimpleNamespace
    from compactkv.attention.triton import gluon, kernels_lut

    class _NoLut(_NoLaunch):  # returns what the launcher checks: the shared memory a real build would use
        def __getitem__(self, grid):
            return lambda *a, **k: SimpleNamespace(metadata=SimpleNamespace(
                shared=gluon.lut_smem(k["W"], k["D"], k["PIPE"], k["BN"], k["BITS"], k["FUSED"])))
    kernels_lut.decode_lut_kernel = _NoLut()
    backend.gluon_device_error = lambda *a, **k: None
    decode._sm_count = lambda *a, **k: 132
    gluon._sm_count = decode._sm_count


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=32768)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--kind", default="turbo4")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only checks the script (torch reference)")
    p.add_argument("--stub-launches", action="store_true",
                   help="time the Triton backend's host code with no-op launches (see the module docstring)")
    p.add_argument("--ops", action="store_true",
                   help="also count the torch operators per compressed call (torch.profiler; on a GPU each is a "
                        "launch or an allocation the host pays for)")
    p.add_argument("--json")
    args = p.parse_args()
    if args.stub_launches:
        _stub_launches()
    from transformers.cache_utils import DynamicLayer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from compactkv.attention.interface import compactkv_attention_forward
    from compactkv.bench.kernels import random_rows
    from compactkv.cache.config import CacheConfig
    from compactkv.cache.layer import TurboQuantLayer

    dev, b, hkv, hq, d, t = torch.device(args.device), args.batch, 8, 32, 128, args.context
    bf = torch.bfloat16
    module = torch.nn.Module()
    module.is_causal, module.training, module.num_key_value_groups = True, False, hq // hkv

    cfg = CacheConfig(k=args.kind, v=args.kind)  # the cache defaults: 4 sinks, 128-token window, blocks of 32
    layer = TurboQuantLayer(args.kind, args.kind, d, sink_tokens=cfg.sink_tokens, residual_length=cfg.residual_length,
                            block_size=cfg.block_size, chunk_tokens=cfg.chunk_tokens,
                            unbiased_keys=cfg.unbiased_keys)
    if args.stub_launches:
        layer.encoder = lambda codec, x: torch.zeros(*x.shape[:-1], codec.row_bytes, dtype=torch.uint8,
                                                     device=x.device)
    layer.update(torch.randn(b, hkv, 4 + 128, d, dtype=bf, device=dev), torch.randn(b, hkv, 4 + 128, d, dtype=bf,
                                                                                    device=dev))
    layer.observe(torch.randn(b, hq, 1, d, dtype=bf, device=dev))
    n = t - 4 - 128
    for s in range(0, n, layer.chunk_tokens):  # compressed history without running the encoder
        m = min(layer.chunk_tokens, n - s)
        layer.chunks_k.append(random_rows(layer.k_codec, b, hkv, m, dev))
        layer.chunks_v.append(random_rows(layer.v_codec, b, hkv, m, dev))
    layer.n_compressed = n
    dense = DynamicLayer()
    dense.update(torch.randn(b, hkv, t, d, dtype=bf, device=dev), torch.randn(b, hkv, t, d, dtype=bf, device=dev))
    q = torch.randn(b, hq, 1, d, dtype=bf, device=dev)
    kn, vn = torch.randn(b, hkv, 1, d, dtype=bf, device=dev), torch.randn(b, hkv, 1, d, dtype=bf, device=dev)

    def compressed():
        k, v = layer.update(kn, vn)
        return compactkv_attention_forward(module, q, k, v, None, scaling=d ** -0.5)[0]

    def fp16():  # SDPA without its cuDNN backend, as the e2e bench's "f16-flash" baseline
        k, v = dense.update(kn, vn)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return sdpa_attention_forward(module, q, k, v, None, scaling=d ** -0.5, is_causal=False)[0]

    res = {"card": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "args": vars(args)}
    # (with --stub-launches the fp16 path would time real CPU attention over the context: not a host figure)
    for name, fn in (("compressed", compressed),) + ((("fp16", fp16),) if not args.stub_launches else ()):
        for _ in range(20):
            fn()
        blocks = []  # per-call wall time of each block of calls (a compilation in one block shows as an outlier)
        for _ in range(4):
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(args.calls // 4):
                fn()
            _sync(dev)
            blocks.append((time.perf_counter() - t0) / (args.calls // 4) * 1e6)
        res[f"{name}_us_per_call"] = min(blocks)
        res[f"{name}_us_per_call_blocks"] = blocks
        print(f"{name}: {min(blocks):.1f} us per call (update + attention, wall, B={b} T={t}; best of 4 blocks of "
              f"{args.calls // 4}: {', '.join(f'{x:.0f}' for x in blocks)})")
    if args.ops:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as tp:
            for _ in range(args.calls):
                compressed()
        # top-level operators only (those called from Python, not from inside another operator)
        ops = {}
        for ev in tp.events():
            if ev.name.startswith("aten::") and ev.cpu_parent is None:
                ops[ev.name] = ops.get(ev.name, 0) + 1
        res["ops_per_call"] = {k: v / args.calls for k, v in sorted(ops.items(), key=lambda x: -x[1])}
        print(f"torch operators per compressed call: {sum(ops.values()) / args.calls:.2f}  "
              + ", ".join(f"{k[6:]} {v:.2f}" for k, v in res["ops_per_call"].items()))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        compressed()
    _sync(dev)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(28)
    text = out.getvalue()
    print(text[text.find("ncalls"):])
    res["profile"] = text
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
