"""`compactkv bench kernels`: decode attention on packed rows vs fp16 SDPA, and the encode kernel, on one GPU.

Shapes are one Llama-3.1-8B attention layer (32 query heads, 8 KV heads, head_dim 128), one query token, batch and
context from the flags. Everything is measured in the same run on the same card: the device-to-device copy
bandwidth, torch SDPA with fp16 K/V (enable_gqa), and per kind the compressed decode step (query map, split
kernel, one finishing launch: split merge + inverse rotation, as the Triton backend runs it), as medians of triton.testing.do_bench (L2 flushed between repetitions)
and of CUDA-graph replays. GB/s counts the compressed K+V bytes read once.
"""

from __future__ import annotations

import json
import os

import torch

from ..cache.config import CacheConfig
from .provenance import commit as tree_commit

HQ, HKV, HEAD_DIM = 32, 8, 128
CHUNK_TOKENS = CacheConfig().chunk_tokens  # the dynamic cache's chunks (its default)
# decode_step options attend_planes takes
TABLE_OPTIONS = {"num_splits", "lut_warps", "lut_pipe", "lut_maxnreg", "clocks"}
# attend_planes' (the row reader tiles by 32 tokens)
FUSED_OPTIONS = TABLE_OPTIONS | {"lut_block_n", "lut_hadamard", "lut_early", "lut_compact", "lut_tma"}
KINDS = ("turbo4", "turbo3", "turbo2", "q8_0")


def register(subparsers) -> None:
    p = subparsers.add_parser("kernels", help="Triton decode attention and encode vs fp16 SDPA (CUDA)")
    p.add_argument("--json", metavar="PATH", default=os.environ.get("COMPACTKV_BENCH_JSON"),
                   help="write all figures here (env COMPACTKV_BENCH_JSON)")
    p.add_argument("--batches", default=os.environ.get("COMPACTKV_BENCH_BATCHES", "1,8"))
    p.add_argument("--contexts", default=os.environ.get("COMPACTKV_BENCH_CONTEXTS", "4096,16384,32768,131072"))
    p.add_argument("--kinds", default=os.environ.get("COMPACTKV_BENCH_KINDS", ",".join(KINDS)))
    p.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph replay timings")
    p.add_argument("--sweep", action="store_true", help="also time kernel variants (LUT/direct, block, warps)")
    p.add_argument("--prefill", default=os.environ.get("COMPACTKV_BENCH_PREFILL", "4096,32768"),
                   help="prompt lengths for the batch-1 prefill attention comparison ('' skips it)")
    p.set_defaults(func=run)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'8x32768,1x131072' -> [(8, 32768), (1, 131072)] (batch, context); ValueError naming what is accepted."""
    try:
        shapes = [tuple(int(x) for x in s.split("x")) for s in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise ValueError(f"expected comma-separated BxT pairs of positive integers such as 8x32768,1x131072, got "
                         f"{text!r}")
    return shapes


def commit() -> str:
    """The tree's commit for reports (`provenance.commit`: $COMPACTKV_COMMIT first), or "unknown"."""
    return tree_commit() or "unknown"


def random_rows(codec, b: int, h: int, t: int, device) -> torch.Tensor:
    """Valid packed rows without encoding: random index bytes, finite positive fp16 norms / q8_0 scales."""
    rows = torch.randint(0, 256, (b, h, t, codec.row_bytes), dtype=torch.uint8, device=device)
    fam = codec.spec.family
    if fam == "mse":
        rows[..., :2] = (torch.rand(b, h, t, 1, device=device) + 0.5).half().view(torch.uint8)
    elif fam == "q8_0":
        blocks = rows.view(b, h, t, -1, 34)
        blocks[..., :2] = (torch.rand(*blocks.shape[:-1], 1, device=device) * 0.02 + 0.001).half().view(torch.uint8)
    elif fam == "f16":
        rows.copy_(torch.randn(b, h, t, codec.head_dim, device=device).half().view(torch.uint8))
    return rows


