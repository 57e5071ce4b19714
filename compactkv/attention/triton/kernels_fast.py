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
  register with immediate offsets; only the last partial tile of a split takes masked loads. With ONE_CHUNK (all
  rows in the tables' first chunk: the static layer, a single-chunk layer, the benchmarks) the (b, h) row base is
  computed once per program, not looked up per tile (that lookup's division and 64-bit row offsets made ptxas
  compute every load's address separately: 72 IADD3 per tile).
- Norms stay a per-token scale on the scores (K) and on the probabilities (V), as in the split kernel.
- The query is loaded as whole rows and split into its parts in registers (strided per-part loads made Triton
  keep it in a layout that cost 22 more registers).
- The decoders' table words are plain constants (TABLE_REGS 0; `decode.fast_table_regs` picks it except for a
  2-bit V at head_dim 64, where both take registers; K and V can also be chosen apart, bits 0 and 1). Triton can
  then run the decoders in the tensor cores' operand layout: the code bytes go through shared memory to that
  layout (a quarter to an eighth of the decoded fp16 tile), and no decoded tile is stored and reloaded. With
  TABLE_REGS 3 the words are opaque per-thread registers (`_table_reg`: ptxas cannot re-materialize them before
  every prmt), but they pin the decoders to the load layout and every decoded K and V part makes that round trip:
  12 instead of 8 (turbo4) / 6 (turbo2) shared-memory cycles per token in the sm_90 SASS, and on an H200 (B=8
  T=32K, graphs) turbo4 259.9 -> 244.9 us, turbo2 234.1 -> 208.6 us (docs/kernels.md, session 6).
- At head_dim 128 with one 16-row query block the launcher caps registers at 128 (`decode.fast_maxnreg`): 4
  programs per multiprocessor instead of 2-3; the loop is latency-bound, so that was the largest gain measured.

turbo3 (3-byte groups of 8 codes) is not handled: decoded through three strided byte loads it came out slower
than the split kernel (the parts end up one value per thread and row, and the shared-memory stores before the
tensor cores go 2 bytes at a time), so turbo3 stays on `decode_split_kernel`.

The asm strings (most of each table baked in as immediates) come from `decode_asm` in fastasm.py; they and the
register table words (`table_words`) are constexpr arguments, so each codebook gets its own compiled kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels_decode import _program_rows



@triton.jit
def _head_base(tab_ptr, c, b, h):
    """uint8 pointer to the first row of chunk c of (b, h)."""
    base = tl.load(tab_ptr + 3 * c).to(tl.pointer_type(tl.uint8))
    return base + (b * tl.load(tab_ptr + 3 * c + 1) + h * tl.load(tab_ptr + 3 * c + 2))


@triton.jit
def _tile_rows(tab_ptr, hb, t0, last, b, h, rn, CHUNK, RB: tl.constexpr, ONE: tl.constexpr):
    """uint8 pointers [BLOCK_N] to rows t0 + rn of (b, h); the tile starting at t0 lies inside one chunk (see
    `_row_ptrs` in kernels_decode.py). Affine in rn (int64), so the loads fold into base + immediate.
    ONE: every row is in chunk 0, whose (b, h) base `hb` the caller computed once (no table loads per tile)."""
    if ONE:
        return (hb + t0.to(tl.int64) * RB) + rn.to(tl.int64) * RB
    c = tl.minimum(t0, last) // CHUNK
    return (_head_base(tab_ptr, c, b, h) + (t0 - c * CHUNK).to(tl.int64) * RB) + rn.to(tl.int64) * RB


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
def _table_reg(word: tl.constexpr, like, OPAQUE: tl.constexpr):
    """int32 `word` broadcast over `like`'s shape: a constant, or with OPAQUE in an ordinary (per-thread) register,
    xor-ed with (lane id * grid z size) >> 31, which is 0 (fewer than 2**26 query blocks) but neither constant nor
    warp-uniform to ptxas, so it can neither re-materialize the word as an immediate nor keep it in a uniform
    register (either way it re-created the value before every prmt of the decoders: about 60 moves per tile)."""
    if not OPAQUE:
        return tl.zeros(like.shape, tl.int32) + word
    w = tl.zeros([1], tl.int32) + word
    w = tl.inline_asm_elementwise("{ .reg .b32 t, n; mov.u32 t, %laneid; mov.u32 n, %nctaid.z; mul.lo.u32 t, t, n; "
                                  "shr.u32 t, t, 31; xor.b32 $0, $1, t; }", "=r,r", [w], dtype=tl.int32,
                                  is_pure=True, pack=1)
    return tl.broadcast_to(tl.reshape(w, [1, 1]), like.shape)


@triton.jit
def _unpack(codes, t0, t1, P: tl.constexpr, ASM: tl.constexpr):
    """P part tensors fp16 [N, NB] (4 returned; parts >= P repeat part 0 and are dead code). t0, t1: the table
    words (`_table_reg` of fastasm.table_words). With pack=4 each int32 input is 4 operands (the byte input one):
    $4 / $5-$8 / $9-$12 for 4 bits, $8 / $9-$12 / $13-$16 for 2 bits."""
    if P == 2:
        x0, x1 = tl.inline_asm_elementwise(ASM, "=r,=r,=r,=r" + ",r" * 9, [codes, t0, t1],
                                           dtype=(tl.float16,) * 2, is_pure=True, pack=4)
        return x0, x1, x0, x0
    else:
        return tl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,=r,=r,=r,=r" + ",r" * 9, [codes, t0, t1],
                                         dtype=(tl.float16,) * 4, is_pure=True, pack=4)


