"""How fast can a decode step's compressed bytes be read at all, in the table kernel's access pattern? (CUDA)

A load-only Triton kernel reads the same planes a turbo4/turbo3/turbo2 step reads (K and V codes
[B*H, T, row bytes], K and V fp16 norms [B*H, T]) on the table kernel's grid (programs per (b, kv head) from
`gluon.lut_splits`, W warps each), XOR-folds them (so nothing is optimized away) and writes one word per
program. Patterns: `split` gives each warp its own contiguous split of the tokens, as the table kernel does;
`block` walks a program's tokens W*BN at a time, all warps side by side. BN is the tokens per warp per iteration
(the table kernel's tile is 32; lut_pipe 3 keeps two tiles in flight). Printed next to the table kernel's own
step (`bench.kernels.decode_step(gluon=True)`) and fp16 SDPA, all as CUDA-graph medians, and the card's copy
bandwidth (read + write of 1 GiB) in the same run: if the load-only kernel is not much faster than the table
kernel, the loop waits on memory, not on its arithmetic.

    python scripts/stream_bench.py [--shapes 8x32768,1x131072] [--kinds turbo4] [--bn 32,64,128] [--json PATH]
    python scripts/stream_bench.py --l2 ...   # the table kernel over its planes vs over one plane pair in L2
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import triton
import triton.language as tl


@triton.jit
def stream_kernel(kp, vp, knp, vnp, out, T, SPLIT, NIT, W: tl.constexpr, BN: tl.constexpr, WORDS: tl.constexpr,
                  WARPSPLIT: tl.constexpr):
    """kp / vp: int64 words [BH, T, WORDS]; knp / vnp: int16 [BH, T]; out: int64 [programs]."""
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    w = tl.arange(0, W)[:, None]
    t = tl.arange(0, BN)[None, :]
    c = tl.arange(0, WORDS)[None, None, :]
    if WARPSPLIT:  # warp w: tokens [(pid W + w) SPLIT, + SPLIT), BN per iteration
        first = (pid * W + w) * SPLIT + t
        step = BN
    else:  # the program's W SPLIT tokens, W BN side by side per iteration
        first = pid * W * SPLIT + w * BN + t
        step = W * BN
    acc = tl.zeros([W, BN, WORDS], dtype=tl.int64)
    accn = tl.zeros([W, BN], dtype=tl.int32)
    end = tl.minimum((pid + 1) * W * SPLIT, T)
    for j in range(NIT):  # NIT = SPLIT / BN
        tok = first + j * step
        ok = tok < end
        if WARPSPLIT:
            ok = ok & (tok < (pid * W + w + 1) * SPLIT)
        tk = (bh * T + tok)[:, :, None] * WORDS + c
        acc ^= tl.load(kp + tk, mask=ok[:, :, None], other=0) ^ tl.load(vp + tk, mask=ok[:, :, None], other=0)
        accn ^= (tl.load(knp + bh * T + tok, mask=ok, other=0).to(tl.int32)
                 ^ (tl.load(vnp + bh * T + tok, mask=ok, other=0).to(tl.int32) << 16))
    x = tl.reduce(tl.reduce(acc, 2, _xor), 1, _xor)
    tl.store(out + tl.program_id(1) * tl.num_programs(0) + pid, tl.reduce(x, 0, _xor) ^ tl.reduce(tl.reduce(
        accn, 1, _xor), 0, _xor).to(tl.int64))


@triton.jit
def _xor(a, b):
    return a ^ b


ROW_BYTES = {"turbo4": 64, "turbo2": 32}  # code bytes per row (head_dim 128); turbo3's 48 is no power of two


def stream_step(kind: str, b: int, t: int, bn: int, warps: int, warpsplit: bool, dev, programs: int | None = None):
    """A closure running the load-only kernel over random planes of `kind` at (b, t), and the bytes it reads."""
    from compactkv.attention.triton.gluon import lut_splits
    from compactkv.bench.kernels import HKV
    bh = b * HKV
    rb = ROW_BYTES[kind]
    k = torch.randint(-2**62, 2**62, (bh, t, rb // 8), dtype=torch.int64, device=dev)
    v = torch.randint_like(k, -2**62, 2**62)
    kn = torch.randint(-2**15, 2**15, (bh, t), dtype=torch.int16, device=dev)
    vn = torch.randint_like(kn, -2**15, 2**15)
    bits = {"turbo4": 4, "turbo2": 2}[kind]
    if programs is None:
        programs = lut_splits(bh, t, 8, dev, 128, bits=bits) // 8  # the table kernel's programs per (b, h)
    split = -(-t // (programs * warps))
    split = -(-split // bn) * bn
    programs = -(-t // (split * warps))
    out = torch.empty(bh * programs, dtype=torch.int64, device=dev)
    words = rb // 8
    def step():
        stream_kernel[(programs, bh)](k, v, kn, vn, out, t, split, split // bn, W=warps, BN=bn, WORDS=words,
                                      WARPSPLIT=warpsplit, num_warps=warps)
        return out
    step.planes = (k, v, kn, vn)  # for checking the fold
    return step, bh * t * (2 * rb + 4), programs


def expected_fold(k, v, kn, vn) -> torch.Tensor:
    """What the out words of one launch XOR to, per (b, h): every K and V word and every norm pair folded."""
    def fold(x):  # XOR over all but the first dim, by halving
        x = x.reshape(x.shape[0], -1)
        while x.shape[1] > 1:
            h = x.shape[1] // 2
            x = torch.cat([x[:, :h] ^ x[:, h:2 * h], x[:, 2 * h:]], dim=1)
        return x[:, 0]
    n = fold(kn.to(torch.int32) ^ (vn.to(torch.int32) << 16))
    return fold(k) ^ fold(v) ^ n.to(torch.int64)


def table_step(kind: str, b: int, t: int, dev, shared: bool):
    """A closure running the finishing table kernel (`attend_planes`, the default build) over random planes of
    `kind` at (b, t): distinct planes per batch row and KV head, or (shared) one [t]-token plane pair viewed by
    every (b, h) with stride 0, so the step reads the same tokens from L2 instead of DRAM (the same instructions
    and the same L1 traffic); and the bytes the step reads."""
    from compactkv.attention.triton.decode import LOG2E, codec_maps, packed_kind
    from compactkv.attention.triton.gluon import attend_planes
    from compactkv.bench.kernels import HEAD_DIM, HKV, HQ, random_rows
    from compactkv.cache.static import rows_to_planes
    from compactkv.core.codec import Codec
    kc, vc = Codec(kind, HEAD_DIM, seed=0), Codec(kind, HEAD_DIM, seed=1)
    nb, nh = (1, 1) if shared else (b, HKV)
    (kcodes, knorms), (vcodes, vnorms) = (rows_to_planes(random_rows(c, nb, nh, t, dev)) for c in (kc, vc))
    if shared:
        kcodes, vcodes = (x.expand(b, HKV, t, x.shape[-1]) for x in (kcodes, vcodes))
        knorms, vnorms = (x.expand(b, HKV, t) for x in (knorms, vnorms))
    fwd, _ = codec_maps(kc, dev)
    _, adj = codec_maps(vc, dev)
    w = fwd * (HEAD_DIM ** -0.5 * LOG2E)
    q = torch.randn(b, HKV, HQ // HKV, HEAD_DIM, device=dev, dtype=torch.float16)
    lengths = torch.full((b,), t, dtype=torch.int32, device=dev)
    counters = torch.zeros(b * HKV, dtype=torch.int32, device=dev)
    out = torch.empty(b, 1, HQ, HEAD_DIM, dtype=torch.float16, device=dev)

    def step():
        return attend_planes(q, w, adj, kcodes, knorms, vcodes, vnorms, lengths, packed_kind(kc), packed_kind(vc),
                             max_len=t, counters=counters, out=out)
    return step, b * HKV * t * (kcodes.shape[-1] + vcodes.shape[-1] + 4)


def sdpa_us(b: int, t: int, dev) -> float:
    """fp16 SDPA (enable_gqa) of one query token over t tokens at Llama-3.1-8B shapes: CUDA-graph median, us."""
    import triton.testing as tt
    import torch.nn.functional as F
    from compactkv.bench.kernels import HEAD_DIM, HKV, HQ
    q = torch.randn(b, HQ, 1, HEAD_DIM, device=dev, dtype=torch.float16)
    k = torch.randn(b, HKV, t, HEAD_DIM, device=dev, dtype=torch.float16)
    v = torch.randn_like(k)
    torch.cuda.synchronize()  # do_bench_cudagraph runs on a side stream that does not wait for randn
    return tt.do_bench_cudagraph(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), rep=100,
                                 return_mode="median") * 1e3


def main(argv=None) -> int:
    import triton.testing as tt
    from compactkv.attention.triton.gluon import lut_splits
    from compactkv.bench.kernels import HKV, commit, copy_bandwidth, decode_step, parse_shapes
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="8x32768,8x131072,1x131072", help="BxT pairs, comma-separated")
    ap.add_argument("--kinds", default="turbo4", help=f"comma-separated, of {', '.join(ROW_BYTES)}")
    ap.add_argument("--bn", default="32,64,128", help="tokens per warp per iteration, comma-separated powers of two")
    ap.add_argument("--warps", type=int, default=8, choices=(1, 2, 4, 8, 16))
    ap.add_argument("--l2", action="store_true",
                    help="only the table kernel over its planes vs over one plane pair every (b, h) shares "
                         "(L2-resident): what DRAM costs it (no load-only kernel)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(f"--shapes: {e}")
    try:
        bns = [int(x) for x in args.bn.split(",")]
    except ValueError:
        ap.error(f"--bn takes comma-separated powers of two, got {args.bn!r}")
    if any(n < 1 or n & (n - 1) for n in bns):
        ap.error(f"--bn takes powers of two, got {args.bn!r}")
    known = ("turbo4", "turbo3", "turbo2") if args.l2 else tuple(ROW_BYTES)
    bad = [k for k in args.kinds.split(",") if k not in known]
    if bad:
        ap.error(f"--kinds {','.join(bad)}: {'--l2 takes' if args.l2 else 'the load-only kernel reads'} "
                 f"{', '.join(known)} planes")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name(dev)
    copy_gbps = copy_bandwidth(dev)
    print(f"{card}: copy {copy_gbps:.0f} GB/s (read + write, bench.kernels.copy_bandwidth)", flush=True)
    rows = []
    for b, t in shapes:
        sdpa = sdpa_us(b, t, dev)
        print(f"B={b} T={t}: SDPA fp16 {sdpa:.1f} us", flush=True)
        for kind in args.kinds.split(","):
            step, nbytes = decode_step(kind, b, t, dev, gluon=True)
            step()  # on this stream first: do_bench_cudagraph's side stream does not wait for the setup's kernels
            torch.cuda.synchronize()
            us = tt.do_bench_cudagraph(step, rep=100, return_mode="median") * 1e3
            del step
            r = {"batch": b, "context": t, "kind": kind, "what": "table kernel step", "us": us, "bytes": nbytes,
                 "gbps": nbytes / us / 1e3, "x_sdpa": sdpa / us, "sdpa_us": sdpa}
            rows.append(r)
            print(f"  {kind:7s} {'table kernel step':34s} {us:8.1f} us {r['gbps']:6.0f} GB/s  x{sdpa / us:4.2f}",
                  flush=True)
            if args.l2:
                for shared in (False, True):
                    st, nb = table_step(kind, b, t, dev, shared)
                    st()
                    torch.cuda.synchronize()
                    us = tt.do_bench_cudagraph(st, rep=100, return_mode="median") * 1e3
                    what = "attend_planes, " + ("one shared plane pair (L2)" if shared else "distinct planes")
                    r = {"batch": b, "context": t, "kind": kind, "what": what, "us": us, "bytes": nb,
                         "gbps": nb / us / 1e3, "x_sdpa": sdpa / us, "sdpa_us": sdpa}
                    rows.append(r)
                    print(f"  {kind:7s} {what:34s} {us:8.1f} us {r['gbps']:6.0f} GB/s  x{sdpa / us:4.2f}", flush=True)
                    del st
            base = lut_splits(b * HKV, t, 8, dev, 128, bits=4) // 8  # the table kernel's programs per (b, h)
            for pattern in () if args.l2 else ("split", "block"):
                for bn in bns:
                    for mult in (1, 2):
                        try:
                            st, nb, progs = stream_step(kind, b, t, bn, args.warps, pattern == "split", dev,
                                                        programs=base * mult)
                            got = st().reshape(b * HKV, progs)
                            folded = got[:, 0].clone()
                            for j in range(1, progs):
                                folded ^= got[:, j]
                            if not bool((folded == expected_fold(*st.planes)).all()):
                                raise RuntimeError("the load-only kernel's fold differs from torch's")
                            us = tt.do_bench_cudagraph(st, rep=100, return_mode="median") * 1e3
                        except Exception as e:  # one configuration that fails must not hide the others
                            print(f"  {kind} {pattern} BN={bn}: FAILED {repr(e)[:200]}", flush=True)
                            continue
                        what = f"load-only {pattern} BN={bn} progs/bh={progs}"
                        r = {"batch": b, "context": t, "kind": kind, "what": what, "pattern": pattern, "bn": bn,
                             "programs_per_bh": progs, "us": us, "bytes": nb, "gbps": nb / us / 1e3,
                             "x_sdpa": sdpa / us, "sdpa_us": sdpa}
                        rows.append(r)
                        print(f"  {kind:7s} {what:34s} {us:8.1f} us {r['gbps']:6.0f} GB/s  x{sdpa / us:4.2f}",
                              flush=True)
                        del st, got
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"card": card, "commit": commit(), "copy_gbps": copy_gbps, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
