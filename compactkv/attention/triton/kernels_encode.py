"""Triton kernels encoding K/V vectors into turboB rows in place. Launcher: encode.py.

Both follow the float32 operation order of compactkv.core.quantizer exactly (tree-sum norm, Walsh-Hadamard
butterflies at h = 1, 2, 4, ... then the 1/sqrt(D) scale, correctly rounded sqrt, idx = number of boundaries
below y = z / norm correctly rounded), so the codes are bit-identical to `Codec.encode`. The launcher turns off
mul+add fusion.

- `encode_row_kernel` (head_dim 32/64/128): one row per thread, every step in registers (no shuffles, no
  shared memory, no table gathers for the search). The division is not made at all: y > b exactly when
  z > m_b * norm with m_b the midpoint of b and the next float32 (a tie is impossible: m_b needs 25 bits), and
  the product is exact in float64, so each row's thresholds are computed once in float64 and rounded to the
  float32 that compares the same way; the code is a binary search over them.
- `encode_mse_kernel` (any head_dim, head_dim 256 by default): the row across the lanes of a program, the
  division correctly rounded and a binary search over the boundaries in global memory. `encode_pair_kernel` runs
  the same code for a layer's keys and values in one launch (decode steps of the static cache).
"""

from __future__ import annotations

import os

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
def _store_norm(norm, c2sum, norm_scale, out_ptr, sob, soh, sot, pos_ptr, norm_ptr, snb, snh, b, h, t, rmask,
                NORM_CORR: tl.constexpr, UNBIASED: tl.constexpr, HAS_POS: tl.constexpr, PLANAR: tl.constexpr):
    """Store each row's fp16 norm at token pos[b] + t (norm / sqrt(c2sum), the centroids' norm, with norm correction;
    times norm_scale for unbiased keys) in front of its codes, or in the norm plane (PLANAR). Returns where the
    row's codes go."""
    stored = norm
    if NORM_CORR:
        cn = tl.sqrt_rn(c2sum)
        stored = tl.where(cn > 0, tl.div_rn(norm, tl.where(cn > 0, cn, 1.0)), norm)
    if UNBIASED:  # Codec(unbiased=True): the stored norm times a float32 constant, as the CPU multiplies it
        stored = stored * norm_scale
    if HAS_POS:
        t = t + tl.load(pos_ptr + b, mask=rmask, other=0)
    row = out_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh + t.to(tl.int64) * sot
    if PLANAR:
        tl.store(norm_ptr + b.to(tl.int64) * snb + h.to(tl.int64) * snh + t, stored.to(tl.float16), mask=rmask)
        return row
    tl.store(row.to(tl.pointer_type(tl.float16)), stored.to(tl.float16), mask=rmask)
    return row + 2


@triton.jit
def encode_mse_kernel(x_ptr, sxb, sxh, sxt, out_ptr, sob, soh, sot, pos_ptr, signs_ptr, cb_ptr, bnd_ptr,
                      H, T, inv_sqrt, norm_scale, norm_ptr, snb, snh, c_ptr, scb, sch, s_ptr, ssh,
                      D: tl.constexpr, LOG2D: tl.constexpr, BITS: tl.constexpr, NORM_CORR: tl.constexpr,
                      UNBIASED: tl.constexpr, HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr,
                      PLANAR: tl.constexpr = False, CENTER: tl.constexpr = False, SCALE: tl.constexpr = False):
    """x [B, H, T, D] (last dim contiguous) -> rows [fp16 norm][D indices of BITS bits] at out[b, h, pos[b] + t];
    PLANAR: the indices at out[b, h, pos[b] + t] and the fp16 norm at norm[b, h, pos[b] + t] (token stride 1).
    CENTER: float32 c[b, h, :] (strides scb, sch; unit stride over D) subtracted from every row in float32 first,
    as the CPU encodes x.float() - c; SCALE: then times float32 s[h, :] (stride ssh), as (x.float() - c) * s."""
    _lanes_rows(x_ptr, sxb, sxh, sxt, out_ptr, sob, soh, sot, pos_ptr, signs_ptr, cb_ptr, bnd_ptr, H, T, inv_sqrt,
                norm_scale, norm_ptr, snb, snh, c_ptr, scb, sch, s_ptr, ssh, D, LOG2D, BITS, NORM_CORR, UNBIASED,
                HAS_POS, BLOCK_R, PLANAR, CENTER, SCALE)


