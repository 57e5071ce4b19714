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
    assert not [op for _, op, _ in loop if op.startswith(("LDL", "STL"))]  # no spills inside the tile loop
    assert sum(op.startswith("HMMA") for _, op, _ in loop) == 32
    assert len(loop) <= limit, f"{len(loop)} instructions per warp per 64-token tile (measured 833 / 698)"
    # code bytes, not decoded fp16 tiles, go through shared memory to the tensor-core layout (TABLE_REGS 0;
    # opaque table registers pinned the decoders to the load layout: 12.0 cycles per token for both kinds)
    per_token = sum(sass_decode.smem_cycles(op) for _, op, _ in loop) * 4 / 64
    assert per_token <= smem, f"{per_token:.2f} shared-memory cycles per token (measured 8.00 / 6.00)"
