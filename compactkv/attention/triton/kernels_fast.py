"""Compute-lean decode attention over turboB rows (issue 7): codes decoded in registers with PTX byte permutes.

Same contract as `decode_split_kernel` (kernels_decode.py), for K and V rows of the MSE family (turbo2/3/4). What
changes is how a tile of packed rows becomes tensor-core operands:

- No centroid gathers. The codes of a tile are loaded as bytes and turned into fp16 centroids by one inline-PTX
  block per four bytes (`tl.inline_asm_elementwise`, pack=4): `prmt.b32` looks bytes up in 8-byte tables held in
  registers (low and high bytes of the fp16 centroids), a second `prmt` interleaves them into half2 registers.
  turbo4 (16 centroids) uses the codebook's symmetry c[15-i] = -c[i]: an 8-entry magnitude table, the index
  flipped for negative codes, and the sign set from the code's top bit; turbo2 looks the centroid up directly.
  About 2.4 (turbo4) and 1.5 (turbo2) instructions per value.
- No reshape/join of unpacked indices. Each asm element is one code byte, and its codes become P separate "part"
  tensors [BLOCK_N, D/P] (P = 2 for 4 bits, 4 for 2 bits): part p of byte e is dimension P*e + p. The dot over
  head_dim is split into P dots over those dims (the query parts are loaded with the same mapping), and V is
  accumulated in P part accumulators stored back to dims P*e + p.
- Full tiles are loaded without masks at affine addresses, so every load of a tile shares one 64-bit base
  register with immediate offsets; only the last partial tile of a split takes masked loads.
- Norms stay a per-token scale on the scores (K) and on the probabilities (V), as in the split kernel.

turbo3 (3-byte groups of 8 codes) is not handled: decoded through three strided byte loads it came out slower
than the split kernel (the parts end up one value per thread and row, and the shared-memory stores before the
tensor cores go 2 bytes at a time), so turbo3 stays on `decode_split_kernel`.

The asm strings (tables baked in as immediates) come from `decode_asm` in fastdecode.py; they are constexpr
arguments, so each codebook gets its own compiled kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels_decode import _program_rows



@triton.jit
def _tile_rows(tab_ptr, t0, last, b, h, rn, CHUNK, RB: tl.constexpr):
    """uint8 pointers [BLOCK_N] to rows t0 + rn of (b, h); the tile starting at t0 lies inside one chunk (see
    `_row_ptrs` in kernels_decode.py). Affine in rn (int64), so the loads fold into base + immediate."""
    c = tl.minimum(t0, last) // CHUNK
    base = tl.load(tab_ptr + 3 * c).to(tl.pointer_type(tl.uint8))
    sb = tl.load(tab_ptr + 3 * c + 1)
    sh = tl.load(tab_ptr + 3 * c + 2)
    return (base + (b * sb + h * sh + (t0 - c * CHUNK).to(tl.int64) * RB)) + rn.to(tl.int64) * RB


@triton.jit
def _load_codes(rows, valid, NB: tl.constexpr, MASKED: tl.constexpr):
    """(norms fp16 [N], code bytes uint8 [N, NB]); MASKED: rows with valid False are not read (norm 0, codes
    undefined: any code decodes to a finite centroid, and those rows' scores are masked)."""
    p = rows[:, None] + 2 + tl.arange(0, NB)[None, :]
    p = tl.max_contiguous(tl.multiple_of(p, [1, 2]), [1, 2])  # byte pairs are 2-aligned (rows are even-sized)
    if MASKED:
        norms = tl.load(rows.to(tl.pointer_type(tl.float16)), mask=valid, other=0.0)
        codes = tl.load(p, mask=valid[:, None])
    else:
        norms = tl.load(rows.to(tl.pointer_type(tl.float16)))
        codes = tl.load(p)
    return norms, codes


@triton.jit
def _unpack(codes, P: tl.constexpr, ASM: tl.constexpr):
    """P part tensors fp16 [N, NB] (4 returned; parts >= P repeat part 0 and are dead code)."""
    if P == 2:
        x0, x1 = tl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,r", [codes], dtype=(tl.float16,) * 2, is_pure=True,
                                           pack=4)
        return x0, x1, x0, x0
    else:
        return tl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r", [codes], dtype=(tl.float16,) * 4,
                                         is_pure=True, pack=4)


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
def _tile(k_tab, v_tab, t0, hi, last, b, h, rn, CHUNK, q0, q1, q2, q3, a0, a1, a2, a3, m_i, l_i, rowb, bias_ptr,
          bias_sb, bias_sq, t, mrow, lim, PK: tl.constexpr, PV: tl.constexpr, K_ASM: tl.constexpr,
          V_ASM: tl.constexpr, RBK: tl.constexpr, RBV: tl.constexpr, NBK: tl.constexpr, NBV: tl.constexpr,
          CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ROWB: tl.constexpr, MASKED: tl.constexpr):
    """One tile of BLOCK_N tokens from t0: scores, online softmax (base 2), V parts accumulated."""
    offs = t0 + rn
    valid = offs < hi
    kn, kc = _load_codes(_tile_rows(k_tab, t0, last, b, h, rn, CHUNK, RBK), valid, NBK, MASKED)
    vn, vc = _load_codes(_tile_rows(v_tab, t0, last, b, h, rn, CHUNK, RBV), valid, NBV, MASKED)
    k0, k1, k2, k3 = _unpack(kc, PK, K_ASM)
    s = tl.dot(q0, tl.trans(k0))
    s = tl.dot(q1, tl.trans(k1), s)
    if PK > 2:
        s = tl.dot(q2, tl.trans(k2), s)
        s = tl.dot(q3, tl.trans(k3), s)
    s = s * kn.to(tl.float32)[None, :]
    if HAS_ROWB:
        s = s + rowb[:, None]
    if HAS_BIAS:
        bp = bias_ptr + b * bias_sb + t[:, None] * bias_sq + offs[None, :]
        s = s + tl.load(bp, mask=mrow[:, None] & valid[None, :], other=0.0)
    if MASKED or CAUSAL:
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
    v0, v1, v2, v3 = _unpack(vc, PV, V_ASM)
    a0 = tl.dot(pv, v0, a0 * alpha[:, None])
    a1 = tl.dot(pv, v1, a1 * alpha[:, None])
    if PV > 2:
        a2 = tl.dot(pv, v2, a2 * alpha[:, None])
        a3 = tl.dot(pv, v3, a3 * alpha[:, None])
    return a0, a1, a2, a3, m_new, l_i


