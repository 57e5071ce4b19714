"""The fast decode kernel compiled for sm_90 on the CPU (no GPU): register cap holds without spills in the loop,
and the loop's instruction count stays near what was measured (scripts/sass_decode.py; docs/kernels.md)."""

from __future__ import annotations

import importlib.util
import os

import pytest

triton = pytest.importorskip("triton")

HERE = os.path.dirname(__file__)
spec = importlib.util.spec_from_file_location("sass_decode", os.path.join(HERE, "..", "scripts", "sass_decode.py"))
sass_decode = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sass_decode)

if not (os.path.exists(sass_decode.NVDISASM) and os.path.exists(sass_decode.CUOBJDUMP)):
    pytest.skip("Triton's bundled nvdisasm/cuobjdump not found", allow_module_level=True)


@pytest.mark.parametrize("kind,limit,smem", [("turbo4", 880, 8.0), ("turbo2", 720, 6.0)])
def test_loop_fits_128_registers(kind, limit, smem):
    from compactkv.attention.triton.decode import fast_maxnreg, packed_kind
    from compactkv.core.codec import Codec
    pk = packed_kind(Codec(kind, 128))
    cap = fast_maxnreg(pk, pk, 16, False)
    assert cap == 128
    k = sass_decode.compile_fast(kind, maxnreg=cap)
    text, regs, _ = sass_decode.sass(k)
    loop = sass_decode.main_loop(*sass_decode.instrs(text))
    assert regs <= 128
    # no spills inside the tile loop
    assert sass_decode.within_budget(sum(op.startswith(("LDL", "STL")) for _, op, _ in loop), 0)
    assert sum(op.startswith("HMMA") for _, op, _ in loop) == 32
    assert sass_decode.within_budget(len(loop), limit, "loop instructions per 64-token tile (833 / 698 measured)")
    # code bytes, not decoded fp16 tiles, go through shared memory to the tensor-core layout (TABLE_REGS 0;
    # opaque table registers pinned the decoders to the load layout: 12.0 cycles per token for both kinds)
    per_token = sum(sass_decode.smem_cycles(op) for _, op, _ in loop) * 4 / 64
    assert sass_decode.within_budget(per_token, smem, "shared-memory cycles per token (8.00 / 6.00 measured)")


@pytest.mark.parametrize("d", [32, 64, 128, 256])
@pytest.mark.parametrize("m", [4, 40])
def test_query_map_builds_without_spills(d, m):
    """decode.map_query's tiles (chosen by rows per KV head) compile for sm_90 without local-memory spills at every
    head_dim the kernels take: the one-launch query map of every decode step."""
    import torch
    from compactkv.attention.triton import decode
    from compactkv.attention.triton.kernels_query import query_map_kernel
    seen = {}

    class Grab:  # records the launch's constexprs instead of running it
        def __getitem__(self, grid):
            return lambda *args, **kw: seen.update(kw)
    real = decode.query_map_kernel
    decode.query_map_kernel = Grab()
    try:
        decode.map_query(torch.zeros(1, 2, m, d, dtype=torch.bfloat16), torch.eye(d))
    finally:
        decode.query_map_kernel = real
    opts = {"num_warps": seen.pop("num_warps")}
    args = dict(q_ptr=torch.empty(64, dtype=torch.bfloat16), w_ptr=torch.empty(64), out_ptr=torch.empty(64), H=8,
                M=m, w_head_stride=0)
    _, regs, stack = sass_decode.sass(sass_decode._compile(query_map_kernel, args, seen, opts))
    assert stack == 0 and regs <= 64, (regs, stack)


@pytest.mark.parametrize("k_kind,v_kind,d,rows", [("turbo4", "turbo4", 128, 1), ("turbo4", "turbo4", 128, 16),
                                                ("turbo3", "turbo2", 64, 4), ("turbo4", "turbo4", 256, 1)])
def test_encode_pair_compiles_for_sm90_without_spills(k_kind, v_kind, d, rows):
    """The K+V encode of a static layer's decode step (one launch, keys centered and scaled; one row per program
    for one-token steps): both operands' code in one kernel must still compile for sm_90 into registers only, as
    the lanes kernel alone does."""
    k = sass_decode.compile_encode_pair(k_kind, v_kind, d, block_rows=rows)
    text, regs, stack = sass_decode.sass(k)
    assert stack == 0 and regs <= 128
    ops = [op for _, op, _ in sass_decode.instrs(text)[0]]
    assert ops and not [op for op in ops if op.startswith(("LDL", "STL"))]


@pytest.mark.parametrize("kind,d", [("turbo4", 128), ("turbo3", 64), ("turbo2", 256)])
def test_centered_scaled_encode_compiles_for_sm90_without_spills(kind, d):
    """The lanes encode kernel (a decode step's one-token writes) with a centered static cache's key mean and key
    scale folded in: it must compile for sm_90 (the interpreter, which checks its bytes, does not compile) and keep
    everything in registers."""
    k = sass_decode.compile_encode(kind, d, block_rows=16, num_warps=4, kernel="lanes", center=True, scale=True)
    text, regs, stack = sass_decode.sass(k)
    assert stack == 0 and sass_decode.within_budget(regs, 128, "registers")
    ops = [op for _, op, _ in sass_decode.instrs(text)[0]]
    assert ops and not [op for op in ops if op.startswith(("LDL", "STL"))]


def test_compile_fills_in_constexprs_left_at_their_defaults(monkeypatch):
    """sass_decode._compile takes a constexpr that the caller leaves out at the kernel's default (it raised KeyError):
    the lanes encode kernel built without PLANAR / CENTER / SCALE is the build that names them False."""
    explicit = sass_decode.sass(sass_decode.compile_encode("turbo2", 32, block_rows=16, num_warps=1, kernel="lanes"))
    orig = sass_decode._compile

    def leaving_defaults(fn, args, const, options, source=None):
        const = {k: v for k, v in const.items() if k not in ("PLANAR", "CENTER", "SCALE")}
        return orig(fn, args, const, options, source)

    monkeypatch.setattr(sass_decode, "_compile", leaving_defaults)
    implicit = sass_decode.sass(sass_decode.compile_encode("turbo2", 32, block_rows=16, num_warps=1, kernel="lanes"))
    assert implicit[0] == explicit[0] and implicit[1:] == explicit[1:]


@pytest.mark.parametrize("kind", ["turbo4", "turbo2"])
def test_half_row_encode_compiles_for_sm90_in_fewer_registers(kind):
    """encode_half_kernel (a prompt's row over two threads, auto's choice at head_dim 128) compiles for sm_90
    without spills, in fewer registers and about half the code per thread of the one-row-per-thread kernel
    (sessions 14-16: 255 / 217 registers, 5,744 / 3,536 instructions; session 35: 168 / 154, 3,312 / 2,232)."""
    k = sass_decode.compile_encode(kind, 128, num_warps=2, kernel="half")
    text, regs, stack = sass_decode.sass(k)
    ops = [op for _, op, _ in sass_decode.instrs(text)[0]]
    assert stack == 0 and not [op for op in ops if op.startswith(("LDL", "STL"))]
    assert sass_decode.within_budget(regs, 176, "registers (168 / 154 measured)")
    assert sass_decode.within_budget(len(ops), {"turbo4": 3500, "turbo2": 2400}[kind],
                                     "instructions per thread (3,312 / 2,232 measured)")
    assert sum(op.startswith("SHFL") for op in ops) >= 1 + 16 * int(kind[-1]) // 8  # the tree sum's and the words'
