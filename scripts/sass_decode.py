"""SASS of the fast decode kernel for sm_90, compiled on any machine (no GPU needed): registers and the
instructions of the main (full-tile) loop, by opcode.

    python scripts/sass_decode.py [--kinds turbo4,turbo2,turbo4/turbo2] [--block-n 64] [--warps 4] [--stages 2]
                                  [--maxnreg N] [--prefetch 0|1|2] [--table-regs 0-3] [--dump DIR]
    python scripts/sass_decode.py --encode [--kinds turbo2,turbo3,turbo4] [--d 128]   # the encode kernels

Arguments are specialized as the launcher would at Llama-3.1-8B decode (8 KV heads, GQA 4, one query token, one
chunk): pointers 16-byte aligned, ints divisible by 16 marked so, ints equal to 1 constexpr.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import subprocess
import sys

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from compactkv.attention.triton import kernels_fast  # noqa: E402
from compactkv.attention.triton.decode import FAST_PREFETCH, fast_table_regs, packed_kind  # noqa: E402
from compactkv.attention.triton.fastasm import decode_asm, table_words  # noqa: E402
from compactkv.core.codec import Codec  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
NVDISASM, CUOBJDUMP = os.path.join(BIN, "nvdisasm"), os.path.join(BIN, "cuobjdump")


def compile_fast(kind: str, d: int = 128, block_n: int = 64, num_warps: int = 4, num_stages: int = 2,
                 g: int = 4, h: int = 8, extra: dict | None = None, maxnreg: int | None = None,
                 v_kind: str | None = None):
    """decode_fast_kernel for K rows of `kind` and V rows of `v_kind` (default: the same kind)."""
    pk = packed_kind(Codec(kind, d))
    pv = packed_kind(Codec(v_kind or kind, d))
    fn = kernels_fast.decode_fast_kernel
    dummy = torch.empty(64, dtype=torch.float32)
    tab = torch.empty(3, dtype=torch.int64)
    lens = torch.empty(8, dtype=torch.int32)
    args = dict(q_ptr=dummy, k_tab=tab, v_tab=tab, len_ptr=lens, bias_ptr=dummy, bias_sb=0,
                bias_sq=0, o_ptr=dummy, ml_ptr=dummy, H=h, G=g, TQ=1, TQB=1, CHUNK=1 << 30, qshift=0,
                num_splits=16)
    const = dict(K_BITS=pk.bits, V_BITS=pv.bits, K_ASM=decode_asm(d, pk.bits), V_ASM=decode_asm(d, pv.bits), D=d,
                 RBK=pk.row_bytes, RBV=pv.row_bytes, CAUSAL=False, HAS_BIAS=False, BLOCK_M=16,
                 BLOCK_N=block_n, ONE_CHUNK=True,
                 K_TW0=table_words(d, pk.bits)[0], K_TW1=table_words(d, pk.bits)[1],
                 V_TW0=table_words(d, pv.bits)[0], V_TW1=table_words(d, pv.bits)[1], PREFETCH=FAST_PREFETCH,
                 TABLE_REGS=fast_table_regs(pk, pv))
    const.update(extra or {})
    return _compile(fn, args, const, dict(num_warps=num_warps, num_stages=num_stages,
                                          **({"maxnreg": maxnreg} if maxnreg else {})))


def compile_encode(kind: str, d: int = 128, block_rows: int = 16, num_warps: int = 4, norm_correction: bool = True,
                   kernel: str = "lanes", center: bool = False, scale: bool = False):
    """An encode kernel as encode.encode_rows launches it (fp16 input, rows of 8 heads x 4096 tokens): "lanes"
    (encode_mse_kernel, block_rows rows per program), "row" (encode_row_kernel, one row per thread) or "half"
    (encode_half_kernel, a row over two threads); center:
    with the key mean subtracted in the kernel (a centered static cache's keys); scale: times the key scale."""
    from compactkv.attention.triton.encode import _row_constants
    from compactkv.attention.triton.kernels_encode import encode_half_kernel, encode_mse_kernel, encode_row_kernel
    codec = Codec(kind, d)
    x = torch.empty(64, dtype=torch.float16)
    out = torch.empty(64, dtype=torch.uint8)
    f32 = torch.empty(64, dtype=torch.float32)
    rows = 8 * 4096
    args = dict(x_ptr=x, sxb=rows * d, sxh=4096 * d, sxt=d, out_ptr=out, sob=rows * codec.row_bytes,
                soh=4096 * codec.row_bytes, sot=codec.row_bytes, pos_ptr=torch.empty(8, dtype=torch.int32),
                signs_ptr=f32, cb_ptr=f32, bnd_ptr=f32, c2_ptr=f32,
                H=8, T=4096, inv_sqrt=d ** -0.5, norm_scale=1.01, norm_ptr=out, snb=0, snh=0, c_ptr=f32,
                scb=8 * d, sch=d, s_ptr=f32, ssh=d)
    const = dict(D=d, LOG2D=d.bit_length() - 1, BITS=codec.spec.bits, NORM_CORR=norm_correction, UNBIASED=False,
                 HAS_POS=False, BLOCK_R=block_rows, PLANAR=False, CENTER=center, SCALE=scale)
    if kernel in ("row", "half"):  # half: encode_half_kernel, a row over two threads (16 rows per warp)
        half = kernel == "half"
        signs, mids, _ = _row_constants(d, codec.spec.bits, 0, torch.device("cpu"))
        halves = d * codec.spec.bits // (32 if half else 16)
        const.update(BLOCK_R=(16 if half else 32) * num_warps, SIGNS=signs, MIDS=mids,
                     LOG2H=max(1, (halves - 1).bit_length()))
        return _compile(encode_half_kernel if half else encode_row_kernel, args, const,
                        dict(num_warps=num_warps, enable_fp_fusion=False))
    return _compile(encode_mse_kernel, args, const, dict(num_warps=num_warps, enable_fp_fusion=False))


def compile_encode_pair(k_kind: str, v_kind: str, d: int = 128, block_rows: int = 16, center: bool = True,
                        scale: bool = True, planar: bool = True):
    """encode_pair_kernel as encode.encode_pair launches it for a static layer's decode step (fp16 input, 8 heads,
    one token per row, K centered and scaled, planar targets)."""
    from compactkv.attention.triton.kernels_encode import encode_pair_kernel
    kc, vc = Codec(k_kind, d), Codec(v_kind, d, seed=1)
    x = torch.empty(64, dtype=torch.float16)
    u8, f16, f32 = torch.empty(64, dtype=torch.uint8), torch.empty(64, dtype=torch.float16), torch.empty(64)
    t = 4096
    args = dict(kx_ptr=x, skxb=8 * d, skxh=d, skxt=8 * d, kout_ptr=u8, skob=8 * t * 64, skoh=t * 64, skot=64,
                k_signs=f32, k_cb=f32, k_bnd=f32, k_scale=1.01, kn_ptr=f16, sknb=8 * t, sknh=t, c_ptr=f32,
                scb=8 * d, sch=d, s_ptr=f32, ssh=d, vx_ptr=x, svxb=8 * d, svxh=d, svxt=8 * d, vout_ptr=u8,
                svob=8 * t * 64, svoh=t * 64, svot=64, v_signs=f32, v_cb=f32, v_bnd=f32, v_scale=1.0, vn_ptr=f16,
                svnb=8 * t, svnh=t, pos_ptr=torch.empty(8, dtype=torch.int32), H=8, T=1, inv_sqrt=d ** -0.5)
    const = dict(D=d, LOG2D=d.bit_length() - 1, K_BITS=kc.spec.bits, K_NORM_CORR=True, K_UNBIASED=True,
                 V_BITS=vc.spec.bits, V_NORM_CORR=True, V_UNBIASED=False, HAS_POS=True, BLOCK_R=block_rows,
                 PLANAR=planar, CENTER=center, SCALE=scale)
    return _compile(encode_pair_kernel, args, const, dict(num_warps=4, enable_fp_fusion=False))


def compile_gluon(kind: str, d: int = 128, block_n: int = 32, maxnreg: int | None = None, v_kind: str | None = None,
                  prefetch: int = 0, stages: int = 3):
    """decode_gluon_kernel (one warp) for planar K codes of `kind` and V codes of `v_kind`, 8 KV heads, GQA 4."""
    from triton.experimental.gluon._runtime import GluonASTSource
    from compactkv.attention.triton.gluon import gluon_constants
    from compactkv.attention.triton.kernels_gluon import decode_gluon_kernel
    pk, pv = packed_kind(Codec(kind, d)), packed_kind(Codec(v_kind or kind, d))
    f32, u8 = torch.empty(64, dtype=torch.float32), torch.empty(64, dtype=torch.uint8)
    f16, i32 = torch.empty(64, dtype=torch.float16), torch.empty(8, dtype=torch.int32)
    t = 32768
    args = dict(q_ptr=f32, kc_ptr=u8, kn_ptr=f16, vc_ptr=u8, vn_ptr=f16, len_ptr=i32, o_ptr=f32, ml_ptr=f32,
                H=8, MQ=4, num_splits=16, kcsb=8 * t * d * pk.bits // 8, kcsh=t * d * pk.bits // 8,
                vcsb=8 * t * d * pv.bits // 8, vcsh=t * d * pv.bits // 8, nsb=8 * t, nsh=t)
    const = dict(gluon_constants(pk, pv, block_n), LAZY_TAU=8.0, PREFETCH=prefetch, STAGES=stages)
    return _compile(decode_gluon_kernel, args, const, dict(num_warps=1, **({"maxnreg": maxnreg} if maxnreg else {})),
                    source=GluonASTSource)


def compile_lut(kind: str = "turbo4", d: int = 128, warps: int = 4, block_n: int = 32, v_kind: str | None = None,
                pipe: int = 0, maxnreg: int | None = None, qmap: bool = False, fused: bool = False,
                rows: bool = False, sinks: bool = False, clocks: bool = False, hadamard: bool = False,
                early: bool | None = None, compact: bool | None = None, tma: bool | None = None,
                bias: bool = False):
    """decode_lut_kernel (the shared-memory table kernel, `warps` splits per program) for turbo4, turbo3 or turbo2
    planes, or (rows) codec rows through chunk tables; clocks: with the phase stamps (kernels_lut `_stamp`);
    hadamard: the maps as Hadamard factors (`gluon.lut_hadamard_maps`); early: the first tiles' loads before the
    prologue (`gluon.lut_early_loads`; None: as the launcher would); compact: the softmax over query rows 0-3
    only (None: as the launcher would, `gluon.lut_compact` of the 4 query rows here); tma: V's tiles through a
    tensor map (None: as the launcher would, `gluon.lut_tma`); bias: with an additive bias per token (`launch_rows`'
    and `launch_gluon`'s bias=)."""
    from triton.experimental.gluon._runtime import GluonASTSource
    from compactkv.attention.triton.gluon import GLUON_ROWS, lut_compact, lut_tma
    from compactkv.attention.triton.kernels_lut import decode_lut_kernel, lut_asm, lut_asm_k, lut_layouts
    from compactkv.attention.triton.gluon import lut_config_error, lut_early_loads, lut_query_rows, lut_stage_layouts
    if kind not in ("turbo4", "turbo3", "turbo2") or (v_kind or kind) != kind:
        raise ValueError("the table kernel reads turbo4, turbo3 or turbo2 K and V codes (the same kind) only")
    bits = int(kind[-1])
    why = lut_config_error(bits, d, warps, pipe, maxnreg or 128, block_n)
    if why:
        raise ValueError(why)
    f32, u8 = torch.empty(64, dtype=torch.float32), torch.empty(64, dtype=torch.uint8)
    f16, i32 = torch.empty(64, dtype=torch.float16), torch.empty(8, dtype=torch.int32)
    t, nb = 32768, d * bits // 8
    args = dict(q_ptr=f32, kc_ptr=u8, kn_ptr=f16, vc_ptr=u8, vn_ptr=f16, len_ptr=i32, o_ptr=f32, ml_ptr=f32,
                lut_ptr=i32, H=8, MQ=4, num_splits=16, kcsb=8 * t * nb, kcsh=t * nb, vcsb=8 * t * nb, vcsh=t * nb,
                nsb=8 * t, nsh=t, w_ptr=f32, w_hs=0, cnt_ptr=i32, adj_ptr=f32,
                out_ptr=torch.empty(64, dtype=torch.bfloat16), k_tab=torch.empty(64, dtype=torch.int64),
                v_tab=torch.empty(64, dtype=torch.int64), CHUNK_SHIFT=10, sk_ptr=torch.empty(64, dtype=torch.bfloat16),
                sv_ptr=torch.empty(64, dtype=torch.bfloat16), n_sink=4, s_sb=8 * 4 * d, s_sh=4 * d, kmean_ptr=f32,
                qscale=0.127, clk_ptr=torch.empty(64, dtype=torch.int64) if clocks else None, vmap_ptr=u8,
                bias_ptr=f32 if bias else None, s_bb=t if bias else 0)
    if qmap:
        args["q_ptr"] = torch.empty(64, dtype=torch.bfloat16)
    keys = d // 4 if bits == 2 else d // 2
    kload, vload, kword, vword = lut_layouts(warps, block_n, keys, words=True)
    tma = lut_tma(pipe, d * bits // 8, rows) if tma is None else tma
    kstage, vstage = lut_stage_layouts(pipe, kword, vword, tma)
    const = dict(D=d, ASM=lut_asm(pipe >= 2, bits), KASM=lut_asm_k(pipe >= 2, bits), W=warps, BN=block_n,
                 NH=GLUON_ROWS, BLOCK_M=16, KLOAD=kload, VLOAD=vload, PIPE=pipe, KWORD=kword, VWORD=vword,
                 BITS=bits, QMAP=qmap, QR=lut_query_rows(4, d, warps), FUSED=fused, CODEC_ROWS=rows, SINKS=sinks,
                 KMEAN=sinks, KSTAGE=kstage, VSTAGE=vstage, HAD=hadamard,
                 EARLY=lut_early_loads(bits, pipe, qmap and not hadamard, early, fused),
                 COMPACT=lut_compact(4, warps, bits, rows) if compact is None else compact, BIAS=bias)
    return _compile(decode_lut_kernel, args, const, dict(num_warps=warps, maxnreg=maxnreg or 128),
                    source=GluonASTSource)


TIMED_TRITON = "3.6"  # the triton release whose sm_90 builds the register / spill budgets below were set on (timed)


def within_budget(n: float, limit: float, what: str = "spill instructions") -> bool:
    """n <= limit where this triton is the timed release (TIMED_TRITON); on another release True, with a warning
    where n is over: its compiler allocates registers its own way (triton 3.9: a few spills in some builds, docs/
    kernels.md session 26), and the tests still check that every build compiles and keeps its structure."""
    if triton.__version__.startswith(TIMED_TRITON + "."):
        return n <= limit
    if n > limit:
        import warnings
        warnings.warn(f"triton {triton.__version__}: {n} {what}, {limit} with triton {TIMED_TRITON} (not timed on "
                      "this release)")
    return True


def _compile(fn, args: dict, const: dict, options: dict, source=None):
    """Compile `fn` for sm_90 with `const` as constexprs and the other arguments specialized as Triton's launcher
    would specialize `args` (alignment, divisibility by 16, ints equal to 1; not the kernel's do_not_specialize)."""
    args = {k: v for k, v in args.items() if k in fn.arg_names}  # (callers may pass more than this kernel takes)
    sig, constexprs, attrs = {}, {}, {}
    fixed = set(getattr(fn, "do_not_specialize", ()))  # (indices or names: values the launcher leaves as they are)
    defaults = {p.name: p.default for p in fn.params if p.is_constexpr and p.default is not inspect.Parameter.empty}
    for i, name in enumerate(fn.arg_names):
        if name not in const and name not in args and name in defaults:
            const = {**const, name: defaults[name]}  # (a constexpr the caller leaves at its default)
        if name in const:
            sig[name] = "constexpr"
            constexprs[(i,)] = const[name]
            continue
        ty, spec = native_specialize_impl(BaseBackend, args[name], False, i not in fixed and name not in fixed, True)
        sig[name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = spec
        elif spec:
            attrs[(i,)] = BaseBackend.parse_attr(spec)
    src = (source or triton.compiler.ASTSource)(fn, sig, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def sass(kernel) -> tuple[str, int, int]:
    """(disassembly, registers, stack bytes)."""
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run([NVDISASM, "-c", f.name], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    regs = int(re.search(r"REG:(\d+)", res).group(1))
    stack = int(re.search(r"STACK:(\d+)", res).group(1))
    return text, regs, stack


def instrs(text: str) -> tuple[list[tuple[int, str, str]], dict[str, int]]:
    """(address, opcode, line) of each instruction, and the address of each label."""
    out, labels, pending = [], {}, []
    for line in text.splitlines():
        lm = re.match(r"\s*(\.L_x_\d+):", line)
        if lm:
            pending.append(lm.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m:
            addr = int(m.group(1), 16)
            for name in pending:
                labels[name] = addr
            pending = []
            out.append((addr, m.group(3), line.strip()))
    return out, labels


def main_loop(ins: list[tuple[int, str, str]], labels: dict[str, int]) -> list[tuple[int, str, str]]:
    """Instructions of the loop (backward branch) holding the most HMMAs."""
    best = []
    for addr, op, line in ins:
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
        if not m or labels.get(m.group(1), addr) >= addr:
            continue
        body = [x for x in ins if labels[m.group(1)] <= x[0] <= addr]
        if sum(x[1].startswith("HMMA") for x in body) > sum(x[1].startswith("HMMA") for x in best):
            best = body
    return best


def smem_cycles(op: str) -> int:
    """Shared-memory cycles of one warp-wide instruction without bank conflicts: 128 bytes per cycle, at least 1
    (LDS/STS by access width, LDSM/STSM by their 8x8 fp16 matrices); 0 for anything else."""
    parts = op.split(".")
    if parts[0] in ("LDSM", "STSM"):
        return int(parts[-1]) if parts[-1].isdigit() else 1  # .x4: four 128-byte matrices
    if parts[0] in ("LDS", "STS"):
        width = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}
        size = next((width[p] for p in parts[1:] if p in width), 4)
        return max(1, 32 * size // 128)
    return 0


def summary(kind: str, gluon: bool = False, lut: bool = False, **kw) -> dict:
    """kind: "turbo4", or a K/V pair "turbo4/turbo2". gluon: the one-warp Gluon kernel (kw: d, block_n,
    maxnreg) instead of the fast kernel; lut: the table kernel (kw: d, warps, block_n)."""
    k_kind, _, v_kind = kind.partition("/")
    k = (compile_lut if lut else compile_gluon if gluon else compile_fast)(k_kind, v_kind=v_kind or None, **kw)
    text, regs, stack = sass(k)
    loop = main_loop(*instrs(text))
    ops = collections.Counter(op.split(".")[0] for _, op, _ in loop)
    return {"kind": kind, **kw, "regs": regs, "spills": stack, "loop": len(loop), "ops": ops,
            "shared": k.metadata.shared,
            "smem_cycles": sum(smem_cycles(op) for _, op, _ in loop), "sass": text, "ptx": k.asm["ptx"]}


def build_hashes() -> list[str]:
    """One line per default build: its name, the SHA-1 of its sm_90 disassembly (12 hex digits), registers and
    stack bytes. Two trees (or triton releases) whose lines match build the same machine code."""
    import hashlib
    from compactkv.attention.triton.gluon import (BULK_PIPES, LUT_FUSED_FALLBACKS, LUT_MAXNREG, LUT_PIPE,
                                                  LUT_ROWS_MAXNREG, LUT_ROWS_PIPE, lut_fused_build, lut_fused_maxnreg)
    out = []
    for kind in ("turbo4", "turbo3", "turbo2"):
        bits = int(kind[-1])
        pipe, bn = lut_fused_build(bits)
        fused = dict(pipe=pipe, block_n=bn, maxnreg=lut_fused_maxnreg(bits), qmap=True, fused=True, hadamard=True)
        bulk = None
        if pipe in BULK_PIPES:  # (turbo4 since session 28, turbo2 since 29: the register build, named as before, is the
            # fallback before sm_90)
            back = LUT_FUSED_FALLBACKS[bits]
            fused, bulk = dict(fused, pipe=back[0], block_n=back[1], maxnreg=lut_fused_maxnreg(bits, back[0])), fused
        builds = {"fused": fused, "fused-early": dict(fused, early=True),
                  "planes": dict(pipe=LUT_PIPE, block_n=32, maxnreg=LUT_MAXNREG),
                  "rows": dict(pipe=LUT_ROWS_PIPE, block_n=32, maxnreg=LUT_ROWS_MAXNREG, rows=True),
                  "rows3": dict(pipe=3, block_n=32, maxnreg=LUT_ROWS_MAXNREG, rows=True)}
        if bulk is not None:
            builds["fused-bulk"] = bulk
        for name, kw in builds.items():
            text, regs, stack = sass(compile_lut(kind, 128, 8, **kw))
            out.append(f"table {kind} {name} {hashlib.sha1(text.encode()).hexdigest()[:12]} regs {regs} stack {stack}")
    for kind in ("turbo4", "turbo2"):
        for pf in (0, 1, 2):
            text, regs, stack = sass(compile_gluon(kind, 128, prefetch=pf))
            out.append(f"gluon {kind} prefetch {pf} {hashlib.sha1(text.encode()).hexdigest()[:12]} regs {regs} "
                       f"stack {stack}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default="turbo4,turbo2", help="kinds, or K/V pairs such as turbo4/turbo2")
    ap.add_argument("--block-n", type=int, help="tokens per tile (default 64; 32 with --gluon)")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--maxnreg", type=int)
    ap.add_argument("--prefetch", type=int, choices=(0, 1, 2), default=FAST_PREFETCH,
                    help="the fast kernel's PREFETCH (0: none, 1: next tile's K rows, 2: K and V); with --gluon the Gluon "
                         "kernel's (0: V after the softmax, 1: K and V at the tile's start, 2: next tile's)")
    ap.add_argument("--table-regs", type=int, choices=(0, 1, 2, 3), default=None,
                    help="the fast kernel's TABLE_REGS: decoder tables in opaque registers for K (bit 0) and V "
                         "(bit 1), constants otherwise (default: decode.fast_table_regs for the kind)")
    ap.add_argument("--encode", action="store_true",
                    help="the encode kernels instead (lanes: 16 rows per program; row: one row per thread; half: a "
                         "row over two threads; --warps, norm correction): registers and instructions per value (the "
                         "kernels have no loop)")
    ap.add_argument("--gluon", action="store_true",
                    help="the one-warp Gluon kernel over planar codes (--block-n, --maxnreg; default 32 tokens)")
    ap.add_argument("--lut", action="store_true",
                    help="the shared-memory table kernel (turbo4, turbo3 or turbo2; --warps splits per program, default 4)")
    ap.add_argument("--pipe", type=int, choices=(0, 1, 2, 3, 4, 6, 7, 8), default=0,
                    help="with --lut: the next tile's code bytes through a cp.async stage (1) or registers (2; 3: "
                         "two tiles ahead), or the next tiles' words through cp.async stages (4) or per-warp bulk "
                         "copies into stages (6; 7: each operand's copy issued once its stage is read; 8: K's so)")
    ap.add_argument("--qmap", action="store_true",
                    help="with --lut: the query map in the kernel's prologue (bf16 query rows and the fp32 map)")
    ap.add_argument("--fused", action="store_true",
                    help="with --lut: the step finished in the kernel (the program's splits merged, the last program "
                         "of a group merges the group and applies the V inverse map)")
    ap.add_argument("--clocks", action="store_true",
                    help="with --lut: the build with phase stamps (scripts/phase_clocks.py's)")
    ap.add_argument("--rows", action="store_true",
                    help="with --lut --pipe 2|3: codec rows (the dynamic cache's chunks) through chunk tables")
    ap.add_argument("--hadamard", action="store_true",
                    help="with --lut --qmap --fused: the query and V maps as Hadamard factors (attend_planes' default "
                         "for rotated maps, gluon.lut_hadamard_maps)")
    ap.add_argument("--compact", action=argparse.BooleanOptionalAction, default=None,
                    help="with --lut: the softmax over query rows 0-3 only (4 query rows here), half the values a lane "
                         "(default: gluon.lut_compact's)")
    ap.add_argument("--tma", action=argparse.BooleanOptionalAction, default=None,
                    help="with --lut --pipe 6|7|8: V's tiles through a tensor map with the 64-byte swizzle (turbo4 at "
                         "head_dim 128; default: gluon.lut_tma's)")
    ap.add_argument("--dump")
    ap.add_argument("--hashes", action="store_true",
                    help="a SHA-1 of each default build's sm_90 SASS (the table kernel's finishing, early, planes and "
                         "rows builds of turbo4/turbo3/turbo2, the Gluon kernel's): compare two trees or releases")
    args = ap.parse_args(argv)
    if args.hashes:
        for line in build_hashes():
            print(line, flush=True)
        return 0
    if args.fused and not args.lut:
        ap.error("--fused is an option of the table kernel (--lut)")
    if args.rows and not (args.lut and args.pipe >= 2):
        ap.error("--rows is an option of the table kernel with --pipe 2 or 3")
    if args.qmap and not args.lut:
        ap.error("--qmap is an option of the table kernel (--lut)")
    if args.hadamard and not (args.lut and args.qmap and args.fused):
        ap.error("--hadamard is an option of the finishing table kernel (--lut --qmap --fused)")
    if args.gluon:
        args.warps = 1
    args.block_n = args.block_n or (32 if args.gluon or args.lut else 64)
    for kind in args.kinds.split(","):
        if args.encode:
            for kernel in ("lanes", "row", "half"):
                if (kernel == "row" and args.d > 128) or (kernel == "half" and args.d not in (64, 128)):
                    continue
                text, regs, stack = sass(compile_encode(kind, args.d, num_warps=args.warps, kernel=kernel))
                # values per lane: 16 rows per lanes program, one row per thread in the row kernel, half a row in
                # the half-row kernel
                per_lane = {"row": args.d, "half": args.d / 2}.get(kernel, 16 * args.d / (32 * args.warps))
                print(f"encode {kind} d={args.d} w={args.warps} {kernel}: regs {regs}, stack {stack} bytes, "
                      f"{len(instrs(text)[0]) / per_lane:.1f} instructions per value per lane")
            continue
        k_kind, _, v_kind = kind.partition("/")
        pk, pv = (packed_kind(Codec(x, args.d)) for x in (k_kind, v_kind or k_kind))
        table_regs = fast_table_regs(pk, pv) if args.table_regs is None else args.table_regs
        if args.lut:
            s = summary(kind, lut=True, d=args.d, warps=args.warps, block_n=args.block_n, pipe=args.pipe,
                        maxnreg=args.maxnreg, qmap=args.qmap, fused=args.fused, rows=args.rows,
                        clocks=args.clocks, hadamard=args.hadamard, compact=args.compact,
                        tma=args.tma)
            args.warps = 1  # instructions per warp: each warp runs its own split
        elif args.gluon:
            s = summary(kind, gluon=True, d=args.d, block_n=args.block_n, maxnreg=args.maxnreg,
                        prefetch=args.prefetch, stages=args.stages)
        else:
            s = summary(kind, d=args.d, block_n=args.block_n, num_warps=args.warps, num_stages=args.stages,
                        maxnreg=args.maxnreg, extra={"PREFETCH": args.prefetch, "TABLE_REGS": table_regs})
        vals = args.d * args.block_n * 2  # K+V values per tile
        top = " ".join(f"{op}:{n}" for op, n in s["ops"].most_common(14))
        ops = s["ops"]
        print(f"{kind} d={args.d} N={args.block_n} w={args.warps} s={args.stages} prefetch={args.prefetch} "
              f"table_regs={table_regs}: regs "
              f"{s['regs']} stack {s['spills']} loop {s['loop']} instr/warp/tile "
              f"({s['loop'] * args.warps / args.block_n:.1f}/token, "
              f"{s['loop'] * 32 * args.warps / vals:.2f} lane-instructions per K/V value; in the loop LDL+STL "
              f"{ops['LDL'] + ops['STL']}, BAR {ops['BAR']}, LDS {ops['LDS']}; shared-memory cycles per token "
              f"{s['smem_cycles'] * args.warps / args.block_n:.2f})\n  {top}")
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            for ext in ("sass", "ptx"):
                with open(os.path.join(args.dump, f"{kind.replace('/', '-')}.{ext}"), "w") as f:
                    f.write(s[ext])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as exc:  # a kind, head_dim or option the chosen kernel does not take
        print(f"sass_decode.py: {exc}", file=sys.stderr)
        sys.exit(2)