@triton.jit
def decode_fast_kernel(q_ptr, k_tab, v_tab, len_ptr, rowb_ptr, bias_ptr, bias_sb, bias_sq,
                       o_ptr, ml_ptr, H, G, TQ, TQB, CHUNK, qshift, num_splits,
                       K_BITS: tl.constexpr, V_BITS: tl.constexpr, K_ASM: tl.constexpr, V_ASM: tl.constexpr,
                       D: tl.constexpr, RBK: tl.constexpr, RBV: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ROWB: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One split of one (b, kv head, block of TQB query tokens). Arguments as in `decode_split_kernel`
    (K_BITS / V_BITS 2 or 4; K_ASM / V_ASM: fastasm.decode_asm for them)."""
    PK: tl.constexpr = 8 // K_BITS
    PV: tl.constexpr = 8 // V_BITS
    NBK: tl.constexpr = D * K_BITS // 8
    NBV: tl.constexpr = D * V_BITS // 8
    sid, bh, qb, b, h, L, lo, hi, rm, t, mrow, grow, M = _program_rows(len_ptr, H, G, TQ, TQB, num_splits,
                                                                        BLOCK_M, BLOCK_N)
    qrow = bh * M + grow
    q0 = _q_part(q_ptr, qrow, mrow, 0, PK, D)
    q1 = _q_part(q_ptr, qrow, mrow, 1, PK, D)
    q2 = q0
    q3 = q0
    if PK > 2:
        q2 = _q_part(q_ptr, qrow, mrow, 2, PK, D)
        q3 = _q_part(q_ptr, qrow, mrow, 3, PK, D)
    a0 = tl.zeros([BLOCK_M, NBV], tl.float32)
    a1 = tl.zeros([BLOCK_M, NBV], tl.float32)
    a2 = a0
    a3 = a0
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    rowb = l_i
    if HAS_ROWB:
        rowb = tl.load(rowb_ptr + qrow, mask=mrow, other=0.0)
    lim = L - TQ + qshift + t
    if CAUSAL:
        hi = tl.minimum(hi, L - TQ + qshift + tl.minimum(qb * TQB + TQB, TQ))
    rn = tl.arange(0, BLOCK_N)
    last = tl.maximum(L - 1, 0)
    hi_full = lo + tl.maximum(hi - lo, 0) // BLOCK_N * BLOCK_N
    for t0 in range(lo, hi_full, BLOCK_N):
        a0, a1, a2, a3, m_i, l_i = _tile(k_tab, v_tab, t0, hi, last, b, h, rn, CHUNK, q0, q1, q2, q3, a0, a1, a2,
                                         a3, m_i, l_i, rowb, bias_ptr, bias_sb, bias_sq, t, mrow, lim, PK, PV,
                                         K_ASM, V_ASM, RBK, RBV, NBK, NBV, CAUSAL, HAS_BIAS, HAS_ROWB, False)
    if hi_full < hi:
        a0, a1, a2, a3, m_i, l_i = _tile(k_tab, v_tab, hi_full, hi, last, b, h, rn, CHUNK, q0, q1, q2, q3, a0, a1,
                                         a2, a3, m_i, l_i, rowb, bias_ptr, bias_sb, bias_sq, t, mrow, lim, PK, PV,
                                         K_ASM, V_ASM, RBK, RBV, NBK, NBV, CAUSAL, HAS_BIAS, HAS_ROWB, True)
    base = (bh * tl.num_programs(2) + qb) * num_splits + sid
    orow = base * BLOCK_M + rm
    _store_part(o_ptr, orow, a0, 0, PV, D)
    _store_part(o_ptr, orow, a1, 1, PV, D)
    if PV > 2:
        _store_part(o_ptr, orow, a2, 2, PV, D)
        _store_part(o_ptr, orow, a3, 3, PV, D)
    tl.store(ml_ptr + base * 2 * BLOCK_M + rm, m_i)
    tl.store(ml_ptr + base * 2 * BLOCK_M + BLOCK_M + rm, l_i)
