"""Triton kernel encoding K/V vectors into turboB rows in place. Launcher: encode.py.

It follows the float32 operation order of compactkv.core.quantizer exactly (tree-sum norm, Walsh-Hadamard
butterflies at h = 1, 2, 4, ... then the 1/sqrt(D) scale, correctly rounded sqrt and division, idx = number of
boundaries below y, found by binary search), so the codes are bit-identical to `Codec.encode`. The launcher
turns off mul+add fusion.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tree_sum(x, R: tl.constexpr, D: tl.constexpr, LOG2D: tl.constexpr):
    """Sum [R, D] over D as quantizer.tree_sum does: first half + second half until one is left."""
    for i in tl.static_range(LOG2D):
        x = tl.sum(tl.reshape(x, (R, 2, D >> (i + 1))), axis=1)
    return tl.reshape(x, (R,))


@triton.jit
def _butterfly(z, R: tl.constexpr, D: tl.constexpr, HS: tl.constexpr):
    """One Walsh-Hadamard stage at distance HS: (a, b) -> (a + b, a - b) for a = z[i], b = z[i + HS]."""
    z = tl.permute(tl.reshape(z, (R, D // (2 * HS), 2, HS)), (0, 1, 3, 2))
    a, b = tl.split(z)
    z = tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2))
    return tl.reshape(z, (R, D))


@triton.jit
def encode_mse_kernel(x_ptr, sxb, sxh, sxt, out_ptr, sob, soh, sot, pos_ptr, signs_ptr, cb_ptr, bnd_ptr,
                      n_rows, H, T, inv_sqrt, norm_scale, norm_ptr, snb, snh, D: tl.constexpr, LOG2D: tl.constexpr,
                      BITS: tl.constexpr, NORM_CORR: tl.constexpr, UNBIASED: tl.constexpr, HAS_POS: tl.constexpr,
                      BLOCK_R: tl.constexpr, PLANAR: tl.constexpr = False):
    """x [B, H, T, D] (last dim contiguous) -> rows [fp16 norm][D indices of BITS bits] at out[b, h, pos[b] + t];
    PLANAR: the indices at out[b, h, pos[b] + t] and the fp16 norm at norm[b, h, pos[b] + t] (token stride 1)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < n_rows
    b = r // (H * T)
    h = (r // T) % H
    t = r % T
    rd = tl.arange(0, D)
    src = x_ptr + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + t.to(tl.int64) * sxt
    x = tl.load(src[:, None] + rd[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
    norm = tl.sqrt_rn(_tree_sum(x * x, BLOCK_R, D, LOG2D))
    z = x * tl.load(signs_ptr + rd)[None, :]
    for i in tl.static_range(LOG2D):
        z = _butterfly(z, BLOCK_R, D, 1 << i)
    z = z * inv_sqrt
    pos = norm > 0
    safe = tl.where(pos, norm, 1.0)
    y = tl.where(pos[:, None], tl.div_rn(z, safe[:, None]), 0.0)
    # idx = the number of boundaries below y (the CPU's count), by binary search over the ascending boundaries:
    # BITS compares and table loads per value instead of 2**BITS - 1 compares (SASS for sm_90: 222 -> ~110
    # instructions per value for turbo4 at head_dim 128, 96 -> 64 registers; docs/kernels.md)
    idx = (y > tl.load(bnd_ptr + (1 << (BITS - 1)) - 1)).to(tl.int32) << (BITS - 1)
    for lvl in tl.static_range(1, BITS):
        idx += (y > tl.load(bnd_ptr + idx + ((1 << (BITS - 1 - lvl)) - 1))).to(tl.int32) << (BITS - 1 - lvl)
    stored = norm
    if NORM_CORR:
        c = tl.load(cb_ptr + idx)
        cn = tl.sqrt_rn(_tree_sum(c * c, BLOCK_R, D, LOG2D))
        stored = tl.where(cn > 0, tl.div_rn(norm, tl.where(cn > 0, cn, 1.0)), norm)
    if UNBIASED:  # Codec(unbiased=True): the stored norm times a float32 constant, as the CPU multiplies it
        stored = stored * norm_scale
    if HAS_POS:
        t = t + tl.load(pos_ptr + b, mask=rmask, other=0)
    row = out_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh + t.to(tl.int64) * sot
    if PLANAR:
        tl.store(norm_ptr + b.to(tl.int64) * snb + h.to(tl.int64) * snh + t, stored.to(tl.float16), mask=rmask)
        codes = row
    else:
        tl.store(row.to(tl.pointer_type(tl.float16)), stored.to(tl.float16), mask=rmask)
        codes = row + 2
    if BITS == 3:
        word = tl.sum(tl.reshape(idx, (BLOCK_R, D // 8, 8)) << (tl.arange(0, 8) * 3)[None, None, :], axis=2)
        g = codes[:, None] + 3 * tl.arange(0, D // 8)[None, :]
        tl.store(g, (word & 255).to(tl.uint8), mask=rmask[:, None])
        tl.store(g + 1, ((word >> 8) & 255).to(tl.uint8), mask=rmask[:, None])
        tl.store(g + 2, (word >> 16).to(tl.uint8), mask=rmask[:, None])
    else:
        PER: tl.constexpr = 8 // BITS
        byte = tl.sum(tl.reshape(idx, (BLOCK_R, D // PER, PER)) << (tl.arange(0, PER) * BITS)[None, None, :], axis=2)
        tl.store(codes[:, None] + tl.arange(0, D // PER)[None, :], byte.to(tl.uint8), mask=rmask[:, None])
