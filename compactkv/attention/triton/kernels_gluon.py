"""Decode attention over planar turbo2/turbo4 codes written in Gluon (Triton's explicit-layout dialect).

One warp per program, one split of one (b, kv head) per program, one query token per row (decode steps):

- Transposed products, so the tensor cores waste less on a GQA group of 4-8 query heads: scores S^T = K Q^T
  (m16n8k16: 16 tokens x 8 query rows per instruction, K as the A operand) and O^T = V^T P^T (16 value dims x 8
  rows, P^T as the B operand). The accumulator holds [D, 8] fp32: 32 registers per thread at head_dim 128.
- The code bytes are loaded straight into the A operand's register layout, with 16-byte (K) and 8-byte (V) loads:
  the dot over head_dim only needs the query and the keys to agree on the order of the dims, so the kernel reads
  the dims in the order its registers want them (a permutation of the head_dim axis, undone when the query is
  loaded and the output stored). `gl.convert_layout(..., assert_trivial=True)` checks that no byte moves between
  threads. Rows therefore need 16-byte aligned code planes: the static cache's planar storage (codes [B, H, T,
  D*bits/8], norms [B, H, T] fp16 in a separate plane).
- The codes are decoded by the same inline-PTX byte permutes as `kernels_fast` (fastasm.decode_asm): part p of a
  byte is code p of it, each part its own operand of the dot. For V, each 32-bit input holds the same byte of two
  consecutive tokens, so the decoder's half2 outputs are the (token, token + 1) pairs the B-operand pairing wants.
- Norms scale the scores (K) and the probabilities (V). Online softmax in base 2 (the query comes pre-scaled by
  softmax scale x log2 e), partials in the split-kernel format (`decode.SplitPartials`), merged by the same
  finishing kernel.
- Lazy rescale of the accumulators (only when a row's max grows by more than 2**8).
- Loads (PREFETCH): 0, V's code bytes after the softmax; 1, K's and V's at the tile's start; 2, a cp.async
  pipeline through STAGES shared-memory tiles (norms one tile ahead in registers). The pipeline gains 0-5% at
  head_dim 128 only: the loop is bound by the integer pipe (the decoders), not by load latency (docs/kernels.md,
  session 9). Carrying the next tile's bytes in registers instead spilled: each code byte of a loop-carried
  tensor took a register of its own.
- Decoder table words in opaque per-thread registers (with explicit layouts they cannot pin anything): as
  constants ptxas re-created them before every prmt (+128 instructions per 32-token tile in the sm_90 SASS).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

# Gluon names that later triton releases changed (3.6 is the timed one; 3.7.1-3.9.0 compile these kernels too):
# a CTA-wide barrier (gl.thread_barrier up to 3.6, gl.barrier after), a cp.async copy into shared memory
# (async_copy_global_to_shared, then async_load: same arguments), a shared buffer seen as another dtype / shape /
# layout (_reinterpret, then reinterpret: `smem_view`)
cta_barrier = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier
async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
_PUBLIC_REINTERPRET = gl.constexpr(hasattr(gl.shared_memory_descriptor, "reinterpret"))


# row-major shared layouts of 2-D and 3-D blocks, also of stacks of them ([n, ...]: `smem_view` with the block's
# layout, then .index(i) takes block i)
FLAT2 = gl.constexpr(gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0]))
FLAT3 = gl.constexpr(gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[2, 1, 0]))


@gluon.jit
def smem_view(buf, dtype: gl.constexpr, shape: gl.constexpr, layout: gl.constexpr):
    """Shared buffer `buf` reinterpreted as `dtype` [`shape`] in `layout` (no copy). Take a part of a buffer by
    viewing the whole buffer as a stack of such parts and indexing it: triton 3.8 refuses to reinterpret a
    subview (a .slice or .index of a buffer)."""
    if _PUBLIC_REINTERPRET:
        return buf.reinterpret(dtype, shape, layout)
    else:
        return buf._reinterpret(dtype, shape, layout)


@gluon.jit
def _opaque(w):
    """`w` (int32, constant) in an ordinary register: xor-ed with (lane id * grid z) >> 31, which is 0 but which
    ptxas can neither prove zero nor keep in a uniform register."""
    return gl.inline_asm_elementwise("{ .reg .b32 t, n; mov.u32 t, %laneid; mov.u32 n, %nctaid.z; "
                                     "mul.lo.u32 t, t, n; shr.u32 t, t, 31; xor.b32 $0, $1, t; }", "=r,r", [w],
                                     dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _decode(codes, t0, t1, ASM: gl.constexpr, P: gl.constexpr):
    """P fp16 tensors shaped like `codes` (4 returned, unused ones repeat part 0): part p = code p of each byte."""
    if P == 2:
        x0, x1 = gl.inline_asm_elementwise(ASM, "=r,=r,=r,=r" + ",r" * 9, [codes, t0, t1],
                                           dtype=(gl.float16, gl.float16), is_pure=True, pack=4)
        return x0, x1, x0, x0
    else:
        return gl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,=r,=r,=r,=r" + ",r" * 9, [codes, t0, t1],
                                         dtype=(gl.float16,) * 4, is_pure=True, pack=4)


@gluon.jit
def _q_part(qrow, qmask, sq, p: gl.constexpr, P: gl.constexpr):
    """Query dims P * sq + p as the fp16 B operand [NBK, NH]."""
    return gl.load(gl.expand_dims(qrow, 0) + gl.expand_dims(P * sq + p, 1), mask=qmask, other=0.0).to(gl.float16)


@gluon.jit
def _row_ptrs(base, t0, r, col, NB: gl.constexpr):
    """Pointers [BN, NB] to the code bytes of tokens t0 + r (a code plane's rows of NB bytes)."""
    return base + gl.expand_dims((t0 + r).to(gl.int64) * NB, 1) + gl.expand_dims(col, 0)


@gluon.jit
def _rows(base, t0, hi, r, col, NB: gl.constexpr, MASKED: gl.constexpr):
    """Code bytes [BN, NB] of tokens t0 + r from global memory (rows >= hi read as zeros if MASKED), in the load
    layout of r / col."""
    p = _row_ptrs(base, t0, r, col, NB)
    if MASKED:
        return gl.load(p, mask=gl.expand_dims(t0 + r < hi, 1), other=0)
    return gl.load(p)


@gluon.jit
def _k_arrange(kc, NBK: gl.constexpr, BN: gl.constexpr, A_OP: gl.constexpr):
    """K code bytes [BN, NBK] as loaded (KLOAD) -> the A operand layout, bytes in the kernel's dim order (logical
    byte 16 ks + 8 h + 2 c + e = stored byte c * NBK/4 + 4 ks + 2 h + e): register renaming only."""
    kc = gl.reshape(kc, [BN, 4, NBK // 16, 2, 2])
    kc = gl.permute(kc, [0, 2, 3, 1, 4])
    kc = gl.reshape(kc, [BN, NBK])
    return gl.convert_layout(kc, A_OP, assert_trivial=True)


@gluon.jit
def _v_arrange(vc, NBV: gl.constexpr, BN: gl.constexpr, A_OP: gl.constexpr):
    """V code bytes [BN, NBV] as loaded (VLOAD) -> transposed into the A operand layout [NBV, BN] (logical byte
    8 i + g = stored byte g * NBV/8 + i): register renaming only."""
    vc = gl.permute(vc, [1, 0])
    vc = gl.reshape(vc, [8, NBV // 8, BN])
    vc = gl.permute(vc, [1, 0, 2])
    vc = gl.reshape(vc, [NBV, BN])
    return gl.convert_layout(vc, A_OP, assert_trivial=True)


@gluon.jit
def _copy_tile(t0, hi, kbase, vbase, kr, kcol, vr, vcol, ks, vs, NBK: gl.constexpr, NBV: gl.constexpr,
               COPY_V: gl.constexpr):
    """cp.async of tokens t0 + [0, BN)'s K (and if COPY_V, V) code bytes into shared stages ks / vs, one commit
    group; rows >= hi are not read (their bytes in shared memory are zeros)."""
    async_load(ks, _row_ptrs(kbase, t0, kr, kcol, NBK), mask=gl.expand_dims(t0 + kr < hi, 1))
    if COPY_V:
        async_load(vs, _row_ptrs(vbase, t0, vr, vcol, NBV), mask=gl.expand_dims(t0 + vr < hi, 1))
    async_copy.commit_group()


@gluon.jit
def _load_tile(t0, hi, kbase, vbase, knb, vnb, kr, kcol, vr, vcol, tr, NBK: gl.constexpr, NBV: gl.constexpr,
               BN: gl.constexpr, A_OP: gl.constexpr, MASKED: gl.constexpr):
    """Code bytes (A operand layout) and fp16 norms of tokens t0 + [0, BN): rows >= hi read as zeros if MASKED."""
    kc = _k_arrange(_rows(kbase, t0, hi, kr, kcol, NBK, MASKED), NBK, BN, A_OP)
    vc = _v_arrange(_rows(vbase, t0, hi, vr, vcol, NBV, MASKED), NBV, BN, A_OP)
    tok = t0 + tr
    if MASKED:
        kn = gl.load(knb + tok, mask=tok < hi, other=0.0)
        vn = gl.load(vnb + tok, mask=tok < hi, other=0.0)
    else:
        kn = gl.load(knb + tok)
        vn = gl.load(vnb + tok)
    return kc, vc, kn, vn


@gluon.jit
def scale_acc(a0, a1, a2, a3, sc, FOUR: gl.constexpr):
    """The value accumulators of 2 parts (FOUR: 4) times the rescale sc (the others returned as given)."""
    a0 = a0 * sc
    a1 = a1 * sc
    if FOUR:
        a2 = a2 * sc
        a3 = a3 * sc
    return a0, a1, a2, a3


@gluon.jit
def accumulate_pv(v0, v1, v2, v3, pv, a0, a1, a2, a3, FOUR: gl.constexpr):
    """a_p += v_p @ pv for the 2 parts (FOUR: 4) of a tile's decoded values (the others returned as given)."""
    a0 = mma_v2(v0, pv, a0)
    a1 = mma_v2(v1, pv, a1)
    if FOUR:
        a2 = mma_v2(v2, pv, a2)
        a3 = mma_v2(v3, pv, a3)
    return a0, a1, a2, a3


@gluon.jit
def _tile(t0, hi, kc, vc, kn, vn, vbase, vr, vcol, tr, kt0, kt1, vt0, vt1, q0, q1, q2, q3,
          a0, a1, a2, a3, m_i, l_i, K_ASM: gl.constexpr, V_ASM: gl.constexpr, PK: gl.constexpr, PV: gl.constexpr,
          NBV: gl.constexpr, BN: gl.constexpr, NH: gl.constexpr, MMA: gl.constexpr,
          A_OP: gl.constexpr, B_OP: gl.constexpr, MASKED: gl.constexpr, LAZY_TAU: gl.constexpr,
          LATE_V: gl.constexpr):
    """One tile of tokens t0 + [0, BN) from its loaded codes and norms (LATE_V: the V codes are loaded here, after
    the softmax, and `vc` is ignored); MASKED: scores of tokens >= hi are -inf."""
    k0, k1, k2, k3 = _decode(kc, kt0, kt1, K_ASM, PK)
    s = mma_v2(k0, q0, gl.zeros([BN, NH], gl.float32, MMA))
    s = mma_v2(k1, q1, s)
    if PK == 4:
        s = mma_v2(k2, q2, s)
        s = mma_v2(k3, q3, s)
    kn = kn.to(gl.float32)
    vn = vn.to(gl.float32)
    if MASKED:
        s = gl.where(gl.expand_dims(t0 + tr < hi, 1), s * gl.expand_dims(kn, 1), float("-inf"))
    else:
        s = s * gl.expand_dims(kn, 1)
    m_tile = gl.max(s, axis=0)
    # lazy rescale: the running max moves only when some row's tile max exceeds it by more than LAZY_TAU (log2
    # units), so probabilities stay below 2**LAZY_TAU (fp16-safe) and most tiles skip the accumulator rescale
    # (H200, B=8 T=32K: 167.5 vs 170.8 us for turbo4 with a rescale every tile; docs/kernels.md, session 8)
    if gl.max(m_tile - m_i, axis=0) > LAZY_TAU:
        m_new = gl.maximum(m_i, m_tile)
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha
        a0, a1, a2, a3 = scale_acc(a0, a1, a2, a3, gl.expand_dims(alpha, 0), PV == 4)
        m_i = m_new
    p = gl.exp2(s - gl.expand_dims(m_i, 0))
    l_i = l_i + gl.sum(p, axis=0)
    pv = gl.convert_layout((p * gl.expand_dims(vn, 1)).to(gl.float16), B_OP)
    if LATE_V:
        vc = _v_arrange(_rows(vbase, t0, hi, vr, vcol, NBV, MASKED), NBV, BN, A_OP)
    v0, v1, v2, v3 = _decode(vc, vt0, vt1, V_ASM, PV)
    a0, a1, a2, a3 = accumulate_pv(v0, v1, v2, v3, pv, a0, a1, a2, a3, PV == 4)
    return a0, a1, a2, a3, m_i, l_i


@gluon.jit
def split_rule(len_ptr, H, num_splits, BN: gl.constexpr):
    """(bh, b, h, tokens of row b, tokens per split) for program_id(1) = bh = b * H + h: the rule of
    kernels_decode._program_rows (a Triton function, not callable from Gluon), splits whole tiles of BN tokens."""
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    L = gl.load(len_ptr + b)
    return bh, b, h, L, gl.cdiv(gl.cdiv(L, num_splits), BN) * BN


@gluon.jit
def _store_part(o_ptr, orow, acc, mo, p: gl.constexpr, PV: gl.constexpr, WV: gl.constexpr, D: gl.constexpr):
    """O^T part p [NBV, NH] to o rows `orow`, logical byte 8 i + g -> dim PV * (g * WV + i) + p."""
    dim = PV * ((mo % 8) * WV + mo // 8) + p
    gl.store(o_ptr + gl.expand_dims(orow, 0) * D + gl.expand_dims(dim, 1), acc)


@gluon.jit
def decode_gluon_kernel(q_ptr, kc_ptr, kn_ptr, vc_ptr, vn_ptr, len_ptr, o_ptr, ml_ptr,
                        H, MQ, num_splits, kcsb, kcsh, vcsb, vcsh, nsb, nsh,
                        D: gl.constexpr, K_BITS: gl.constexpr, V_BITS: gl.constexpr,
                        K_ASM: gl.constexpr, V_ASM: gl.constexpr,
                        K_TW0: gl.constexpr, K_TW1: gl.constexpr, V_TW0: gl.constexpr, V_TW1: gl.constexpr,
                        BN: gl.constexpr, NH: gl.constexpr, BLOCK_M: gl.constexpr,
                        KLOAD: gl.constexpr, VLOAD: gl.constexpr, LAZY_TAU: gl.constexpr = 8.0,
                        PREFETCH: gl.constexpr = 0, STAGES: gl.constexpr = 2):
    """One split of one (b, kv head): partial O, running max and sum of the MQ = G query rows of the group.

    q_ptr: fp32 [B*H, MQ, D] (mapped into the K rotation's space, times softmax scale * log2 e). kc_ptr / vc_ptr:
    uint8 code planes, row (b, h, t) at b * kcsb + h * kcsh + t * D*K_BITS/8; kn_ptr / vn_ptr: fp16 norm planes,
    (b, h, t) at b * nsb + h * nsh + t. len_ptr: int32 [B] tokens of each batch row, all visible. o_ptr / ml_ptr:
    the split partials fp32 [B*H, S, BLOCK_M, D] and [B*H, S, 2, BLOCK_M] (rows >= MQ not written). KLOAD /
    VLOAD: the load layouts of `gluon_layouts`."""
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    A_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_OP: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    ROWS: gl.constexpr = gl.SliceLayout(1, MMA)
    COLS: gl.constexpr = gl.SliceLayout(0, MMA)
    PK: gl.constexpr = 8 // K_BITS
    PV: gl.constexpr = 8 // V_BITS
    NBK: gl.constexpr = D * K_BITS // 8
    NBV: gl.constexpr = D * V_BITS // 8
    WK: gl.constexpr = NBK // 4
    WV: gl.constexpr = NBV // 8

    sid = gl.program_id(0)
    bh, b, h, L, split = split_rule(len_ptr, H, num_splits, BN)
    lo = sid * split
    hi = gl.minimum(lo + split, L)
    hi_full = lo + gl.maximum(hi - lo, 0) // BN * BN

    # the query's dims in the K operand's order: logical byte l -> stored byte sq
    lq = gl.arange(0, NBK, layout=gl.SliceLayout(1, B_OP))
    nq = gl.arange(0, NH, layout=gl.SliceLayout(0, B_OP))
    sq = ((lq // 2) % 4) * WK + (lq // 16) * 4 + ((lq // 8) % 2) * 2 + lq % 2
    qrow = q_ptr + (bh * MQ + nq).to(gl.int64) * D
    qmask = gl.expand_dims(nq < MQ, 0)
    q0 = _q_part(qrow, qmask, sq, 0, PK)
    q1 = _q_part(qrow, qmask, sq, 1, PK)
    q2 = q0
    q3 = q0
    if PK == 4:
        q2 = _q_part(qrow, qmask, sq, 2, PK)
        q3 = _q_part(qrow, qmask, sq, 3, PK)

    a0 = gl.zeros([NBV, NH], gl.float32, MMA)
    a1 = gl.zeros([NBV, NH], gl.float32, MMA)
    a2 = a0
    a3 = a0
    m_i = gl.full([NH], float("-inf"), gl.float32, COLS)
    l_i = gl.zeros([NH], gl.float32, COLS)

    kbase = kc_ptr + b.to(gl.int64) * kcsb + h.to(gl.int64) * kcsh
    vbase = vc_ptr + b.to(gl.int64) * vcsb + h.to(gl.int64) * vcsh
    knb = kn_ptr + b.to(gl.int64) * nsb + h.to(gl.int64) * nsh
    vnb = vn_ptr + b.to(gl.int64) * nsb + h.to(gl.int64) * nsh
    kr = gl.arange(0, BN, layout=gl.SliceLayout(1, KLOAD))
    kcol = gl.arange(0, NBK, layout=gl.SliceLayout(0, KLOAD))
    vr = gl.arange(0, BN, layout=gl.SliceLayout(1, VLOAD))
    vcol = gl.arange(0, NBV, layout=gl.SliceLayout(0, VLOAD))
    tr = gl.arange(0, BN, layout=ROWS)
    kt0 = _opaque(gl.full([BN, NBK], K_TW0, gl.int32, A_OP))
    kt1 = _opaque(gl.full([BN, NBK], K_TW1, gl.int32, A_OP))
    vt0 = _opaque(gl.full([NBV, BN], V_TW0, gl.int32, A_OP))
    vt1 = _opaque(gl.full([NBV, BN], V_TW1, gl.int32, A_OP))

    if PREFETCH == 2:
        # cp.async pipeline: the code bytes of tile i + STAGES - 1 are copied into shared memory while tile i is
        # computed (copies past the last full tile are masked off and move no bytes); the norms, a few registers,
        # are loaded one tile ahead. cp.async moves 4 bytes per thread at least: V rows of turbo2 at head_dim 64 (2
        # bytes per thread and token) are loaded from global memory after the softmax instead
        COPY_V: gl.constexpr = NBV // 8 >= 4
        ksm = gl.allocate_shared_memory(gl.uint8, [STAGES, BN, NBK], FLAT2)
        vsm = gl.allocate_shared_memory(gl.uint8, [STAGES, BN, NBV], FLAT2)
        for i in gl.static_range(STAGES - 1):
            _copy_tile(lo + i * BN, hi_full, kbase, vbase, kr, kcol, vr, vcol, ksm.index(i), vsm.index(i), NBK, NBV,
                       COPY_V)
        kn = gl.load(knb + lo + tr, mask=lo + tr < hi_full, other=0.0)
        vn = gl.load(vnb + lo + tr, mask=lo + tr < hi_full, other=0.0)
        it = 0
        for t0 in range(lo, hi_full, BN):
            nxt = (it + STAGES - 1) % STAGES
            cta_barrier()  # every lane is done reading the stage the next copy overwrites
            _copy_tile(t0 + (STAGES - 1) * BN, hi_full, kbase, vbase, kr, kcol, vr, vcol, ksm.index(nxt),
                       vsm.index(nxt), NBK, NBV, COPY_V)
            kn2 = gl.load(knb + t0 + BN + tr, mask=t0 + BN + tr < hi_full, other=0.0)
            vn2 = gl.load(vnb + t0 + BN + tr, mask=t0 + BN + tr < hi_full, other=0.0)
            async_copy.wait_group(STAGES - 1)  # tile it's copies have landed
            cta_barrier()  # ... those of every lane
            cur = it % STAGES
            kc = _k_arrange(ksm.index(cur).load(KLOAD), NBK, BN, A_OP)
            vc = kc
            if COPY_V:
                vc = _v_arrange(vsm.index(cur).load(VLOAD), NBV, BN, A_OP)
            a0, a1, a2, a3, m_i, l_i = _tile(t0, hi, kc, vc, kn, vn, vbase, vr, vcol, tr, kt0, kt1, vt0, vt1, q0, q1,
                                             q2, q3, a0, a1, a2, a3, m_i, l_i, K_ASM, V_ASM, PK, PV, NBV, BN, NH, MMA,
                                             A_OP, B_OP, False, LAZY_TAU, not COPY_V)
            kn = kn2
            vn = vn2
            it += 1
        async_copy.wait_group(0)
    else:
        for t0 in range(lo, hi_full, BN):
            kc, vc, kn, vn = _load_tile(t0, hi, kbase, vbase, knb, vnb, kr, kcol, vr, vcol, tr, NBK, NBV, BN, A_OP,
                                        False)
            a0, a1, a2, a3, m_i, l_i = _tile(t0, hi, kc, vc, kn, vn, vbase, vr, vcol, tr, kt0, kt1, vt0, vt1, q0, q1,
                                             q2, q3, a0, a1, a2, a3, m_i, l_i, K_ASM, V_ASM, PK, PV, NBV, BN, NH, MMA,
                                             A_OP, B_OP, False, LAZY_TAU, PREFETCH == 0)
    if hi_full < hi:
        kc, vc, kn, vn = _load_tile(hi_full, hi, kbase, vbase, knb, vnb, kr, kcol, vr, vcol, tr, NBK, NBV, BN, A_OP,
                                    True)
        a0, a1, a2, a3, m_i, l_i = _tile(hi_full, hi, kc, vc, kn, vn, vbase, vr, vcol, tr, kt0, kt1, vt0, vt1, q0, q1,
                                         q2, q3, a0, a1, a2, a3, m_i, l_i, K_ASM, V_ASM, PK, PV, NBV, BN, NH, MMA,
                                         A_OP, B_OP, True, LAZY_TAU, False)

    base = bh * num_splits + sid
    mo = gl.arange(0, NBV, layout=ROWS)
    no = gl.arange(0, NH, layout=COLS)
    orow = (base * BLOCK_M + no).to(gl.int64)
    # rows >= MQ hold zeros / -inf and are never read (the merge reads rows < G * Tq)
    _store_part(o_ptr, orow, a0, mo, 0, PV, WV, D)
    _store_part(o_ptr, orow, a1, mo, 1, PV, WV, D)
    if PV == 4:
        _store_part(o_ptr, orow, a2, mo, 2, PV, WV, D)
        _store_part(o_ptr, orow, a3, mo, 3, PV, WV, D)
    gl.store(ml_ptr + base * 2 * BLOCK_M + no, m_i)
    gl.store(ml_ptr + base * 2 * BLOCK_M + BLOCK_M + no, l_i)


def gluon_layouts(bn: int, nbk: int, nbv: int) -> tuple[gl.DistributedLinearLayout, gl.DistributedLinearLayout]:
    """(KLOAD, VLOAD): register/lane bases of the code loads, [BN, NBK] and [BN, NBV] stored bytes. K: lane
    (g, c) = (lane // 4, lane % 4) holds NBK/4 consecutive bytes (c * NBK/4 ..) of tokens g, g + 8, ...; V: lane
    holds NBV/8 consecutive bytes (g * NBV/8 ..) of tokens 2c, 2c + 1, 2c + 8, 2c + 9, ... (the m16n8k16 A
    operand's rows and columns for thread (g, c), in the kernel's dim order)."""
    wk, wv = nbk // 4, nbv // 8
    kreg = [[0, 1 << i] for i in range(wk.bit_length() - 1)] + [[8 << i, 0] for i in range((bn // 8).bit_length() - 1)]
    klane = [[0, wk], [0, 2 * wk], [1, 0], [2, 0], [4, 0]]
    vreg = [[0, 1 << i] for i in range(wv.bit_length() - 1)] + [[1, 0], [8, 0]]
    vreg += [[16 << i, 0] for i in range((bn // 16).bit_length() - 1)]
    vlane = [[2, 0], [4, 0], [0, wv], [0, 2 * wv], [0, 4 * wv]]
    return (gl.DistributedLinearLayout(reg_bases=kreg, lane_bases=klane, warp_bases=[], block_bases=[],
                                       shape=[bn, nbk]),
            gl.DistributedLinearLayout(reg_bases=vreg, lane_bases=vlane, warp_bases=[], block_bases=[],
                                       shape=[bn, nbv]))
