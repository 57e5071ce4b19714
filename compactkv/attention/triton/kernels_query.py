"""Triton kernel mapping decode queries into the K codec's space: rows @ w in one launch. Launcher:
decode.map_query.

The decode step scores the rotated, scaled query against the codes: q @ w with w fp32 [D, D] (or one per KV head).
In torch that was three launches (an fp32 copy of the query, a cuBLAS sgemm and its split-K reduction, 5-10 us on an
H200, docs/kernels.md session 11); here one launch reads the query rows in their own dtype and multiplies them in
fp32 (IEEE, not TF32): program (b * H + h, row block, column block), the reduction over D in BLOCK_K slices, so the
tiles stay small at head_dim 256 and with many query rows per KV head (sm_90 builds without spills: decode.py).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def query_map_kernel(q_ptr, w_ptr, out_ptr, H, M, w_head_stride, D: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """q: [B*H, M, D] rows (any float dtype, contiguous), w: fp32 [D, D] per head at w_ptr + h * w_head_stride
    (stride 0: shared), out: fp32 [B*H, M, D] = q @ w."""
    bh = tl.program_id(0)
    h = bh % H
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rows = bh.to(tl.int64) * M + rm
    mmask = (rm < M)[:, None]
    wp = w_ptr + h.to(tl.int64) * w_head_stride
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in tl.static_range(0, D, BLOCK_K):
        q = tl.load(q_ptr + rows[:, None] * D + (k0 + rk)[None, :], mask=mmask, other=0.0).to(tl.float32)
        w = tl.load(wp + (k0 + rk)[:, None] * D + rn[None, :])
        acc = tl.dot(q, w, acc, input_precision="ieee")
    tl.store(out_ptr + rows[:, None] * D + rn[None, :], acc, mask=mmask)