@triton.jit
def encode_pair_kernel(kx_ptr, skxb, skxh, skxt, kout_ptr, skob, skoh, skot, k_signs, k_cb, k_bnd, k_scale,
                       kn_ptr, sknb, sknh, c_ptr, scb, sch, s_ptr, ssh,
                       vx_ptr, svxb, svxh, svxt, vout_ptr, svob, svoh, svot, v_signs, v_cb, v_bnd, v_scale,
                       vn_ptr, svnb, svnh, pos_ptr, H, T, inv_sqrt,
                       D: tl.constexpr, LOG2D: tl.constexpr, K_BITS: tl.constexpr, K_NORM_CORR: tl.constexpr,
                       K_UNBIASED: tl.constexpr, V_BITS: tl.constexpr, V_NORM_CORR: tl.constexpr,
                       V_UNBIASED: tl.constexpr, HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr,
                       PLANAR: tl.constexpr, CENTER: tl.constexpr, SCALE: tl.constexpr):
    """A layer's keys and values in one launch: grid axis 2 picks the operand (0: keys, with CENTER/SCALE as
    encode_mse_kernel's; 1: values), each with its own input, output, codebook and rotation signs and the same
    rows as encode_mse_kernel gives it alone. For decode steps, whose two encodes are each one latency-bound
    launch (one token per batch row and head)."""
    if tl.program_id(2) == 0:
        _lanes_rows(kx_ptr, skxb, skxh, skxt, kout_ptr, skob, skoh, skot, pos_ptr, k_signs, k_cb, k_bnd, H, T,
                    inv_sqrt, k_scale, kn_ptr, sknb, sknh, c_ptr, scb, sch, s_ptr, ssh, D, LOG2D, K_BITS,
                    K_NORM_CORR, K_UNBIASED, HAS_POS, BLOCK_R, PLANAR, CENTER, SCALE)
    else:
        _lanes_rows(vx_ptr, svxb, svxh, svxt, vout_ptr, svob, svoh, svot, pos_ptr, v_signs, v_cb, v_bnd, H, T,
                    inv_sqrt, v_scale, vn_ptr, svnb, svnh, c_ptr, scb, sch, s_ptr, ssh, D, LOG2D, V_BITS,
                    V_NORM_CORR, V_UNBIASED, HAS_POS, BLOCK_R, PLANAR, False, False)


