"""What-if builds: the decode table kernel or the half-row encode kernel with one part made (nearly) free, timed
against the unchanged build to bound what a rewrite of that part could give. Their outputs are WRONG on purpose
(timing only); nothing here is used by the library.

    python scripts/whatif.py decode MODE [decode_sweep.py arguments]   # CUDA: decode_sweep.py with the patch
    python scripts/whatif.py encode MODE [--kinds K,..] [--json PATH]  # CUDA: the half-row encode kernel vs copy
    python scripts/whatif.py sass MODE                                 # CPU: the patched sm_90 builds' counts

Decode modes (the finishing table kernel, `attend_planes`' default builds):
  none      unchanged
  t2_nolds  turbo2's K entries not read from the table (the key's address still made; its word masked into the
            operand instead): what removing K's shared-memory table reads could give at most
  t2_reg    turbo2's K through a register decoder's instruction mix (per key: funnel shift, and, mad, prmt, shr,
            prmt against the codebook in two registers): what decoding K in registers would cost and save
  t2_free   turbo2's K and V keys made into their operand registers by two `and`s each, no table address, no
            table read (the keys themselves still built from the loaded words): a decoder nearly for free for
            both operands, a bound, not a design (t2_nolds frees K's reads only)
  t3_free   turbo3's K and V table addresses made by one prmt of byte 0 of each key window, so keys that share a
            word read the same entry and ptxas merges the reads (28 table reads a 32-token tile instead of 128,
            447 instructions instead of 744): a decoder nearly for free, a bound, not a design
Encode modes (`encode_half_kernel`, head_dim 128):
  none      unchanged
  nosearch  the code search replaced by two integer instructions (no thresholds either)
  nostages  nosearch, and no Walsh-Hadamard stages between tiles (distances 8 .. 64)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402  (the patched kernels' globals: Triton resolves their names there)
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.ampere import mma_v2  # noqa: E402

DECODE_MODES = ("none", "t2_nolds", "t2_reg", "t2_free", "t3_free")
ENCODE_MODES = ("none", "nosearch", "nostages")

# turbo2 K, pack 4 (inputs as kernels_lut._pair_asm's: $2.. the key words, $6.. the lane offsets, $10.. selectors)
T2_NOLDS = "\n".join(["{", ".reg .b32 b, a;", "mov.u32 b, global_smem;", "prmt.b32 a, $2, $6, $10;",
                      "add.u32 a, a, b;", "and.b32 $0, a, 0x03FF03FF;", "and.b32 $1, $2, 0x03FF03FF;", "}"])
T2_REG = "\n".join(["{", ".reg .b32 x, y, t, cl, ch;", "mov.b32 cl, 0xB73FBE0B;", "mov.b32 ch, 0x3E0B373F;",
                    "shf.r.wrap.b32 x, $2, $2, $10;", "and.b32 x, x, 0x03030303;",
                    "mad.lo.u32 y, x, 0x22, 0x10101010;", "prmt.b32 $0, cl, ch, y;", "shr.b32 t, y, 16;",
                    "prmt.b32 $1, cl, ch, t;", "}"])
T2_FREE = "\n".join(["{", "and.b32 $0, $2, 0x03FF03FF;", "and.b32 $1, $2, 0x3C003C00;", "}"])
# turbo3 K and V, pack 4 (inputs as kernels_lut._lut3_asm_k's: $2.. low windows, $10.. lane offsets)
T3_FREE = "\n".join(["{", ".reg .b32 b, a;", "mov.u32 b, global_smem;",
                     "prmt.b32 a, $2, $10, 0x7604;", "add.u32 a, a, b;", "ld.shared.b32 $0, [a];",
                     "prmt.b32 a, $4, $12, 0x7604;", "add.u32 a, a, b;", "ld.shared.b32 $1, [a];", "}"])


def patch_decode(mode: str) -> None:
    """Install a decode what-if (before the kernel's first compile in this process)."""
    if mode not in DECODE_MODES:
        raise ValueError(f"decode mode {mode!r}: one of {', '.join(DECODE_MODES)}")
    if mode == "none":
        return
    import compactkv.attention.triton.kernels_lut as kl
    if mode in ("t3_free", "t2_free"):
        orig, bits_free, asm = kl.lut_asm_k, int(mode[1]), T3_FREE if mode == "t3_free" else T2_FREE

        def lut_asm_k(words: bool = False, bits: int = 4):
            return asm if bits == bits_free and words else orig(words, bits)
        kl.lut_asm_k = lut_asm_k
        return
    fake = gl.constexpr(T2_REG if mode == "t2_reg" else T2_NOLDS)
    decode_kbytes, halves, decode_k3, k_bytes3 = kl._decode_kbytes, kl._halves, kl._decode_k3, kl._k_bytes3

    @gluon.jit
    def _tile_scores(kc, kc_hi, klofs, ksel, qk_lo, qk_hi, KASM: gl.constexpr, BITS: gl.constexpr, W: gl.constexpr,
                     BN: gl.constexpr, NH: gl.constexpr, A_OP: gl.constexpr, MMA: gl.constexpr):
        if BITS == 3:
            k = decode_k3(k_bytes3(kc, A_OP), k_bytes3(kc_hi, A_OP), klofs, ksel, KASM)
        elif BITS == 4:
            k = decode_kbytes(k_bytes3(kc, A_OP), klofs, ksel, KASM)
        else:  # turbo2: K through the what-if decoder, V as built
            k = decode_kbytes(kc, klofs, ksel, fake)
        k_lo, k_hi = halves(k, 2, A_OP)
        return mma_v2(k_lo, qk_lo, gl.zeros([W, BN, NH], gl.float32, MMA)) \
            + mma_v2(k_hi, qk_hi, gl.zeros([W, BN, NH], gl.float32, MMA))

    kl._tile_scores = _tile_scores


def patch_encode(mode: str) -> None:
    """Install an encode what-if (before the kernel's first compile in this process)."""
    if mode not in ENCODE_MODES:
        raise ValueError(f"encode mode {mode!r}: one of {', '.join(ENCODE_MODES)}")
    if mode == "none":
        return
    import compactkv.attention.triton.kernels_encode as ke

    @triton.jit
    def _search(v, thr, BITS: tl.constexpr):
        return (v.to(tl.int32, bitcast=True) >> 27) & ((1 << BITS) - 1)

    @triton.jit
    def _tile_stages(z, NT: tl.constexpr, LOG2T: tl.constexpr):
        return z

    ke._search = _search
    if mode == "nostages":
        ke._tile_stages = _tile_stages


def encode_times(kinds: list[str]) -> dict:
    """The half-row kernel (its default rows per program) over fp16 K of 8 x 8 heads x 8192 tokens at head_dim 128
    per kind, and the copy bandwidth of the same run."""
    import torch
    import triton.testing as tt
    from compactkv.attention.triton.encode import encode_rows
    from compactkv.bench.kernels import HKV, copy_bandwidth
    from compactkv.core.codec import Codec
    dev = torch.device("cuda")
    copy = copy_bandwidth(dev)
    x = torch.randn(8, HKV, 8192, 128, device=dev, dtype=torch.float16)
    rows = []
    for kind in kinds:
        codec = Codec(kind, 128)
        out = torch.empty(8, HKV, 8192, codec.row_bytes, dtype=torch.uint8, device=dev)
        ms = tt.do_bench(lambda: encode_rows(codec, x, out, kernel="half"), warmup=25, rep=100, return_mode="median")
        gbps = (x.numel() * 2 + out.numel()) / ms / 1e6
        rows.append({"kind": kind, "us": ms * 1e3, "gbps": gbps, "of_copy": gbps / copy})
    return {"card": torch.cuda.get_device_name(dev), "copy_gbps": copy, "rows": rows}


def sass_counts(mode: str) -> list[str]:
    """Registers, spills and instructions of the patched builds for sm_90 (compiled here, no GPU)."""
    import collections
    import sass_decode as sd
    out = []
    if mode in DECODE_MODES:  # ("none": both kernels' unchanged builds)
        patch_decode(mode)
        for kind, pipe, bn in (("turbo2", 7, 64), ("turbo3", 2, 32)):
            s = sd.summary(kind, lut=True, pipe=pipe, warps=8, block_n=bn, maxnreg=255, qmap=True, fused=True,
                           hadamard=True)
            top = ", ".join(f"{k} {v}" for k, v in s["ops"].most_common(8))
            out.append(f"decode {mode} {kind}: {s['regs']} registers, {s['spills']} stack bytes, loop {s['loop']} "
                       f"instructions, {s['smem_cycles']} shared-memory cycles: {top}")
    if mode in ENCODE_MODES:
        patch_encode(mode)
        for kind in ("turbo4", "turbo3", "turbo2"):
            text, regs, stack = sd.sass(sd.compile_encode(kind, 128, num_warps=2, kernel="half"))
            ops = collections.Counter(op.split(".")[0] for _, op, _ in sd.instrs(text)[0])
            n = sum(ops.values())
            top = ", ".join(f"{k} {v}" for k, v in ops.most_common(6))
            out.append(f"encode {mode} {kind}: {regs} registers, {stack} stack bytes, {n} instructions a thread "
                       f"({n / 64:.1f} a value): {top}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("decode", "encode", "sass"))
    ap.add_argument("mode", help=f"decode: {', '.join(DECODE_MODES)}; encode: {', '.join(ENCODE_MODES)}; sass: any")
    args, rest = ap.parse_known_args(argv)
    if args.what == "sass":
        if args.mode not in DECODE_MODES + ENCODE_MODES:
            ap.error(f"mode {args.mode!r}: one of {', '.join(DECODE_MODES + ENCODE_MODES)}")
        if rest:
            ap.error(f"sass takes no more arguments, got {rest}")
        print("\n".join(sass_counts(args.mode)))
        return 0
    modes = DECODE_MODES if args.what == "decode" else ENCODE_MODES
    if args.mode not in modes:
        ap.error(f"{args.what} mode {args.mode!r}: one of {', '.join(modes)}")
    if args.what == "decode":
        patch_decode(args.mode)
        import decode_sweep
        return decode_sweep.main(rest)
    ep = argparse.ArgumentParser(prog="whatif.py encode MODE")
    ep.add_argument("--kinds", default="turbo4,turbo3,turbo2")
    ep.add_argument("--json")
    eargs = ep.parse_args(rest)
    kinds = [k for k in eargs.kinds.split(",") if k]
    bad = [k for k in kinds if k not in ("turbo4", "turbo3", "turbo2")]
    if bad or not kinds:
        ep.error(f"--kinds {eargs.kinds!r}: turbo4, turbo3 and/or turbo2")
    import torch
    if not torch.cuda.is_available():
        ep.error("needs a CUDA GPU")
    patch_encode(args.mode)
    res = encode_times(kinds)
    for r in res["rows"]:
        print(f"{res['card']} encode {args.mode} {r['kind']}: {r['us']:.1f} us, {r['gbps']:.0f} GB/s, "
              f"{100 * r['of_copy']:.0f}% of copy ({res['copy_gbps']:.0f} GB/s)", flush=True)
    if eargs.json:
        from compactkv.bench.provenance import commit
        with open(eargs.json, "w") as f:
            json.dump({**res, "mode": args.mode, "commit": commit()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