def _bench(fn, graphs: bool) -> tuple[float, float | None]:
    """(median µs with do_bench, median µs of CUDA-graph replays or None)."""
    import triton.testing as tt
    eager = tt.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3
    graph = None
    if graphs:
        try:
            graph = tt.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3
        except RuntimeError:
            graph = None
    return eager, graph


def copy_bandwidth(device) -> float:
    """Device-to-device copy of 2 GiB, GB/s counting bytes read plus written."""
    import triton.testing as tt
    n = 2 << 30
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    t = tt.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median") * 1e-3
    del src, dst
    return 2 * n / t / 1e9


def profile_kernels(fn, reps: int = 3):
    """torch.profiler (CUDA activity) over `reps` calls of fn(), after one unprofiled call; the profile object."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return prof


def left_pad_keep(b: int, t: int, pad: int, device) -> torch.Tensor:
    """bool [B, t]: False on the left padding of a padded batch, row i of B padded by pad * i // (B - 1) tokens
    (row 0 none, the last row pad)."""
    keep = torch.ones(b, t, dtype=torch.bool, device=device)
    for i in range(b):
        keep[i, :pad * i // max(1, b - 1)] = False
    return keep


def decode_step(kind: str, b: int, t: int, device, head_dim: int = HEAD_DIM, **kernel):
    """A closure running one compressed decode step for `kind` over t random tokens, and its K+V bytes.

    The step is what the Triton backend runs for a layer without fp16 windows: over the dynamic cache's rows (in
    chunks of CHUNK_TOKENS, as TurboQuantLayer keeps them) the table kernel where it reads them
    (`gluon.launch_rows`, the query mapped in its prologue; `rows=False`: the query map launch and the row-format
    split kernels instead), or the query map (`map_query`, one launch: the K rotation and the softmax scale folded
    in) and the split kernel; with `gluon=True` the planar kernel, table or Gluon, over planar copies of the same
    rows (the table kernel maps the query in its prologue unless `qmap=False`); then the finishing launch that
    merges the splits, applies the inverse V map and writes fp16 [B, 1, HQ, D]; with `gluon=True` the table kernel
    does all of it in one launch (`gluon.attend_planes`) unless `fused=False`. `kernel`: keyword options of
    launch_rows / launch_splits / launch_gluon
    (attend_planes: num_splits and the lut_* options), and pad=N: a left-padded batch's attention mask (batch row i
    of B padded by N * i // (B - 1) tokens, masked off), added to the scores as the backend passes a mask (rows and
    split kernels only: the planar kernels take none)."""
    from ..attention.triton.backend import ONE_CHUNK
    from ..attention.triton.gluon import launch_rows
    from ..attention.triton.decode import (LOG2E, chunk_table, codec_maps, finish_decode, launch_splits, map_query,
                                           packed_kind)
    from ..core.codec import Codec
    kc, vc = Codec(kind, head_dim, seed=0), Codec(kind, head_dim, seed=1)
    rk, rv = random_rows(kc, b, HKV, t, device), random_rows(vc, b, HKV, t, device)
    lengths = torch.full((b,), t, dtype=torch.int32, device=device)
    fwd, _ = codec_maps(kc, device)
    _, adj = codec_maps(vc, device)
    q = torch.randn(b, HQ, 1, head_dim, device=device, dtype=torch.float16)
    pk, pv = packed_kind(kc), packed_kind(vc)
    c = head_dim ** -0.5 * LOG2E
    w = (fwd if fwd is not None else torch.eye(head_dim, device=device)) * c
    empty = torch.empty(b, HKV, 0, head_dim, dtype=torch.float16, device=device)

    gluon = kernel.pop("gluon", False)
    rows = kernel.pop("rows", None)
    pad = kernel.pop("pad", 0)
    bias = bias_rows = None
    if pad:
        if gluon:
            raise ValueError("pad: the planar kernels (gluon=True) take no attention mask")
        if not 0 < pad < t:
            raise ValueError(f"pad={pad}: the padding must leave tokens to attend, 0 < pad < {t}")
        keep = left_pad_keep(b, t, pad, device)[:, None]  # [B, 1, t]
        bias = torch.zeros(b, 1, t, device=device).masked_fill(~keep, float("-inf"))  # natural log, as _mask_bias
        bias_rows = (bias * LOG2E).contiguous()  # [B, 1, t]: the kernels' log2 units
    qmap = kernel.pop("qmap", True)  # the planar kernels take the map as `w` (the table kernel applies it itself)
    fused = kernel.pop("fused", True) and qmap  # the table kernel finishes the step itself where it can
    if gluon:  # planar copies of the same rows: the Gluon kernel reads 16-byte aligned code planes
        from ..attention.triton.gluon import launch_gluon
        from ..cache.static import rows_to_planes
        (kcodes, knorms), (vcodes, vnorms) = rows_to_planes(rk), rows_to_planes(rv)
        rk = rv = None
        from ..attention.triton.gluon import attend_planes, fused_unsupported
        fused = fused and fused_unsupported(pk, pv, HQ // HKV, adj) is None and kernel.get("lut", True) \
            and set(kernel) <= FUSED_OPTIONS | {"lut"}
        fused_kw = {k: v for k, v in kernel.items() if k != "lut"}
        if not fused and "lut_block_n" in kernel:  # launch_gluon names the table kernel's tile block_n
            kernel["block_n"] = kernel.pop("lut_block_n")
        counters = torch.zeros(b * HKV, dtype=torch.int32, device=device)
    else:  # the dynamic cache's layout: chunks of CHUNK_TOKENS rows
        ck = [rk[:, :, i:i + CHUNK_TOKENS].contiguous() for i in range(0, t, CHUNK_TOKENS)]
        cv = [rv[:, :, i:i + CHUNK_TOKENS].contiguous() for i in range(0, t, CHUNK_TOKENS)]
        rk, rv = ck, cv
        chunk = CHUNK_TOKENS if len(ck) > 1 else ONE_CHUNK
        kt, vt = chunk_table(ck), chunk_table(cv)
        if rows is None:  # as the backend, unless split-kernel options were asked for
            rows = rows_name(kind, head_dim) and set(kernel) <= TABLE_OPTIONS

    def step():
        qf = q.reshape(b, HKV, HQ // HKV, head_dim)  # fp16: mapped and read as fp32 by the kernels
        if gluon and fused:
            return attend_planes(qf, w, adj, kcodes, knorms, vcodes, vnorms, lengths, pk, pv, max_len=t,
                                 counters=counters, **fused_kw)
        if rows and not gluon:
            parts = launch_rows(qf, kt, vt, lengths, pk, pv, chunk=chunk, max_len=t, w=w,
                                bias=None if bias_rows is None else bias_rows[:, 0], **kernel)
        elif gluon:
            parts = launch_gluon(qf if qmap else map_query(qf, w), kcodes, knorms, vcodes, vnorms, lengths, pk, pv,
                                 max_len=t, w=w if qmap else None, **kernel)
        else:
            parts = launch_splits(map_query(qf, w), kt, vt, lengths, pk, pv, chunk=chunk, max_len=t, tq=1,
                                  bias=bias_rows, **kernel)
        return finish_decode(qf, parts, tq=1, qscale=c, windows=(empty,) * 4, n_comp=t, adj=adj, bias=bias,
                             causal=False, out_dtype=torch.float16)

    step.keep = (*rk, *rv) if not gluon else (kcodes, knorms, vcodes, vnorms)
    nbytes = sum(x.numel() * x.element_size() for x in step.keep)
    return step, nbytes


def gluon_name(kind: str) -> bool:
    """True where `launch_gluon` (the table or the Gluon kernel, planar storage) takes kind/kind at HEAD_DIM, one
    token, GQA HQ/HKV."""
    from ..attention.triton.decode import packed_kind
    from ..attention.triton.gluon import planes_unsupported
    from ..core.codec import Codec
    pk = packed_kind(Codec(kind, HEAD_DIM))
    return pk is not None and planes_unsupported(pk, pk, HQ // HKV) is None


def planar_kernel(kind: str) -> str:
    """Which kernel `launch_gluon` runs by default for kind/kind at HEAD_DIM: 'table' (kernels_lut) or 'gluon'."""
    from ..attention.triton.decode import packed_kind
    from ..attention.triton.gluon import lut_default
    from ..core.codec import Codec
    pk = packed_kind(Codec(kind, HEAD_DIM))
    return "table" if lut_default(pk, pk) else "gluon"


def rows_name(kind: str, head_dim: int = HEAD_DIM) -> bool:
    """True where the backend reads a chunk-list layer's kind/kind rows at head_dim with the table kernel
    (`gluon.launch_rows`, chunks of CHUNK_TOKENS)."""
    from ..attention.triton.decode import packed_kind
    from ..attention.triton.gluon import rows_unsupported
    from ..core.codec import Codec
    pk = packed_kind(Codec(kind, head_dim))
    return pk is not None and rows_unsupported(pk, pk, HQ // HKV, 1, CHUNK_TOKENS) is None


def kernel_name(kind: str, rows: bool | None = None) -> str:
    """The kernel a dynamic-cache step runs for kind/kind pairs at HEAD_DIM: 'table' (`launch_rows`, where
    `rows_name`, unless rows=False), 'fast' where `attend_packed` runs decode_fast_kernel, else 'split'."""
    from ..attention.triton.decode import fast_unsupported, packed_kind
    from ..core.codec import Codec
    if rows is not False and rows_name(kind):
        return "table"
    pk = packed_kind(Codec(kind, HEAD_DIM))
    return "split" if pk is None or fast_unsupported(pk, pk) else "fast"


def prefill_step(kind: str, t: int, device):
    """One layer's prefill of a fresh t-token prompt: encode K/V in place, expand once, causal SDPA, inverse map."""
    from ..attention.triton.backend import ONE_CHUNK
    from ..attention.triton.decode import chunk_table, codec_maps, dequant_packed, packed_kind
    from ..attention.triton.encode import encode_rows
    from ..core.codec import Codec
    import torch.nn.functional as F
    kc, vc = Codec(kind, HEAD_DIM, seed=0), Codec(kind, HEAD_DIM, seed=1)
    q = torch.randn(1, HQ, t, HEAD_DIM, device=device, dtype=torch.float16)
    k = torch.randn(1, HKV, t, HEAD_DIM, device=device, dtype=torch.float16)
    v = torch.randn_like(k)
    rk = torch.empty(1, HKV, t, kc.row_bytes, dtype=torch.uint8, device=device)
    rv = torch.empty(1, HKV, t, vc.row_bytes, dtype=torch.uint8, device=device)
    kt, vt = chunk_table([rk]), chunk_table([rv])
    fwd, _ = codec_maps(kc, device)
    _, adj = codec_maps(vc, device)

    def step():
        encode_rows(kc, k, rk)
        encode_rows(vc, v, rv)
        kd = dequant_packed(kt, packed_kind(kc), 1, HKV, t, ONE_CHUNK)
        vd = dequant_packed(vt, packed_kind(vc), 1, HKV, t, ONE_CHUNK)
        qr = q @ fwd.half()
        out = F.scaled_dot_product_attention(qr, kd, vd, is_causal=True, enable_gqa=True)
        return out @ adj.half()

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return step, sdpa