@triton.jit
def _lanes_rows(x_ptr, sxb, sxh, sxt, out_ptr, sob, soh, sot, pos_ptr, signs_ptr, cb_ptr, bnd_ptr, H, T, inv_sqrt,
                norm_scale, norm_ptr, snb, snh, c_ptr, scb, sch, s_ptr, ssh, D: tl.constexpr, LOG2D: tl.constexpr,
                BITS: tl.constexpr, NORM_CORR: tl.constexpr, UNBIASED: tl.constexpr, HAS_POS: tl.constexpr,
                BLOCK_R: tl.constexpr, PLANAR: tl.constexpr, CENTER: tl.constexpr, SCALE: tl.constexpr):
    """encode_mse_kernel's work for this program: BLOCK_R tokens (grid axis 0) of one (batch row, head) (axis 1)."""
    t = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # (token block, batch row x head): no per-row division
    rmask = t < T
    bh = tl.program_id(1)
    b = tl.zeros([BLOCK_R], dtype=tl.int32) + bh // H
    h = bh % H
    rd = tl.arange(0, D)
    src = x_ptr + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + t.to(tl.int64) * sxt
    x = tl.load(src[:, None] + rd[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
    if CENTER:
        x = x - tl.load(c_ptr + (bh // H).to(tl.int64) * scb + h.to(tl.int64) * sch + rd)[None, :]
    if SCALE:
        x = x * tl.load(s_ptr + h.to(tl.int64) * ssh + rd)[None, :]
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
    c2sum = norm
    if NORM_CORR:
        c = tl.load(cb_ptr + idx)
        c2sum = _tree_sum(c * c, BLOCK_R, D, LOG2D)
    codes = _store_norm(norm, c2sum, norm_scale, out_ptr, sob, soh, sot, pos_ptr, norm_ptr, snb, snh, b, h, t, rmask,
                        NORM_CORR, UNBIASED, HAS_POS, PLANAR)
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


@triton.constexpr_function
def _bitrev(j, log2n):
    """j with its log2n low bits reversed: leaf j of a tree sum over 2**log2n values in bit-reversed order."""
    return int(format(j, f"0{log2n}b")[::-1], 2)


@triton.constexpr_function
def _bit(x, i):
    return (x >> i) & 1


@triton.constexpr_function
def _closes(j, level):
    """After leaf j (bit-reversed order), is a node of `level` complete (the j's low `level` bits all ones)?"""
    return (j + 1) % (1 << level) == 0


@triton.jit
def _tree_push(acc, v, j: tl.constexpr, LOG2N: tl.constexpr):
    """Add leaf j of a tree sum (quantizer.tree_sum's order: first half + second half until one is left) whose
    leaves come in bit-reversed position order, so each pair is added as soon as both halves exist and only one
    partial per level stays live. acc: one partial per level. Returns (acc, carry); after the last leaf carry
    is the sum."""
    for lvl in tl.static_range(LOG2N):
        if _closes(j, lvl):
            if _bit(j, lvl) == 1:
                v = acc[lvl] + v
            else:
                nxt = ()
                for k in tl.static_range(LOG2N):
                    if k == lvl:
                        nxt = nxt + (v,)
                    else:
                        nxt = nxt + (acc[k],)
                acc = nxt
    return acc, v


@triton.jit
def _zeros_tuple(N: tl.constexpr, R: tl.constexpr, dtype: tl.constexpr):
    out = ()
    for k in tl.static_range(N):
        out = out + (tl.zeros([R], dtype=dtype),)
    return out


@triton.jit
def _zero_tiles(N: tl.constexpr, R: tl.constexpr, C: tl.constexpr = 8):
    """N float32 [R, C] zero tiles (a tree sum's partials, one per level)."""
    out = ()
    for k in tl.static_range(N):
        out = out + (tl.zeros([R, C], dtype=tl.float32),)
    return out


@triton.jit
def _columns4(x, R: tl.constexpr):
    """x [R, 4] -> its 4 columns ([R] each) in order, by even / odd splits of the last axis only (no permute:
    triton 3.9 lowers the permuted split through shared memory, with a barrier per tile; docs/kernels.md,
    session 27)."""
    e, o = tl.split(tl.reshape(x, (R, 2, 2)))  # columns 0 2 and 1 3
    c0, c2 = tl.split(e)
    c1, c3 = tl.split(o)
    return c0, c1, c2, c3


@triton.jit
def _columns8(x, R: tl.constexpr):
    """x [R, 8] -> its 8 columns ([R] each) in order (`_columns4` of the even and of the odd columns)."""
    e, o = tl.split(tl.reshape(x, (R, 4, 2)))  # columns 0 2 4 6 and 1 3 5 7
    c0, c2, c4, c6 = _columns4(e, R)
    c1, c3, c5, c7 = _columns4(o, R)
    return c0, c1, c2, c3, c4, c5, c6, c7


# Triton's interpreter (TRITON_INTERPRET=1 at import: the CPU tests) has no inline assembly
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _gather_f32(ptrs, keep):
    """One float32 per element from ptrs (a read-only table), in the pointers' own layout, and keep (int32, the
    same shape) passed through. A `tl.load` of a gather gets a layout of its own from triton 3.9's coalesce pass
    (one element per thread across the tile), and its result came back through shared memory with a barrier per
    tile; `keep` ties the load to where its caller uses what passes through (triton 3.9's LLVM moved the loads
    after everything they do not feed, holding every tile's codes live until there; docs/kernels.md, session
    27)."""
    if _INTERPRETED:
        return tl.load(ptrs), keep
    else:
        return tl.inline_asm_elementwise("ld.global.nc.f32 $0, [$2];\n\tmov.b32 $1, $3;", "=r,=r,l,r",
                                         [ptrs, keep], dtype=(tl.float32, tl.int32), is_pure=True, pack=1)


@triton.jit
def _cat(a, b, R: tl.constexpr, M: tl.constexpr):
    """[R, M], [R, M] -> [R, 2M]: a then b."""
    return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (R, 2 * M))


@triton.jit
def _tile4(c0, c1, c2, c3, R: tl.constexpr):
    """4 columns [R] -> [R, 4], in order."""
    return _cat(tl.join(c0, c1), tl.join(c2, c3), R, 2)


@triton.jit
def _tile8(c, R: tl.constexpr, o: tl.constexpr):
    """c[o:o + 8] ([R] tensors) -> [R, 8], in order."""
    return _cat(_tile4(c[o], c[o + 1], c[o + 2], c[o + 3], R), _tile4(c[o + 4], c[o + 5], c[o + 6], c[o + 7], R),
                R, 4)


@triton.jit
def _sum8(t, R: tl.constexpr):
    """t [R, 8] -> [R]: quantizer.tree_sum's order (first half + second half) within the tile; on codes shifted
    apart, their bits side by side (adds, which the compiler fuses with the shifts, unlike ORs)."""
    c0, c1, c2, c3, c4, c5, c6, c7 = _columns8(t, R)
    return ((c0 + c4) + (c2 + c6)) + ((c1 + c5) + (c3 + c7))


@triton.jit
def _tile_rotate(tile, S: tl.constexpr, R: tl.constexpr):
    """One [R, 8] tile of x: the rotation's signs (S: 8 bits, bit i set = -1, folded into the additions) and the
    Walsh-Hadamard butterflies at distances 1, 2 and 4, on its columns; back as a tile."""
    c = _columns8(tile, R)
    z = ()
    for i in tl.static_range(8):
        if _bit(S, i) == 1:
            z = z + (-c[i],)
        else:
            z = z + (c[i],)
    for lvl in tl.static_range(3):
        nz = ()
        for i in tl.static_range(8):
            if _bit(i, lvl) == 0:
                nz = nz + (z[i] + z[i + (1 << lvl)],)
            else:
                nz = nz + (z[i - (1 << lvl)] - z[i],)
        z = nz
    return _tile8(z, R, 0)


@triton.constexpr_function
def _tile_word(k, bits):
    """The 32-bit word of a row's codes holding the first bit of tile k (codes 8k .. 8k + 7)."""
    return 8 * bits * k // 32


@triton.constexpr_function
def _tile_shift(k, bits):
    """Where in that word tile k's 8 * bits bits start."""
    return 8 * bits * k % 32


@triton.jit
def _x_tile(src, G: tl.constexpr, rmask, cbase, sbase, CENTER: tl.constexpr, SCALE: tl.constexpr):
    """Tile G of each row ([R] pointers src): values 8 G .. 8 G + 7 as float32 [R, 8] (masked rows 0), minus the
    center's (cbase: its row's float32 pointer) with CENTER, then times the key scale's (sbase) with SCALE."""
    xg = tl.load(src[:, None] + (8 * G + tl.arange(0, 8))[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
    if CENTER:
        xg = xg - tl.load(cbase + 8 * G + tl.arange(0, 8))[None, :]
    if SCALE:
        xg = xg * tl.load(sbase + 8 * G + tl.arange(0, 8))[None, :]
    return xg


@triton.jit
def _tile_stages(z, NT: tl.constexpr, LOG2T: tl.constexpr):
    """The Walsh-Hadamard stages between tiles (distances 8, 16, ...): tile g and g + 2**lvl at each level."""
    for lvl in tl.static_range(LOG2T):
        nz = ()
        for g in tl.static_range(NT):
            if _bit(g, lvl) == 0:
                nz = nz + (z[g] + z[g + (1 << lvl)],)
            else:
                nz = nz + (z[g - (1 << lvl)] - z[g],)
        z = nz
    return z


@triton.jit
def _thresholds(norm, MIDS: tl.constexpr, NB: tl.constexpr, R: tl.constexpr):
    """Each row's NB float32 thresholds ([R, 1] each) from its norm: y = RN(z / norm) > b  <=>  z > m_b * norm
    (exact in float64)  <=>  z > thr (float32): the product rounded, or the float32 below it where rounding went
    up. A zero norm makes y = 0: thresholds of -inf below the boundaries under 0, +inf from 0 up."""
    nd = norm.to(tl.float64)
    thr = ()
    for i in tl.static_range(NB):
        m = tl.full([R], MIDS[i], dtype=tl.float64)
        prod = m * nd
        hi = prod.to(tl.float32)
        hb = hi.to(tl.int32, bitcast=True)
        below = tl.where(hi > 0, hb - 1, tl.where(hi < 0, hb + 1, -2147483647)).to(tl.float32, bitcast=True)
        th = tl.where(prod < hi.to(tl.float64), below, hi)
        thr = thr + (tl.where(norm > 0, th, tl.where(m < 0, float("-inf"), float("inf")))[:, None],)
    return thr


@triton.jit
def _search(v, thr, BITS: tl.constexpr):
    """int32 codes of v ([R, C] float32): the number of thresholds thr (2**BITS - 1 ascending [R, 1]) below each
    value, by binary search (the next level's candidates picked by selects), the index bits from the sign of
    threshold - v (no predicate kept alive)."""
    cand = thr
    idx = tl.zeros(v.shape, dtype=tl.int32)
    for lvl in tl.static_range(BITS):
        tq = cand[(1 << (BITS - 1 - lvl)) - 1]
        idx = idx * 2 + ((tl.cast(tq - v, tl.int32, bitcast=True) >> 31) & 1)
        p = v > tq
        nxt = ()
        for q in tl.static_range((1 << (BITS - 1 - lvl)) - 1):
            nxt = nxt + (tl.where(p, cand[(1 << (BITS - 1 - lvl)) + q], cand[q]),)
        cand = nxt
    return idx


@triton.jit
def _place(words, u, G: tl.constexpr, NW: tl.constexpr, BITS: tl.constexpr):
    """words (NW int32 [R]) with u, tile G's 8 * BITS code bits, ORed in at the tile's place (a tile may straddle
    two words)."""
    nw = ()
    for k in tl.static_range(NW):
        wk = words[k]
        if k == _tile_word(G, BITS):
            wk = wk | (u << _tile_shift(G, BITS))
        if k == _tile_word(G, BITS) + 1:
            if _tile_shift(G, BITS) + 8 * BITS > 32:
                wk = wk | (u >> (32 - _tile_shift(G, BITS)))
        nw = nw + (wk,)
    return nw


@triton.jit
def _store_words(dst, words, N: tl.constexpr, rmask, R: tl.constexpr, LOG2H: tl.constexpr):
    """Store N int32 words [R] per row as 16-bit halves at dst ([R] int16 pointers: codes start at even
    addresses) in one [R, 2**LOG2H] tile, the padding masked off."""
    tiles = ()
    for k in tl.static_range(1 << (LOG2H - 1)):
        lo = tl.zeros([R], dtype=tl.int16)
        hi16 = tl.zeros([R], dtype=tl.int16)
        if k < N:
            lo = (words[k] & 65535).to(tl.int16)
            hi16 = (words[k] >> 16).to(tl.int16)
        tiles = tiles + (tl.join(lo, hi16),)
    for lvl in tl.static_range(1, LOG2H):
        nt = ()
        for k in tl.static_range((1 << LOG2H) >> (lvl + 1)):
            nt = nt + (_cat(tiles[2 * k], tiles[2 * k + 1], R, 1 << lvl),)
        tiles = nt
    col = tl.arange(0, 1 << LOG2H)
    tl.store(dst[:, None] + col[None, :], tiles[0], mask=rmask[:, None] & (col[None, :] < 2 * N))


@triton.jit(do_not_specialize=["H", "T", "snb", "snh"])
def encode_row_kernel(x_ptr, sxb, sxh, sxt, out_ptr, sob, soh, sot, pos_ptr, c2_ptr, H, T,
                      inv_sqrt, norm_scale, norm_ptr, snb, snh, c_ptr, scb, sch, s_ptr, ssh, D: tl.constexpr,
                      LOG2D: tl.constexpr, BITS: tl.constexpr, SIGNS: tl.constexpr, MIDS: tl.constexpr,
                      NORM_CORR: tl.constexpr, UNBIASED: tl.constexpr, HAS_POS: tl.constexpr, PLANAR: tl.constexpr,
                      BLOCK_R: tl.constexpr, LOG2H: tl.constexpr, CENTER: tl.constexpr = False,
                      SCALE: tl.constexpr = False):
    """x [B, H, T, D] (last dim contiguous) -> rows [fp16 norm][D indices of BITS bits] at out[b, h, pos[b] + t],
    one row per thread (BLOCK_R = 32 x num_warps); PLANAR: the indices at out[b, h, pos[b] + t] and the fp16
    norm at norm[b, h, pos[b] + t] (token stride 1). SIGNS: the rotation's signs as bits (bit i set: -1), so
    the sign flips fold into the first additions. MIDS: 2**BITS - 1 floats (doubles), the midpoint of each
    boundary and the next float32. c2: float32 [2**BITS], the centroids squared. LOG2H: log2 of the 16-bit halves
    per row's codes, rounded up (the store's tile width). CENTER: float32 c[b, h, :] (strides scb, sch; unit
    stride over D) subtracted from every row in float32 before anything else, as the CPU encodes x.float() - c;
    SCALE: then times float32 s[h, :] (stride ssh), as (x.float() - c) * s.

    H, T and the norm plane's strides are not specialized: a value of 1 or a multiple of 16 would compile another
    variant (~10-15 s at head_dim 128; a decode step's one token against a prompt's many) for little (sm_90, turbo4
    at head_dim 128: 5,632 instructions per row with T a multiple of 16, 5,736 without). The strides are: the
    16-byte loads and stores depend on them.

    The row is held as D/8 tiles [BLOCK_R, 8] (a thread's 8 consecutive values of its row): every step is the
    same per-value arithmetic as one tensor per value, with ~8x fewer IR operations, which is what Triton's
    compile time scales with (docs/kernels.md, session 15)."""
    NB: tl.constexpr = (1 << BITS) - 1
    NW: tl.constexpr = D * BITS // 32
    NT: tl.constexpr = D // 8
    LOG2T: tl.constexpr = LOG2D - 3
    # program (i, bh): tokens i * BLOCK_R ... of batch row b, head h (no per-row division: with T a runtime
    # value, ~20 divisions per thread, rematerialized per layout, were ~9% of the kernel's instructions)
    t = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = t < T
    bh = tl.program_id(1)
    b = tl.zeros([BLOCK_R], dtype=tl.int32) + bh // H
    h = bh % H
    src = x_ptr + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + t.to(tl.int64) * sxt
    xs = ()
    for g in tl.static_range(NT):
        xs = xs + (_x_tile(src, g, rmask, c_ptr + (bh // H).to(tl.int64) * scb + h.to(tl.int64) * sch,
                           s_ptr + h.to(tl.int64) * ssh, CENTER, SCALE),)
    # the norm: squares summed as quantizer.tree_sum does (tile k + tile k + NT/2 first, a tile's 8 last), the
    # tiles in bit-reversed order so one partial per level stays live
    acc = _zero_tiles(LOG2T, BLOCK_R)
    for j in tl.static_range(NT):
        acc, sq = _tree_push(acc, xs[_bitrev(j, LOG2T)] * xs[_bitrev(j, LOG2T)], j, LOG2T)
    norm = tl.sqrt_rn(_sum8(sq, BLOCK_R))
    # the rotation: signs and butterflies 1, 2, 4 inside each tile, then 8, 16, ... between tiles
    z = ()
    for g in tl.static_range(NT):
        z = z + (_tile_rotate(xs[g], (SIGNS >> (8 * g)) & 255, BLOCK_R),)
    z = _tile_stages(z, NT, LOG2T)
    thr = _thresholds(norm, MIDS, NB, BLOCK_R)
    # Codes, tile by tile in bit-reversed tile order (the centroids' tree sum for the norm correction then keeps
    # one partial per level): `_search`, each tile's 8 codes summed into one value and that placed in the row's
    # 32-bit words.
    words = _zeros_tuple(NW, BLOCK_R, tl.int32)
    acc = _zero_tiles(LOG2T, BLOCK_R)
    csum = tl.zeros([BLOCK_R, 8], dtype=tl.float32)
    prev = tl.zeros([BLOCK_R, 8], dtype=tl.int32)
    for j in tl.static_range(NT):
        v = z[_bitrev(j, LOG2T)] * inv_sqrt
        idx = _search(v, thr, BITS)
        if NORM_CORR:  # the centroids squared, gathered two tiles at a time: every memory op costs compile time
            if j % 2 == 1:
                pair = tl.join(prev, idx)
                c2, through = _gather_f32(c2_ptr + pair, pair)
                c2a, c2b = tl.split(c2)
                if BITS == 4:  # the codes go on through the load, so their words come after it (sm_90 stack
                    # bytes at head_dim 128, triton 3.6 / 3.9: 96 / 72 this way, 48 / 856 without; turbo3 and
                    # turbo2 spill nothing without, and turbo2 does with it on 3.6)
                    prev, idx = tl.split(through)
                acc, csum = _tree_push(acc, c2a, j - 1, LOG2T)
                acc, csum = _tree_push(acc, c2b, j, LOG2T)
            else:
                prev = idx
        u = _sum8(idx << (BITS * tl.arange(0, 8))[None, :], BLOCK_R)
        words = _place(words, u, _bitrev(j, LOG2T), NW, BITS)
    codes = _store_norm(norm, _sum8(csum, BLOCK_R), norm_scale, out_ptr, sob, soh, sot, pos_ptr, norm_ptr, snb, snh,
                        b, h, t, rmask, NORM_CORR, UNBIASED, HAS_POS, PLANAR)
    # the words as 16-bit halves in one [BLOCK_R, 2**LOG2H] tile (padding masked off)
    _store_words(codes.to(tl.pointer_type(tl.int16)), words, NW, rmask, BLOCK_R, LOG2H)


@triton.jit
def _partner(v, R2: tl.constexpr):
    """v [R2] (element 2 r + p: row r's half p) -> the other half's value of the same row: one shfl.sync.bfly by 1
    (elements are lanes in order, one per thread); in the interpreter the same exchange by a reshape."""
    if _INTERPRETED:
        a, b = tl.split(tl.reshape(v, (R2 // 2, 2)))
        return tl.reshape(tl.join(b, a), (R2,))
    else:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 1, 0x1f, -1;", "=r,r", [v], dtype=v.dtype,
                                         is_pure=True, pack=1)


@triton.jit
def _half_rotate(tile, S: tl.constexpr, sig, R2: tl.constexpr):
    """One [R2, 8] tile of x (each row twice) -> this half's 4 values [R2, 4] after the signs (S: 8 bits, bit i set
    = -1) and the butterflies at distances 1, 2 and 4: distance 1 as fma(b, sig, a) = a + b (sig 1) or a - b
    (sig -1) rounded once, of positions 2 i and 2 i + 1 with their signs (exact negations); then lane columns
    (0, 1), (2, 3) and (0, 2), (1, 3) of the half's positions 2 i + p."""
    c = _columns8(tile, R2)
    z = ()
    for i in tl.static_range(4):
        a = c[2 * i]
        if _bit(S, 2 * i) == 1:
            a = -a
        b = c[2 * i + 1]
        if _bit(S, 2 * i + 1) == 1:
            b = -b
        z = z + (tl.fma(b, sig, a),)
    s0 = z[0] + z[1]
    s1 = z[0] - z[1]
    s2 = z[2] + z[3]
    s3 = z[2] - z[3]
    return _tile4(s0 + s2, s1 + s3, s0 - s2, s1 - s3, R2)


@triton.jit(do_not_specialize=["H", "T", "snb", "snh"])
def encode_half_kernel(x_ptr, sxb, sxh, sxt, out_ptr, sob, soh, sot, pos_ptr, c2_ptr, H, T,
                       inv_sqrt, norm_scale, norm_ptr, snb, snh, c_ptr, scb, sch, s_ptr, ssh, D: tl.constexpr,
                       LOG2D: tl.constexpr, BITS: tl.constexpr, SIGNS: tl.constexpr, MIDS: tl.constexpr,
                       NORM_CORR: tl.constexpr, UNBIASED: tl.constexpr, HAS_POS: tl.constexpr, PLANAR: tl.constexpr,
                       BLOCK_R: tl.constexpr, LOG2H: tl.constexpr, CENTER: tl.constexpr = False,
                       SCALE: tl.constexpr = False):
    """encode_row_kernel's rows (same arguments, same bytes) with each row split over two threads (threads 2 r and
    2 r + 1 of the program: BLOCK_R rows, num_warps = BLOCK_R / 16): half p holds the
    rotated values of positions 2 j + p, so half the registers and code per thread (head_dim 64 / 128).

    Both halves load the whole row and compute its norm and thresholds (the same float32 order as the row kernel);
    the first butterfly stage (distance 1) makes each half's positions from the row's pairs (2 j, 2 j + 1) with one
    fused multiply-add by +1 / -1 (exact: a + b or a - b rounded once), after which every stage pairs positions of
    one parity (in-thread); the centroids' tree sum (norm correction) ends with its even + odd partials, one
    exchange; each half packs its codes at their places in the row's words (the other half's bits left zero), and
    the halves exchange the words they do not store: half p stores words p NW / 2 .. (p + 1) NW / 2 - 1. LOG2H:
    log2 of the 16-bit halves of those words, rounded up."""
    NB: tl.constexpr = (1 << BITS) - 1
    NW: tl.constexpr = D * BITS // 32
    HW: tl.constexpr = NW // 2
    NT: tl.constexpr = D // 8
    LOG2T: tl.constexpr = LOG2D - 3
    R2: tl.constexpr = 2 * BLOCK_R
    e = tl.arange(0, R2)
    p = e % 2
    t = tl.program_id(0) * BLOCK_R + e // 2
    rmask = t < T
    bh = tl.program_id(1)
    b = tl.zeros([R2], dtype=tl.int32) + bh // H
    h = bh % H
    src = x_ptr + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + t.to(tl.int64) * sxt
    sig = (1 - 2 * p).to(tl.float32)  # the first stage's sign of b: a + b in half 0, a - b in half 1
    # tiles in bit-reversed order (`_bitrev` inline: assigned to a name, the interpreter makes it a tensor that
    # cannot index a tuple): each loaded, its squares pushed into the norm's tree, its first stage made
    acc = _zero_tiles(LOG2T, R2)
    zr = ()
    for j in tl.static_range(NT):
        xg = _x_tile(src, _bitrev(j, LOG2T), rmask, c_ptr + (bh // H).to(tl.int64) * scb + h.to(tl.int64) * sch,
                     s_ptr + h.to(tl.int64) * ssh, CENTER, SCALE)
        acc, sq = _tree_push(acc, xg * xg, j, LOG2T)
        zr = zr + (_half_rotate(xg, (SIGNS >> (8 * _bitrev(j, LOG2T))) & 255, sig, R2),)
    norm = tl.sqrt_rn(_sum8(sq, R2))
    # back to tile order, then stages 8, 16, ... between tiles
    z = ()
    for g in tl.static_range(NT):
        z = z + (zr[_bitrev(g, LOG2T)],)
    z = _tile_stages(z, NT, LOG2T)
    thr = _thresholds(norm, MIDS, NB, R2)
    words = _zeros_tuple(NW, R2, tl.int32)
    acc = _zero_tiles(LOG2T, R2, 4)
    csum = tl.zeros([R2, 4], dtype=tl.float32)
    for j in tl.static_range(NT):
        v = z[_bitrev(j, LOG2T)] * inv_sqrt
        idx = _search(v, thr, BITS)
        if NORM_CORR:
            c2, idx = _gather_f32(c2_ptr + idx, idx)
            acc, csum = _tree_push(acc, c2, j, LOG2T)
        # this half's codes of the tile at their places among its 8 (positions 2 i + p)
        i0, i1, i2, i3 = _columns4(idx, R2)
        u = (i0 + (i1 << (2 * BITS)) + (i2 << (4 * BITS)) + (i3 << (6 * BITS))) << (BITS * p)
        words = _place(words, u, _bitrev(j, LOG2T), NW, BITS)
    # the centroids' tree sum: this half's columns (even or odd positions of each tile), then even + odd (the sum
    # commutes exactly, so `half + other` would do; written per half, the sm_90 build timed in session 35 kept
    # turbo2 at 154 registers, 159 the other way)
    q0, q1, q2, q3 = _columns4(csum, R2)
    half = (q0 + q2) + (q1 + q3)
    other = _partner(half, R2)
    c2sum = tl.where(p == 0, half + other, other + half)
    codes = _store_norm(norm, c2sum, norm_scale, out_ptr, sob, soh, sot, pos_ptr, norm_ptr, snb, snh,
                        b, h, t, rmask, NORM_CORR, UNBIASED, HAS_POS, PLANAR)
    # half p keeps words p HW .. and sends the others' to its partner
    mine = ()
    for k in tl.static_range(HW):
        send = tl.where(p == 0, words[k + HW], words[k])
        keep = tl.where(p == 0, words[k], words[k + HW])
        mine = mine + (keep | _partner(send, R2),)
    _store_words(codes.to(tl.pointer_type(tl.int16)) + p * (2 * HW), mine, HW, rmask, R2, LOG2H)
