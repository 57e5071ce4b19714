"""Triton kernels for split-K (flash-decoding) attention over packed KV rows. Launchers live in decode.py.

A program owns one (batch row, KV head) and one split of its compressed tokens. It scores the rotated query rows
of the whole GQA group (G * Tq rows, padded to BLOCK_M) against BLOCK_N decoded rows at a time with tl.dot,
runs the online softmax in float32 (base 2), and accumulates values in the V segment's rotated space. Rows are
found through a chunk table (base address, batch stride, head stride per chunk of CHUNK tokens), so the chunked
TurboQuantLayer and the preallocated static storage share one kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

FAMILY_F16, FAMILY_Q8_0, FAMILY_MSE, FAMILY_FRAC = 0, 1, 2, 3


@triton.jit
def _row_ptrs(tab_ptr, t0, last, b, h, offs, CHUNK, RB: tl.constexpr):
    """uint8 pointers [BLOCK_N] to tokens t0 + offs of (b, h); the tile starting at t0 lies inside one chunk.

    `last` (< number of stored tokens) bounds the chunk looked up, so a tile past the end reads no table entry.
    """
    c = tl.minimum(t0, last) // CHUNK
    base = tl.load(tab_ptr + 3 * c).to(tl.pointer_type(tl.uint8))
    sb = tl.load(tab_ptr + 3 * c + 1)
    sh = tl.load(tab_ptr + 3 * c + 2)
    return base + (b * sb + h * sh) + (t0 - c * CHUNK + offs).to(tl.int64) * RB


@triton.jit
def _load_tile(rows, valid, FAMILY: tl.constexpr, BITS: tl.constexpr, D: tl.constexpr, BCAST: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Raw bytes of BLOCK_N rows, as (scales, words); `_decode_tile` turns them into values.

    f16: (unused, fp16 [N, D]). q8_0: (fp16 block scales [N, D/32], int8 [N, D/32, 32]). MSE: (fp16 norms [N],
    int32 words [N, W]: 16-bit words for 2/4 bits, 24-bit groups of 8 indices for 3 bits). BCAST (2/4 bits):
    words [N, D], each channel's own 16-bit word (loads repeat, the 3-D reshape and its layout change go away).
    """
    if FAMILY == 0:
        p = rows.to(tl.pointer_type(tl.float16))
        words = tl.load(p[:, None] + tl.arange(0, D)[None, :], mask=valid[:, None], other=0.0)
        scales = tl.zeros([BLOCK_N], tl.float16)
    elif FAMILY == 1:
        blk = tl.arange(0, D // 32) * 34
        scales = tl.load((rows[:, None] + blk[None, :]).to(tl.pointer_type(tl.float16)), mask=valid[:, None],
                         other=0.0)
        qp = rows[:, None, None] + blk[None, :, None] + 2 + tl.arange(0, 32)[None, None, :]
        words = tl.load(qp.to(tl.pointer_type(tl.int8)), mask=valid[:, None, None], other=0)
    elif FAMILY == 2:
        scales = tl.load(rows.to(tl.pointer_type(tl.float16)), mask=valid, other=0.0)
        if BCAST and BITS != 3:
            hp = (rows + 2).to(tl.pointer_type(tl.uint16))[:, None] + (tl.arange(0, D) * BITS // 16)[None, :]
            words = tl.load(hp, mask=valid[:, None], other=0).to(tl.int32)
        else:
            words = _code_words(rows + 2, valid, BITS, D)
    else:  # fractional kinds are loaded and decoded together in the loop (`_frac_tile`): placeholders here
        scales = tl.zeros([BLOCK_N], tl.float16)
        words = tl.zeros([BLOCK_N, 1], tl.int32)
    return scales, words


@triton.jit
def _code_words(codes, valid, BITS: tl.constexpr, D: tl.constexpr):
    """int32 words [N, W] of D packed indices per row at byte pointers `codes` [N]: 16-bit words for 2/4 bits,
    24-bit groups of 8 indices for 3 bits."""
    if BITS == 3:
        g = codes[:, None] + 3 * tl.arange(0, D // 8)[None, :]
        words = tl.load(g, mask=valid[:, None], other=0).to(tl.int32)
        words = words | (tl.load(g + 1, mask=valid[:, None], other=0).to(tl.int32) << 8)
        words = words | (tl.load(g + 2, mask=valid[:, None], other=0).to(tl.int32) << 16)
    else:
        hp = codes.to(tl.pointer_type(tl.uint16))[:, None] + tl.arange(0, D * BITS // 16)[None, :]
        words = tl.load(hp, mask=valid[:, None], other=0).to(tl.int32)
    return words


@triton.jit
def _code_vals(words, cb_ptr, BITS: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr):
    """fp16 centroids [N, D] of `_code_words` output (cb_ptr: the 2**BITS fp16 centroids)."""
    WBITS: tl.constexpr = 24 if BITS == 3 else 16
    NI: tl.constexpr = WBITS // BITS
    idx = (words[:, :, None] >> (tl.arange(0, NI) * BITS)[None, None, :]) & ((1 << BITS) - 1)
    return tl.reshape(tl.load(cb_ptr + idx), (BLOCK_N, D))


@triton.jit
def _frac_tile(rows, valid, cb_ptr, BITS: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr):
    """(vals fp16 [N, D], ones [N]) of turboB.5 rows ([fp16 norm_hi][fp16 norm_lo][D/2 indices of B+1 bits]
    [D/2 indices of B bits]): each half's centroids times its norm, interleaved (dim 2j = high-bit group's j,
    2j + 1 = low group's j), the order `decode.codec_maps` builds the fractional maps in. cb_ptr: the 2**(B+1)
    high-group centroids, then the 2**B low-group ones (fp16)."""
    HB: tl.constexpr = BITS + 1
    HN: tl.constexpr = (D // 2) * HB // 8
    nh = tl.load(rows.to(tl.pointer_type(tl.float16)), mask=valid, other=0.0).to(tl.float32)
    nl = tl.load((rows + 2).to(tl.pointer_type(tl.float16)), mask=valid, other=0.0).to(tl.float32)
    vh = _code_vals(_code_words(rows + 4, valid, HB, D // 2), cb_ptr, HB, D // 2, BLOCK_N)
    vl = _code_vals(_code_words(rows + 4 + HN, valid, BITS, D // 2), cb_ptr + (1 << HB), BITS, D // 2, BLOCK_N)
    vals = tl.reshape(tl.join(vh.to(tl.float32) * nh[:, None], vl.to(tl.float32) * nl[:, None]), (BLOCK_N, D))
    return vals.to(tl.float16), tl.full([BLOCK_N], 1.0, tl.float32)


@triton.jit
def _decode_tile(scales, words, cb_ptr, FAMILY: tl.constexpr, BITS: tl.constexpr, D: tl.constexpr,
                 LUT: tl.constexpr, BCAST: tl.constexpr, BLOCK_N: tl.constexpr):
    """(vals float16 [BLOCK_N, D] in the segment space, row scale float32 [BLOCK_N]) from `_load_tile` output.

    MSE: without LUT, cb_ptr holds the 2**BITS fp16 centroids (32 bytes at most: one L1 wavefront per gather);
    with LUT, 2**(2*BITS) int32 entries, two fp16 centroids for a pair of neighbouring indices.
    """
    if FAMILY == 0:
        vals = words
        scale = tl.full([BLOCK_N], 1.0, tl.float32)
    elif FAMILY == 1:
        vals = tl.reshape(words.to(tl.float32) * scales.to(tl.float32)[:, :, None], (BLOCK_N, D)).to(tl.float16)
        scale = tl.full([BLOCK_N], 1.0, tl.float32)
    else:
        scale = scales.to(tl.float32)
        WBITS: tl.constexpr = 24 if BITS == 3 else 16
        if BCAST and BITS != 3:
            idx = (words >> ((tl.arange(0, D) * BITS) % 16)[None, :]) & ((1 << BITS) - 1)
            vals = tl.load(cb_ptr + idx)
        elif LUT:
            PB: tl.constexpr = 2 * BITS
            NP: tl.constexpr = WBITS // PB
            pair = (words[:, :, None] >> (tl.arange(0, NP) * PB)[None, None, :]) & ((1 << PB) - 1)
            two = tl.load(cb_ptr + pair)
            lo = two.to(tl.int16).to(tl.float16, bitcast=True)
            hi = (two >> 16).to(tl.int16).to(tl.float16, bitcast=True)
            vals = tl.reshape(tl.join(lo, hi), (BLOCK_N, D))
        else:
            vals = _code_vals(words, cb_ptr, BITS, D, BLOCK_N)
    return vals, scale


@triton.jit
def _program_rows(len_ptr, H, G, TQ, TQB, num_splits, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Where a split-K decode program works: (split id, b*H + h, query block, b, h, length L of batch row b,
    token range [lo, hi) of this split, local rows rm, token t of each, row mask, row within the G*TQ group rows,
    G*TQ).
    Local row r is group member r // TQB, token qb*TQB + r % TQB. Shared by the split and the fast kernels."""
    sid = tl.program_id(0)
    bh = tl.program_id(1)
    qb = tl.program_id(2)
    b = bh // H
    h = bh % H
    L = tl.load(len_ptr + b)
    split = tl.cdiv(tl.cdiv(L, num_splits), BLOCK_N) * BLOCK_N
    lo = sid * split
    hi = tl.minimum(lo + split, L)
    rm = tl.arange(0, BLOCK_M)
    t = qb * TQB + rm % TQB
    mrow = (rm // TQB < G) & (rm % TQB < TQB) & (t < TQ)
    grow = (rm // TQB) * TQ + t
    return sid, bh, qb, b, h, L, lo, hi, rm, t, mrow, grow, G * TQ


@triton.jit(do_not_specialize=["qshift"])  # the fp16 window length: changes every decode step
def decode_split_kernel(q_ptr, k_tab, v_tab, k_cb, v_cb, len_ptr, bias_ptr, bias_sb, bias_sq,
                        o_ptr, ml_ptr, H, G, TQ, TQB, CHUNK, qshift, num_splits,
                        K_FAMILY: tl.constexpr, K_BITS: tl.constexpr, V_FAMILY: tl.constexpr,
                        V_BITS: tl.constexpr, D: tl.constexpr, RBK: tl.constexpr, RBV: tl.constexpr,
                        LUT: tl.constexpr, CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                        PREFETCH: tl.constexpr, BCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One split of one (b, kv head, block of TQB query tokens): partial acc, running max and sum per row.

    q_ptr: fp32 [B*H, G*TQ, D], row g*TQ + t (rotated, times softmax scale * log2 e). len_ptr: int32 [B] tokens
    per batch row. bias_ptr: fp32 [B, TQ, >= L],
    additive, log2 units. CAUSAL: key j is visible to query token t iff j <= L - TQ + qshift + t.
    Local row r of this program is group member r // TQB, token qb*TQB + r % TQB.
    o_ptr: fp32 [B*H, NQB, S, BLOCK_M, D]; ml_ptr: fp32 [B*H, NQB, S, 2, BLOCK_M]. PREFETCH loads tile i+1 before
    the math of tile i (the loop is latency-bound otherwise).
    """
    sid, bh, qb, b, h, L, lo, hi, rm, t, mrow, grow, M = _program_rows(len_ptr, H, G, TQ, TQB, num_splits,
                                                                        BLOCK_M, BLOCK_N)
    rd = tl.arange(0, D)
    q = tl.load(q_ptr + (bh * M + grow[:, None]) * D + rd[None, :], mask=mrow[:, None], other=0.0).to(tl.float16)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    lim = L - TQ + qshift + t
    if CAUSAL:
        hi = tl.minimum(hi, L - TQ + qshift + tl.minimum(qb * TQB + TQB, TQ))
    rn = tl.arange(0, BLOCK_N)
    last = tl.maximum(L - 1, 0)
    ks_raw, kw_raw = _load_tile(_row_ptrs(k_tab, lo, last, b, h, rn, CHUNK, RBK), lo + rn < hi, K_FAMILY, K_BITS,
                                D, BCAST, BLOCK_N)
    vs_raw, vw_raw = _load_tile(_row_ptrs(v_tab, lo, last, b, h, rn, CHUNK, RBV), lo + rn < hi, V_FAMILY, V_BITS,
                                D, BCAST, BLOCK_N)
    for t0 in range(lo, hi, BLOCK_N):
        offs = t0 + rn
        valid = offs < hi
        nxt = t0 + BLOCK_N
        if PREFETCH:  # issue the next tile's loads before this tile's math
            vnext = nxt + rn < hi
            ks_nxt, kw_nxt = _load_tile(_row_ptrs(k_tab, nxt, last, b, h, rn, CHUNK, RBK), vnext, K_FAMILY, K_BITS,
                                        D, BCAST, BLOCK_N)
            vs_nxt, vw_nxt = _load_tile(_row_ptrs(v_tab, nxt, last, b, h, rn, CHUNK, RBV), vnext, V_FAMILY, V_BITS,
                                        D, BCAST, BLOCK_N)
        if K_FAMILY == 3:
            kv, ks = _frac_tile(_row_ptrs(k_tab, t0, last, b, h, rn, CHUNK, RBK), valid, k_cb, K_BITS, D, BLOCK_N)
        else:
            kv, ks = _decode_tile(ks_raw, kw_raw, k_cb, K_FAMILY, K_BITS, D, LUT, BCAST, BLOCK_N)
        s = tl.dot(q, tl.trans(kv)) * ks[None, :]
        if HAS_BIAS:
            bp = bias_ptr + b * bias_sb + t[:, None] * bias_sq + offs[None, :]
            s = s + tl.load(bp, mask=mrow[:, None] & valid[None, :], other=0.0)
        keep = valid[None, :]
        if CAUSAL:
            keep = keep & (offs[None, :] <= lim[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if V_FAMILY == 3:
            vv, vs = _frac_tile(_row_ptrs(v_tab, t0, last, b, h, rn, CHUNK, RBV), valid, v_cb, V_BITS, D, BLOCK_N)
        else:
            vv, vs = _decode_tile(vs_raw, vw_raw, v_cb, V_FAMILY, V_BITS, D, LUT, BCAST, BLOCK_N)
        acc = acc * alpha[:, None] + tl.dot((p * vs[None, :]).to(tl.float16), vv)
        m_i = m_new
        if PREFETCH:
            ks_raw, kw_raw, vs_raw, vw_raw = ks_nxt, kw_nxt, vs_nxt, vw_nxt
        else:
            vnext = nxt + rn < hi
            ks_raw, kw_raw = _load_tile(_row_ptrs(k_tab, nxt, last, b, h, rn, CHUNK, RBK), vnext, K_FAMILY, K_BITS,
                                        D, BCAST, BLOCK_N)
            vs_raw, vw_raw = _load_tile(_row_ptrs(v_tab, nxt, last, b, h, rn, CHUNK, RBV), vnext, V_FAMILY, V_BITS,
                                        D, BCAST, BLOCK_N)
    base = (bh * tl.num_programs(2) + qb) * num_splits + sid
    tl.store(o_ptr + (base * BLOCK_M + rm[:, None]) * D + rd[None, :], acc)
    tl.store(ml_ptr + base * 2 * BLOCK_M + rm, m_i)
    tl.store(ml_ptr + base * 2 * BLOCK_M + BLOCK_M + rm, l_i)


@triton.jit
def decode_reduce_kernel(o_ptr, ml_ptr, out_ptr, lse_ptr, G, TQ, TQB, num_splits, D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
    """Merge the splits of one local row into out fp32 [B*H, G*TQ, D] (normalised) and lse fp32 [B*H, G*TQ]."""
    pid = tl.program_id(0)  # (bh * NQB + qb) * BLOCK_M + r
    r = pid % BLOCK_M
    grp = pid // BLOCK_M
    nqb = tl.cdiv(TQ, TQB)
    bh = grp // nqb
    t = (grp % nqb) * TQB + r % TQB
    if (r // TQB < G) & (r % TQB < TQB) & (t < TQ):
        rs = tl.arange(0, BLOCK_S)
        rd = tl.arange(0, D)
        smask = rs < num_splits
        base = grp * num_splits + rs
        m = tl.load(ml_ptr + base * 2 * BLOCK_M + r, mask=smask, other=float("-inf"))
        l = tl.load(ml_ptr + base * 2 * BLOCK_M + BLOCK_M + r, mask=smask, other=0.0)
        mx = tl.max(m, axis=0)
        mx = tl.where(mx == float("-inf"), 0.0, mx)
        w = tl.exp2(m - mx)
        total = tl.sum(l * w, axis=0)
        o = tl.load(o_ptr + (base[:, None] * BLOCK_M + r) * D + rd[None, :], mask=smask[:, None], other=0.0)
        acc = tl.sum(o * w[:, None], axis=0)
        safe = tl.where(total > 0, total, 1.0)
        row = bh * G * TQ + (r // TQB) * TQ + t
        tl.store(out_ptr + row * D + rd, acc / safe)
        lse = tl.where(total > 0, (mx + tl.log2(safe)) * 0.6931471805599453, float("-inf"))
        tl.store(lse_ptr + row, lse)


@triton.jit
def dequant_kernel(tab, cb_ptr, out_ptr, H, T, CHUNK, FAMILY: tl.constexpr, BITS: tl.constexpr, D: tl.constexpr,
                   RB: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows of T tokens -> fp16 [B*H, T, D] in the segment space (scale folded in), for prefill through SDPA."""
    t0 = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    rn = tl.arange(0, BLOCK_N)
    valid = t0 + rn < T
    rows = _row_ptrs(tab, t0, T - 1, bh // H, bh % H, rn, CHUNK, RB)
    if FAMILY == 3:
        vals, scale = _frac_tile(rows, valid, cb_ptr, BITS, D, BLOCK_N)
    else:
        scales, words = _load_tile(rows, valid, FAMILY, BITS, D, False, BLOCK_N)
        vals, scale = _decode_tile(scales, words, cb_ptr, FAMILY, BITS, D, False, False, BLOCK_N)
    out = (vals.to(tl.float32) * scale[:, None]).to(tl.float16)
    dst = out_ptr + (bh.to(tl.int64) * T + t0 + rn[:, None]) * D + tl.arange(0, D)[None, :]
    tl.store(dst, out, mask=valid[:, None])
