"""Compute-lean decode attention over turboB rows (issue 7): codes decoded in registers with PTX byte permutes.

Same contract as `decode_split_kernel` (kernels_decode.py), for K and V rows of the MSE family (turbo2/3/4). What
changes is how a tile of packed rows becomes tensor-core operands:

- No centroid gathers. The codes of a tile are loaded as bytes and turned into fp16 centroids by one inline-PTX
  block per four bytes (`tl.inline_asm_elementwise`, pack=4): `prmt.b32` looks bytes up in 8-byte tables held in
  registers (low and high bytes of the fp16 centroids), a second `prmt` interleaves them into half2 registers.
  turbo4 (16 centroids) uses the codebook's symmetry c[15-i] = -c[i]: an 8-entry magnitude table, the index
  flipped for negative codes, and the sign set from the code's top bit. turbo3 and turbo2 look the centroid up
  directly (8 and 4 entries). About 2.3, 2.4 and 1.4 instructions per value (turbo4/3/2).
- No reshape/join of unpacked indices. Each asm element is self-contained (a code byte; a 3-byte group for
  turbo3), and its codes become P separate "part" tensors [BLOCK_N, D/P] (P = 2, 8, 4 for 4, 3, 2 bits): part p
  of element e is dimension P*e + p. The dot over head_dim is split into P dots over those dims (the query parts
  are loaded with the same mapping), and V is accumulated in P part accumulators stored back to dims P*e + p.
- Norms stay a per-token scale on the scores (K) and on the probabilities (V), as in the split kernel.

The asm strings (tables baked in as immediates) come from `decode_asm` in fastdecode.py; they are constexpr
arguments, so each codebook gets its own compiled kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl



@triton.jit
def _tile_rows(tab_ptr, t0, last, b, h, rn, CHUNK, RB: tl.constexpr):
    """uint8 pointers [BLOCK_N] to rows min(t0 + rn, last) of (b, h). The tile starting at t0 lies inside one chunk
    (see `_row_ptrs` in kernels_decode.py); rows past the end repeat the last row, so every load is in bounds and
    unmasked (their scores are masked and their probabilities are 0, and any stored row decodes to finite
    values)."""
    c = tl.minimum(t0, last) // CHUNK
    base = tl.load(tab_ptr + 3 * c).to(tl.pointer_type(tl.uint8))
    sb = tl.load(tab_ptr + 3 * c + 1)
    sh = tl.load(tab_ptr + 3 * c + 2)
    r = tl.minimum(t0 + rn, last) - c * CHUNK
    return (base + (b * sb + h * sh)) + r * RB


@triton.jit
def _load_codes(rows, ELEM: tl.constexpr, D: tl.constexpr, NB: tl.constexpr):
    """Norms fp16 [N] and the asm elements of BLOCK_N rows (b1, b2 repeat b0 except for 3-byte groups)."""
    norms = tl.load(rows.to(tl.pointer_type(tl.float16)))
    if ELEM == 0:  # bytes of 2 (4 bits) or 4 (2 bits) codes; pairs of bytes are 2-aligned
        p = rows[:, None] + 2 + tl.arange(0, NB)[None, :]
        p = tl.max_contiguous(tl.multiple_of(p, [1, 2]), [1, 2])
        b0 = tl.load(p)
        b1 = b0
        b2 = b0
    else:  # 3-byte groups of 8 three-bit codes
        g = rows[:, None] + 2 + 3 * tl.arange(0, D // 8)[None, :]
        b0 = tl.load(g)
        b1 = tl.load(g + 1)
        b2 = tl.load(g + 2)
    return norms, b0, b1, b2


@triton.jit
def _unpack(b0, b1, b2, ELEM: tl.constexpr, P: tl.constexpr, ASM: tl.constexpr):
    """Eight part tensors fp16 [N, D/P] (parts >= P repeat part 0; unused ones are dead code)."""
    if P == 2:
        x0, x1 = tl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,r", [b0], dtype=(tl.float16,) * 2, is_pure=True,
                                           pack=4)
        return x0, x1, x0, x0, x0, x0, x0, x0
    elif ELEM == 0:
        x0, x1, x2, x3 = tl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r", [b0],
                                                   dtype=(tl.float16,) * 4, is_pure=True, pack=4)
        return x0, x1, x2, x3, x0, x0, x0, x0
    else:
        return tl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,r,r,r",
                                         [b0, b1, b2], dtype=(tl.float16,) * 8, is_pure=True, pack=4)


@triton.jit
def _q_part(q_ptr, qrow, mrow, p: tl.constexpr, P: tl.constexpr, D: tl.constexpr):
    """Query columns P*e + p (e < D/P) as fp16 [BLOCK_M, D/P]."""
    e = tl.arange(0, D // P)
    return tl.load(q_ptr + qrow[:, None] * D + (P * e + p)[None, :], mask=mrow[:, None], other=0.0).to(tl.float16)


@triton.jit
def _store_part(o_ptr, orow, acc, p: tl.constexpr, P: tl.constexpr, D: tl.constexpr):
    e = tl.arange(0, D // P)
    tl.store(o_ptr + orow[:, None] * D + (P * e + p)[None, :], acc)


@triton.jit
def decode_fast_kernel(q_ptr, k_tab, v_tab, len_ptr, rowb_ptr, bias_ptr, bias_sb, bias_sq,
                       o_ptr, ml_ptr, H, G, TQ, TQB, CHUNK, qshift, num_splits,
                       K_BITS: tl.constexpr, V_BITS: tl.constexpr, K_ELEM: tl.constexpr, V_ELEM: tl.constexpr,
                       PK: tl.constexpr, PV: tl.constexpr,
                       K_ASM: tl.constexpr, V_ASM: tl.constexpr,
                       D: tl.constexpr, RBK: tl.constexpr, RBV: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ROWB: tl.constexpr,
                       PREFETCH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One split of one (b, kv head, block of TQB query tokens). Arguments as in `decode_split_kernel`; K_ELEM /
    V_ELEM, PK / PV: element kind and parts (fastasm.elem_kind, fastasm.parts); K_ASM / V_ASM: the decoders."""
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
    M = G * TQ
    qrow = bh * M + grow
    q0 = _q_part(q_ptr, qrow, mrow, 0, PK, D)
    q1 = _q_part(q_ptr, qrow, mrow, 1, PK, D)
    if PK > 2:
        q2 = _q_part(q_ptr, qrow, mrow, 2, PK, D)
        q3 = _q_part(q_ptr, qrow, mrow, 3, PK, D)
    if PK > 4:
        q4 = _q_part(q_ptr, qrow, mrow, 4, PK, D)
        q5 = _q_part(q_ptr, qrow, mrow, 5, PK, D)
        q6 = _q_part(q_ptr, qrow, mrow, 6, PK, D)
        q7 = _q_part(q_ptr, qrow, mrow, 7, PK, D)
    WV: tl.constexpr = D // PV
    a0 = tl.zeros([BLOCK_M, WV], tl.float32)
    a1 = tl.zeros([BLOCK_M, WV], tl.float32)
    if PV > 2:
        a2 = tl.zeros([BLOCK_M, WV], tl.float32)
        a3 = tl.zeros([BLOCK_M, WV], tl.float32)
    if PV > 4:
        a4 = tl.zeros([BLOCK_M, WV], tl.float32)
        a5 = tl.zeros([BLOCK_M, WV], tl.float32)
        a6 = tl.zeros([BLOCK_M, WV], tl.float32)
        a7 = tl.zeros([BLOCK_M, WV], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    if HAS_ROWB:
        rowb = tl.load(rowb_ptr + qrow, mask=mrow, other=0.0)
    lim = L - TQ + qshift + t
    if CAUSAL:
        hi = tl.minimum(hi, L - TQ + qshift + tl.minimum(qb * TQB + TQB, TQ))
    rn = tl.arange(0, BLOCK_N)
    last = tl.maximum(L - 1, 0)
    NBK: tl.constexpr = D * K_BITS // 8
    NBV: tl.constexpr = D * V_BITS // 8
    kn, kb0, kb1, kb2 = _load_codes(_tile_rows(k_tab, lo, last, b, h, rn, CHUNK, RBK), K_ELEM, D, NBK)
    vn, vb0, vb1, vb2 = _load_codes(_tile_rows(v_tab, lo, last, b, h, rn, CHUNK, RBV), V_ELEM, D, NBV)
    for t0 in range(lo, hi, BLOCK_N):
        offs = t0 + rn
        valid = offs < hi
        nxt = t0 + BLOCK_N
        if PREFETCH:
            kn_n, kb0_n, kb1_n, kb2_n = _load_codes(_tile_rows(k_tab, nxt, last, b, h, rn, CHUNK, RBK), K_ELEM, D, NBK)
            vn_n, vb0_n, vb1_n, vb2_n = _load_codes(_tile_rows(v_tab, nxt, last, b, h, rn, CHUNK, RBV), V_ELEM, D, NBV)
        k0, k1, k2, k3, k4, k5, k6, k7 = _unpack(kb0, kb1, kb2, K_ELEM, PK, K_ASM)
        s = tl.dot(q0, tl.trans(k0))
        s = tl.dot(q1, tl.trans(k1), s)
        if PK > 2:
            s = tl.dot(q2, tl.trans(k2), s)
            s = tl.dot(q3, tl.trans(k3), s)
        if PK > 4:
            s = tl.dot(q4, tl.trans(k4), s)
            s = tl.dot(q5, tl.trans(k5), s)
            s = tl.dot(q6, tl.trans(k6), s)
            s = tl.dot(q7, tl.trans(k7), s)
        s = s * kn.to(tl.float32)[None, :]
        if HAS_ROWB:
            s = s + rowb[:, None]
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
        pv = (p * vn.to(tl.float32)[None, :]).to(tl.float16)
        v0, v1, v2, v3, v4, v5, v6, v7 = _unpack(vb0, vb1, vb2, V_ELEM, PV, V_ASM)
        a0 = tl.dot(pv, v0, a0 * alpha[:, None])
        a1 = tl.dot(pv, v1, a1 * alpha[:, None])
        if PV > 2:
            a2 = tl.dot(pv, v2, a2 * alpha[:, None])
            a3 = tl.dot(pv, v3, a3 * alpha[:, None])
        if PV > 4:
            a4 = tl.dot(pv, v4, a4 * alpha[:, None])
            a5 = tl.dot(pv, v5, a5 * alpha[:, None])
            a6 = tl.dot(pv, v6, a6 * alpha[:, None])
            a7 = tl.dot(pv, v7, a7 * alpha[:, None])
        m_i = m_new
        if PREFETCH:
            kn, kb0, kb1, kb2 = kn_n, kb0_n, kb1_n, kb2_n
            vn, vb0, vb1, vb2 = vn_n, vb0_n, vb1_n, vb2_n
        else:
            kn, kb0, kb1, kb2 = _load_codes(_tile_rows(k_tab, nxt, last, b, h, rn, CHUNK, RBK), K_ELEM, D, NBK)
            vn, vb0, vb1, vb2 = _load_codes(_tile_rows(v_tab, nxt, last, b, h, rn, CHUNK, RBV), V_ELEM, D, NBV)
    base = (bh * tl.num_programs(2) + qb) * num_splits + sid
    orow = base * BLOCK_M + rm
    _store_part(o_ptr, orow, a0, 0, PV, D)
    _store_part(o_ptr, orow, a1, 1, PV, D)
    if PV > 2:
        _store_part(o_ptr, orow, a2, 2, PV, D)
        _store_part(o_ptr, orow, a3, 3, PV, D)
    if PV > 4:
        _store_part(o_ptr, orow, a4, 4, PV, D)
        _store_part(o_ptr, orow, a5, 5, PV, D)
        _store_part(o_ptr, orow, a6, 6, PV, D)
        _store_part(o_ptr, orow, a7, 7, PV, D)
    tl.store(ml_ptr + base * 2 * BLOCK_M + rm, m_i)
    tl.store(ml_ptr + base * 2 * BLOCK_M + BLOCK_M + rm, l_i)