def prefill_bench(lengths: list[int], kinds, device) -> list[dict]:
    res = []
    for t in lengths:
        for kind in kinds:
            if kind not in ("turbo4", "turbo3", "turbo2"):
                continue
            step, sdpa = prefill_step(kind, t, device)
            s_us, _ = _bench(sdpa, False)
            c_us, _ = _bench(step, False)
            res.append({"kind": kind, "tokens": t, "sdpa_us": s_us, "compressed_us": c_us, "ratio": c_us / s_us})
            del step, sdpa
    return res


ENCODE_CONFIGS = (("half", 32), ("half", 16), ("half", 64), ("row", 64), ("row", 128), ("row", 256), ("lanes", 16),
                  ("lanes", 32))
ENCODE_KINDS = ("turbo4", "turbo3", "turbo2")


def encode_bench(device) -> list[dict]:
    """The encode kernels (encode_rows' "half", "row" and "lanes") at several rows per program, fp16 K rows of 8 x 8
    heads x 8192 tokens; every output checked byte for byte against the first configuration's."""
    from ..attention.triton.encode import encode_rows
    from ..core.codec import Codec
    import triton.testing as tt
    res = []
    x = torch.randn(8, HKV, 8192, HEAD_DIM, device=device, dtype=torch.float16)
    for kind in ENCODE_KINDS:
        codec = Codec(kind, HEAD_DIM)
        out = torch.empty(8, HKV, 8192, codec.row_bytes, dtype=torch.uint8, device=device)
        first = None
        for kernel, rows in ENCODE_CONFIGS:
            out.fill_(0xA5)
            encode_rows(codec, x, out, block_rows=rows, kernel=kernel)
            if first is None:
                first = out.clone()
            same = bool(torch.equal(out, first))
            ms = tt.do_bench(lambda: encode_rows(codec, x, out, block_rows=rows, kernel=kernel), warmup=25, rep=100,
                             return_mode="median")
            moved = x.numel() * 2 + out.numel()
            res.append({"kind": kind, "kernel": kernel, "tokens": 8 * 8192, "block_rows": rows, "us": ms * 1e3,
                        "gbps": moved / ms / 1e6, "same_bytes": same})
    return res