@triton.jit
def _q_parts(q_ptr, qrow, mrow, P: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr):
    """Query columns P*e + p (e < D/P) as fp16 [BLOCK_M, D/P] for p < P (4 returned; parts >= P repeat part 0).
    Loaded as whole contiguous rows and split in registers."""
    q = tl.load(q_ptr + qrow[:, None] * D + tl.arange(0, D)[None, :], mask=mrow[:, None], other=0.0).to(tl.float16)
    if P == 2:
        q0, q1 = tl.split(tl.reshape(q, (BLOCK_M, D // 2, 2)))
        return q0, q1, q0, q0
    else:
        qa, qb = tl.split(tl.reshape(q, (BLOCK_M, D // 4, 2, 2)))  # qa: p in {0, 2}; qb: p in {1, 3}
        q0, q2 = tl.split(qa)
        q1, q3 = tl.split(qb)
        return q0, q1, q2, q3


@triton.jit
def _store_part(o_ptr, orow, acc, p: tl.constexpr, P: tl.constexpr, D: tl.constexpr):
    e = tl.arange(0, D // P)
    tl.store(o_ptr + orow[:, None] * D + (P * e + p)[None, :], acc)


@triton.jit
def _tile(k_tab, v_tab, kb, vb, kt0, kt1, vt0, vt1, t0, hi, last, b, h, rn, CHUNK, q0, q1, q2, q3, a0, a1, a2,
          a3, m_i, l_i, bias_ptr, bias_sb, bias_sq, t, mrow, lim, PK: tl.constexpr, PV: tl.constexpr,
          K_ASM: tl.constexpr, V_ASM: tl.constexpr, RBK: tl.constexpr, RBV: tl.constexpr, NBK: tl.constexpr,
          NBV: tl.constexpr, CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, MASKED: tl.constexpr, ONE: tl.constexpr):
    """One tile of BLOCK_N tokens from t0: scores, online softmax (base 2), V parts accumulated."""
    offs = t0 + rn
    valid = offs < hi
    kn, kc = _load_codes(_tile_rows(k_tab, kb, t0, last, b, h, rn, CHUNK, RBK, ONE), valid, NBK, MASKED)
    vn, vc = _load_codes(_tile_rows(v_tab, vb, t0, last, b, h, rn, CHUNK, RBV, ONE), valid, NBV, MASKED)
    return _tile_math(kn, kc, vn, vc, kt0, kt1, vt0, vt1, offs, valid, b, q0, q1, q2, q3, a0, a1, a2, a3, m_i,
                      l_i, bias_ptr, bias_sb, bias_sq, t, mrow, lim, PK, PV, K_ASM, V_ASM, CAUSAL, HAS_BIAS, MASKED)


@triton.jit
def _tile_math(kn, kc, vn, vc, kt0, kt1, vt0, vt1, offs, valid, b, q0, q1, q2, q3, a0, a1, a2, a3, m_i, l_i,
               bias_ptr, bias_sb, bias_sq, t, mrow, lim, PK: tl.constexpr, PV: tl.constexpr, K_ASM: tl.constexpr,
               V_ASM: tl.constexpr, CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, MASKED: tl.constexpr):
    """The tile's work once its norms and code bytes are in registers."""
    k0, k1, k2, k3 = _unpack(kc, kt0, kt1, PK, K_ASM)
    s = tl.dot(q0, tl.trans(k0))
    s = tl.dot(q1, tl.trans(k1), s)
    if PK > 2:
        s = tl.dot(q2, tl.trans(k2), s)
        s = tl.dot(q3, tl.trans(k3), s)
    s = s * kn.to(tl.float32)[None, :]
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
    v0, v1, v2, v3 = _unpack(vc, vt0, vt1, PV, V_ASM)
    a0 = tl.dot(pv, v0, a0 * alpha[:, None])
    a1 = tl.dot(pv, v1, a1 * alpha[:, None])
    if PV > 2:
        a2 = tl.dot(pv, v2, a2 * alpha[:, None])
        a3 = tl.dot(pv, v3, a3 * alpha[:, None])
    return a0, a1, a2, a3, m_new, l_i


@triton.jit(do_not_specialize=["qshift"])  # the fp16 window length: changes every decode step
def decode_fast_kernel(q_ptr, k_tab, v_tab, len_ptr, bias_ptr, bias_sb, bias_sq,
                       o_ptr, ml_ptr, H, G, TQ, TQB, CHUNK, qshift, num_splits,
                       K_BITS: tl.constexpr, V_BITS: tl.constexpr, K_ASM: tl.constexpr, V_ASM: tl.constexpr,
                       D: tl.constexpr, RBK: tl.constexpr, RBV: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ONE_CHUNK: tl.constexpr,
                       K_TW0: tl.constexpr, K_TW1: tl.constexpr, V_TW0: tl.constexpr, V_TW1: tl.constexpr,
                       PREFETCH: tl.constexpr = 0, TABLE_REGS: tl.constexpr = 3):
    """One split of one (b, kv head, block of TQB query tokens). Arguments as in `decode_split_kernel`
    (K_BITS / V_BITS 2 or 4; K_ASM / V_ASM: fastasm.decode_asm for them). ONE_CHUNK: CHUNK >= every length, so
    all rows are in the tables' first chunk (its row bases are computed once, not per tile). K_TW0.. V_TW1: the
    decoders' register table words (fastasm.table_words). PREFETCH: 0 loads a tile's rows where its math starts;
    1 loads the next tile's K rows (2: K and V) one tile ahead. TABLE_REGS: which decoders take their tables as
    opaque registers, bit 0 K, bit 1 V (0: both constants, 3: both registers; see the module docstring)."""
    PK: tl.constexpr = 8 // K_BITS
    PV: tl.constexpr = 8 // V_BITS
    NBK: tl.constexpr = D * K_BITS // 8
    NBV: tl.constexpr = D * V_BITS // 8
    sid, bh, qb, b, h, L, lo, hi, rm, t, mrow, grow, M = _program_rows(len_ptr, H, G, TQ, TQB, num_splits,
                                                                        BLOCK_M, BLOCK_N)
    qrow = bh * M + grow
    q0, q1, q2, q3 = _q_parts(q_ptr, qrow, mrow, PK, D, BLOCK_M)
    a0 = tl.zeros([BLOCK_M, NBV], tl.float32)
    a1 = tl.zeros([BLOCK_M, NBV], tl.float32)
    a2 = a0
    a3 = a0
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    lim = L - TQ + qshift + t
    if CAUSAL:
        hi = tl.minimum(hi, L - TQ + qshift + tl.minimum(qb * TQB + TQB, TQ))
    rn = tl.arange(0, BLOCK_N)
    last = tl.maximum(L - 1, 0)
    hi_full = lo + tl.maximum(hi - lo, 0) // BLOCK_N * BLOCK_N
    KREG: tl.constexpr = (TABLE_REGS & 1) != 0
    VREG: tl.constexpr = (TABLE_REGS & 2) != 0
    kt0 = _table_reg(K_TW0, rn[:, None] + tl.zeros([1, NBK], tl.int32), KREG)
    kt1 = _table_reg(K_TW1, kt0, KREG)
    vt0 = kt0
    vt1 = kt1
    if V_TW0 != K_TW0 or V_TW1 != K_TW1 or NBV != NBK or KREG != VREG:
        vt0 = _table_reg(V_TW0, rn[:, None] + tl.zeros([1, NBV], tl.int32), VREG)
        vt1 = _table_reg(V_TW1, vt0, VREG)
    kb = _head_base(k_tab, 0, b, h)
    vb = _head_base(v_tab, 0, b, h)
    if PREFETCH == 0:
        for t0 in range(lo, hi_full, BLOCK_N):
            a0, a1, a2, a3, m_i, l_i = _tile(k_tab, v_tab, kb, vb, kt0, kt1, vt0, vt1, t0, hi, last, b, h, rn,
                                             CHUNK, q0, q1, q2, q3, a0, a1, a2, a3, m_i, l_i, bias_ptr, bias_sb,
                                             bias_sq, t, mrow, lim, PK, PV, K_ASM, V_ASM, RBK, RBV, NBK, NBV, CAUSAL,
                                             HAS_BIAS, False, ONE_CHUNK)
    else:
        # software pipelining in registers: the next full tile's K (PREFETCH 1) or K and V (2) rows are loaded
        # before this tile's math, so their latency overlaps it (the 2-byte loads are too narrow for Triton's
        # cp.async pipeliner). The prologue is masked (no full tile: nothing read); the last iteration re-loads
        # its own tile instead of reading past hi_full.
        first = lo + rn < hi_full
        kn, kc = _load_codes(_tile_rows(k_tab, kb, lo, last, b, h, rn, CHUNK, RBK, ONE_CHUNK), first, NBK, True)
        if PREFETCH > 1:
            vn, vc = _load_codes(_tile_rows(v_tab, vb, lo, last, b, h, rn, CHUNK, RBV, ONE_CHUNK), first, NBV,
                                 True)
        for t0 in range(lo, hi_full, BLOCK_N):
            tn = tl.minimum(t0 + BLOCK_N, hi_full - BLOCK_N)
            nkn, nkc = _load_codes(_tile_rows(k_tab, kb, tn, last, b, h, rn, CHUNK, RBK, ONE_CHUNK), first, NBK,
                                   False)
            if PREFETCH > 1:
                nvn, nvc = _load_codes(_tile_rows(v_tab, vb, tn, last, b, h, rn, CHUNK, RBV, ONE_CHUNK), first,
                                       NBV, False)
            else:
                vn, vc = _load_codes(_tile_rows(v_tab, vb, t0, last, b, h, rn, CHUNK, RBV, ONE_CHUNK), first,
                                     NBV, False)
            offs = t0 + rn
            a0, a1, a2, a3, m_i, l_i = _tile_math(kn, kc, vn, vc, kt0, kt1, vt0, vt1, offs, offs < hi, b, q0, q1,
                                                  q2, q3, a0, a1, a2, a3, m_i, l_i, bias_ptr, bias_sb, bias_sq, t,
                                                  mrow, lim, PK, PV, K_ASM, V_ASM, CAUSAL, HAS_BIAS, False)
            kn, kc = nkn, nkc
            if PREFETCH > 1:
                vn, vc = nvn, nvc
    if hi_full < hi:
        a0, a1, a2, a3, m_i, l_i = _tile(k_tab, v_tab, kb, vb, kt0, kt1, vt0, vt1, hi_full, hi, last, b, h, rn,
                                         CHUNK, q0, q1, q2, q3, a0, a1, a2, a3, m_i, l_i, bias_ptr,
                                         bias_sb, bias_sq, t, mrow, lim, PK, PV, K_ASM, V_ASM, RBK, RBV, NBK, NBV,
                                         CAUSAL, HAS_BIAS, True, ONE_CHUNK)
    base = (bh * tl.num_programs(2) + qb) * num_splits + sid
    orow = base * BLOCK_M + rm
    _store_part(o_ptr, orow, a0, 0, PV, D)
    _store_part(o_ptr, orow, a1, 1, PV, D)
    if PV > 2:
        _store_part(o_ptr, orow, a2, 2, PV, D)
        _store_part(o_ptr, orow, a3, 3, PV, D)
    tl.store(ml_ptr + base * 2 * BLOCK_M + rm, m_i)
    tl.store(ml_ptr + base * 2 * BLOCK_M + BLOCK_M + rm, l_i)
