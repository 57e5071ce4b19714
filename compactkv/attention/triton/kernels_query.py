"""Triton kernel mapping decode queries into the K codec's space: rows @ w in one launch. Launcher:
decode.map_query.

The decode step scores the rotated, scaled query against the codes: q @ w with w fp32 [D, D] (or one per KV head).
In torch that was three launches (an fp32 copy of the query, a cuBLAS sgemm and its split-K reduction, 5-10 us on an
H200, docs/kernels.md session 11); here one program per (b, kv head) reads its query rows in their own dtype and
multiplies them in fp32 (IEEE, not TF32).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def query_map_kernel(q_ptr, w_ptr, out_ptr, H, M, w_head_stride, D: tl.constexpr, BLOCK_M: tl.constexpr):
    """q: [B*H, M, D] rows (any float dtype, contiguous), w: fp32 [D, D] per head at w_ptr + h * w_head_stride
    (stride 0: shared), out: fp32 [B*H, M, D] = q @ w."""
    bh = tl.program_id(0)
    h = bh % H
    rm = tl.arange(0, BLOCK_M)
    rd = tl.arange(0, D)
    rows = bh.to(tl.int64) * M + rm
    q = tl.load(q_ptr + rows[:, None] * D + rd[None, :], mask=(rm < M)[:, None], other=0.0).to(tl.float32)
    w = tl.load(w_ptr + h.to(tl.int64) * w_head_stride + rd[:, None] * D + rd[None, :])
    out = tl.dot(q, w, input_precision="ieee")
    tl.store(out_ptr + rows[:, None] * D + rd[None, :], out, mask=(rm < M)[:, None])