def run(args) -> int:
    if not torch.cuda.is_available():
        raise ValueError("bench kernels needs a CUDA GPU (torch.cuda.is_available() is False)")
    import torch.nn.functional as F
    dev = torch.device("cuda")
    kinds = [k for k in args.kinds.split(",") if k]
    info = {"card": torch.cuda.get_device_name(dev), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "commit": commit(),
            "shape": {"hq": HQ, "hkv": HKV, "head_dim": HEAD_DIM, "tq": 1}}
    info["copy_gbps"] = copy_bandwidth(dev)
    print(f"card {info['card']}  copy bandwidth {info['copy_gbps']:.0f} GB/s  commit {info['commit']}", flush=True)
    rows = []
    for b in _ints(args.batches):
        for t in _ints(args.contexts):
            q = torch.randn(b, HQ, 1, HEAD_DIM, device=dev, dtype=torch.float16)
            k = torch.randn(b, HKV, t, HEAD_DIM, device=dev, dtype=torch.float16)
            v = torch.randn_like(k)
            sdpa = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
            s_eager, s_graph = _bench(sdpa, not args.no_graphs)
            fp16_bytes = 2 * k.numel() * 2
            row = {"batch": b, "context": t, "sdpa_us": s_eager, "sdpa_graph_us": s_graph,
                   "sdpa_gbps": fp16_bytes / s_eager / 1e3, "kinds": {}}
            del k, v
            for kind in kinds:
                step, nbytes = decode_step(kind, b, t, dev)
                e, gr = _bench(step, not args.no_graphs)
                row["kinds"][kind] = {"us": e, "graph_us": gr, "bytes": nbytes, "gbps": nbytes / e / 1e3,
                                      "kernel": kernel_name(kind), "speedup": s_eager / e,
                                      "graph_speedup": (s_graph / gr) if (s_graph and gr) else None}
                if kernel_name(kind) == "table":  # the row-format kernel it replaced, in the same run
                    del step
                    step, _ = decode_step(kind, b, t, dev, rows=False)
                    re_, rg = _bench(step, not args.no_graphs)
                    row["kinds"][kind].update({"rowkernel": kernel_name(kind, rows=False), "rowkernel_us": re_,
                                               "rowkernel_graph_us": rg, "rowkernel_speedup": s_eager / re_,
                                               "rowkernel_graph_speedup": (s_graph / rg) if (s_graph and rg) else None})
                if kernel_name(kind) == "fast":  # the split kernel (before issue 7's rewrite) in the same run
                    del step
                    step, _ = decode_step(kind, b, t, dev, fast=False)
                    se, sg = _bench(step, not args.no_graphs)
                    row["kinds"][kind].update({"split_us": se, "split_graph_us": sg, "split_speedup": s_eager / se,
                                               "split_graph_speedup": (s_graph / sg) if (s_graph and sg) else None})
                if gluon_name(kind):  # the Gluon kernel over planar copies of the same kind of rows
                    del step
                    step, pbytes = decode_step(kind, b, t, dev, gluon=True)
                    pe, pg = _bench(step, not args.no_graphs)
                    row["kinds"][kind].update({"planar_kernel": planar_kernel(kind),
                                               "planar_us": pe, "planar_graph_us": pg, "planar_speedup": s_eager / pe,
                                               "planar_gbps": pbytes / pe / 1e3,
                                               "planar_graph_speedup": (s_graph / pg) if (s_graph and pg) else None})
                if args.sweep and (b, t) in SWEEP_SHAPES:
                    row["kinds"][kind]["sweep"] = _sweep(kind, b, t, dev)
                del step
            rows.append(row)
            print(_line(row, kinds), flush=True)
    info["decode"] = rows
    info["encode"] = encode_bench(dev)
    info["prefill"] = prefill_bench(_ints(args.prefill), kinds, dev) if args.prefill else []
    print(table(info, kinds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    return 0


SWEEP_SHAPES = ((8, 32768), (1, 131072))


def _variants(kind: str) -> list[dict]:
    """Kernel settings tried by --sweep (the first is the default)."""
    base = [{}, {"prefetch": False}, {"block_n": 32}, {"block_n": 64}, {"block_n": 32, "splits_x": 2}, {"splits_x": 2},
            {"splits_x": 4}, {"block_n": 128, "num_warps": 8}, {"num_stages": 1}]
    if kind == "turbo2":
        base.append({"lut": True})
    if kind in ("turbo4", "turbo2"):
        base.append({"bcast": True, "block_n": 32})
    return base


def _sweep(kind: str, b: int, t: int, dev) -> list[dict]:
    from ..attention.triton.decode import choose_splits
    out = []
    for var in _variants(kind):
        kernel = dict(var)
        block_n = kernel.get("block_n", 32 if kind == "q8_0" else 64)
        if "splits_x" in kernel:
            kernel["num_splits"] = kernel.pop("splits_x") * choose_splits(b * HKV, t, block_n, dev)
        step, nbytes = decode_step(kind, b, t, dev, **kernel)
        e, _ = _bench(step, False)
        out.append({**var, "num_splits": kernel.get("num_splits"), "us": e, "gbps": nbytes / e / 1e3})
    return out


def _line(row: dict, kinds) -> str:
    parts = [f"B={row['batch']} T={row['context']}: sdpa {row['sdpa_us']:.1f} us"]
    for kind in kinds:
        r = row["kinds"][kind]
        parts.append(f"{kind} {r['us']:.1f} us ({r['speedup']:.2f}x, {r['gbps']:.0f} GB/s)")
    return "  ".join(parts)


def _before_lines(info: dict, kinds, key: str, label, now: str) -> list[str]:
    """One line per cell that also timed the kernel its main step replaced (fields key_us, key_speedup,
    key_graph_speedup; label(cell) names it, `now` names the main step's kernel)."""
    out = []
    for row in info["decode"]:
        for kind in kinds:
            r = row["kinds"][kind]
            if f"{key}_us" in r:
                g = "-" if r[f"{key}_graph_speedup"] is None else f"{r[f'{key}_graph_speedup']:.2f}"
                # faster by graph replays where both were captured (eager steps at small shapes are host-bound)
                graphs = r[f"{key}_graph_us"] is not None and r["graph_us"] is not None
                ratio = r[f"{key}_graph_us"] / r["graph_us"] if graphs else r[f"{key}_us"] / r["us"]
                out.append(f"before ({label(r)}) B={row['batch']} T={row['context']} {kind}: {r[f'{key}_us']:.1f} us, "
                           f"x {r[f'{key}_speedup']:.2f} (graph x {g}); {now} {r['us']:.1f} us = {ratio:.2f}x "
                           f"faster ({'graphs' if graphs else 'eager'})")
    return out


def encode_lines(info: dict) -> list[str]:
    """One line per encode configuration of `info["encode"]` (encode_bench), GB/s also as a share of the copy
    bandwidth of the same run."""
    out = []
    for e in info.get("encode", []):
        same = "" if e.get("same_bytes", True) else " (BYTES DIFFER from the first configuration)"
        out.append(f"encode {e['kind']} {e.get('kernel', 'lanes')} kernel, {e['tokens']} tokens x {HKV} heads, "
                   f"block_rows {e['block_rows']}: {e['us']:.1f} us, {e['gbps']:.0f} GB/s "
                   f"({100 * e['gbps'] / info['copy_gbps']:.0f}% of copy){same}")
    return out


def table(info: dict, kinds) -> str:
    """The summary table: one line per (batch, context); µs, speedup over SDPA and GB/s per kind."""
    head = f"{'B':>2} {'T':>7} {'sdpa us':>8} {'(graph)':>8}"
    for kind in kinds:
        head += f" | {kind + ' us':>10} {'x':>5} {'GB/s':>5} {'(graph x)':>9}"
    kern = ", ".join(f"{k}: {info['decode'][0]['kinds'][k].get('kernel', '?')}" for k in kinds) if info["decode"] else ""
    lines = [f"card: {info['card']}; copy {info['copy_gbps']:.0f} GB/s; torch {info['torch']}, triton "
             f"{info['triton']}; commit {info['commit']}; kernels {kern}", head]
    for row in info["decode"]:
        g = row["sdpa_graph_us"]
        line = f"{row['batch']:>2} {row['context']:>7} {row['sdpa_us']:>8.1f} {g if g is None else round(g, 1)!s:>8}"
        for kind in kinds:
            r = row["kinds"][kind]
            gx = "-" if r["graph_speedup"] is None else f"{r['graph_speedup']:.2f}"
            line += f" | {r['us']:>10.1f} {r['speedup']:>5.2f} {r['gbps']:>5.0f} {gx:>9}"
        lines.append(line)
    lines += _before_lines(info, kinds, "split", lambda r: "split kernel", "fast kernel")
    lines += _before_lines(info, kinds, "rowkernel", lambda r: f"row kernel: {r['rowkernel']}",
                           "table kernel over rows")
    for row in info["decode"]:
        for kind in kinds:
            r = row["kinds"][kind]
            if "planar_us" in r:
                g = "-" if r["planar_graph_speedup"] is None else f"{r['planar_graph_speedup']:.2f}"
                gu = "-" if r["planar_graph_us"] is None else f"{r['planar_graph_us']:.1f}"
                lines.append(f"planar ({r.get('planar_kernel', 'gluon')} kernel, static cache) B={row['batch']} "
                             f"T={row['context']} {kind}: "
                             f"{r['planar_us']:.1f} us, x {r['planar_speedup']:.2f}, {r['planar_gbps']:.0f} GB/s; "
                             f"graph {gu} us, x {g}")
    lines += encode_lines(info)
    for p in info.get("prefill", []):
        lines.append(f"prefill B=1 T={p['tokens']} {p['kind']} (encode + expand + causal SDPA + inverse map): "
                     f"{p['compressed_us']:.0f} us vs fp16 SDPA {p['sdpa_us']:.0f} us = {p['ratio']:.2f}x the time")
    return "\n".join(lines)
