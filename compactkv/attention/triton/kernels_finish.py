"""Triton kernel that finishes a decode attention call in one launch.

One program per query row (of a (batch row, KV head, query block) group) takes the split partials of the
compressed part (unnormalised accumulators in the V segment space, running max and sum in log2 units, as written
by the decode kernels) of all splits at once, attends the same query row over the fp16 sink and recent windows
(online softmax over tiles, causal and additive masks), maps the merged compressed accumulator back through the V
codec's inverse map, merges the two parts by their log-sum-exp and writes the normalised row straight into the
[B, Tq, Hq, D] output in the query's dtype.

It replaces, per layer and decode step, the split-merge kernel plus about twenty small torch operations (window
concatenation, window scores, softmax, log-sum-exp, the inverse map matmul, the merge and the output transpose),
which is host time the eager decode step was spending (docs/performance.md). One program per row (as the old
split-merge kernel) rather than per group: a per-group program walked the splits one after the other and took
~116 us per call at B=1 (H200 profile), the rows' programs load every split at once.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # (a global a kernel reads must be a constexpr)


@triton.jit
def _window_tile(q, k_base, v_base, n, t0, key_abs0, qpos, bias_at, HAS_BIAS: tl.constexpr, CAUSAL: tl.constexpr,
                 m_w, l_w, acc_w, D: tl.constexpr, BLOCK_W: tl.constexpr):
    """Online-softmax step of one query row q [D] over window keys t0 .. t0 + BLOCK_W ([n, D] rows at k_base and
    v_base). key_abs0: absolute position of the window's key 0; qpos: the query's absolute position (causal);
    bias_at: pointer to the row's additive bias at the window's key 0 (natural-log units). Scores in log2 units
    (q is pre-scaled by softmax scale * log2 e); m_w, l_w scalars, acc_w [D]."""
    rw = t0 + tl.arange(0, BLOCK_W)
    rd = tl.arange(0, D)
    keep = rw < n
    k = tl.load(k_base + rw[:, None] * D + rd[None, :], mask=keep[:, None], other=0.0).to(tl.float32)
    v = tl.load(v_base + rw[:, None] * D + rd[None, :], mask=keep[:, None], other=0.0).to(tl.float32)
    s = tl.sum(k * q[None, :], axis=1)
    if CAUSAL:
        keep = keep & (key_abs0 + rw <= qpos)
    if HAS_BIAS:
        s = s + tl.load(bias_at + rw, mask=keep, other=0.0) * LOG2E
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_w, tl.max(s, axis=0))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_w - m_use)
    p = tl.exp2(s - m_use)
    l_w = l_w * alpha + tl.sum(p, axis=0)
    acc_w = acc_w * alpha + tl.sum(p[:, None] * v, axis=0)
    return m_new, l_w, acc_w


# the window and history lengths change every decode step: not specialized (no compilation per value class)
@triton.jit(do_not_specialize=["num_splits", "n_sink", "n_recent", "n_comp"])
def decode_finish_kernel(o_ptr, ml_ptr, num_splits, q_ptr, qscale,
                         sk_ptr, sv_ptr, n_sink, s_sb, s_sh, rk_ptr, rv_ptr, n_recent, r_sb, r_sh, n_comp,
                         adj_ptr, kmean_ptr, bias_ptr, bias_sb, bias_st, out_ptr,
                         H, G, TQ, TQB, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                         BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, HAS_ADJ: tl.constexpr,
                         ADJ_PER_HEAD: tl.constexpr, HAS_KMEAN: tl.constexpr, HAS_BIAS: tl.constexpr,
                         CAUSAL: tl.constexpr):
    """One query row: merge its compressed splits and its fp16 windows, write its output row.

    o_ptr/ml_ptr: split partials [B*H*NQB, num_splits, BLOCK_M, D] and [.., 2, BLOCK_M] (num_splits may be 0;
    BLOCK_S >= num_splits). q_ptr: fp32/fp16/bf16 [B*H, G*TQ, D], rows g*TQ + t, in the original (unrotated) space,
    unscaled; qscale = softmax scale * log2 e. sk/sv, rk/rv: [B, H, n, D] fp16/bf16 sink and recent windows
    with contiguous rows; batch and head strides (in elements) s_sb, s_sh for the sink pair, r_sb, r_sh for the
    recent pair (the recent window may be a view into a larger buffer, see TurboQuantLayer). adj_ptr: fp32
    [D, D] (or [H, D, D] with ADJ_PER_HEAD), the V inverse map acting on row vectors (when HAS_ADJ). kmean_ptr:
    fp32 [B*H, D], the key mean subtracted before compression (when HAS_KMEAN): the split scores lack q·k_mean,
    added here to the compressed part's max. bias_ptr: fp32 [B or 1, TQ, tk] additive mask (strides bias_sb,
    bias_st; last stride 1; tk = n_sink + n_comp + n_recent). out_ptr: [B, TQ, H*G, D] in its dtype.
    """
    pid = tl.program_id(0)  # (bh * NQB + qb) * BLOCK_M + r
    r = pid % BLOCK_M
    grp = pid // BLOCK_M
    nqb = tl.cdiv(TQ, TQB)
    bh = grp // nqb
    g = r // TQB
    t = (grp % nqb) * TQB + r % TQB
    if (g < G) & (t < TQ):
        b = bh // H
        h = bh % H
        rd = tl.arange(0, D)
        tk = n_sink + n_comp + n_recent
        qpos = tk - TQ + t

        # compressed part: all splits' max and sum at once (log2 units)
        rs = tl.arange(0, BLOCK_S)
        smask = rs < num_splits
        srow = grp.to(tl.int64) * num_splits + rs
        m_s = tl.load(ml_ptr + srow * 2 * BLOCK_M + r, mask=smask, other=float("-inf"))
        l_s = tl.load(ml_ptr + srow * 2 * BLOCK_M + BLOCK_M + r, mask=smask, other=0.0)
        m_c = tl.max(m_s, axis=0)
        w_s = tl.exp2(m_s - tl.where(m_c == float("-inf"), 0.0, m_c))
        l_c = tl.sum(l_s * w_s, axis=0)

        q = tl.load(q_ptr + (bh.to(tl.int64) * G * TQ + g * TQ + t) * D + rd).to(tl.float32) * qscale
        if HAS_KMEAN:  # compressed keys are stored centered: their scores are short of q·k_mean (log2 units)
            m_c = m_c + tl.sum(q * tl.load(kmean_ptr + bh.to(tl.int64) * D + rd), axis=0)

        # fp16 windows: sinks (absolute positions 0..), then recent tokens (after the compressed ones)
        m_w = tl.full([], float("-inf"), tl.float32)
        l_w = tl.zeros([], tl.float32)
        acc_w = tl.zeros([D], tl.float32)
        bias_at = bias_ptr + b * bias_sb + t * bias_st
        win = b.to(tl.int64) * s_sb + h.to(tl.int64) * s_sh
        for t0 in range(0, n_sink, BLOCK_W):
            m_w, l_w, acc_w = _window_tile(q, sk_ptr + win, sv_ptr + win, n_sink, t0, 0, qpos, bias_at, HAS_BIAS,
                                           CAUSAL, m_w, l_w, acc_w, D, BLOCK_W)
        win = b.to(tl.int64) * r_sb + h.to(tl.int64) * r_sh
        for t0 in range(0, n_recent, BLOCK_W):
            m_w, l_w, acc_w = _window_tile(q, rk_ptr + win, rv_ptr + win, n_recent, t0, n_sink + n_comp, qpos,
                                           bias_at + n_sink + n_comp, HAS_BIAS, CAUSAL, m_w, l_w, acc_w, D,
                                           BLOCK_W)

        # merge by log-sum-exp; a row that sees no key at all gets zeros
        m = tl.maximum(m_c, m_w)
        m_use = tl.where(m == float("-inf"), 0.0, m)
        wc = tl.exp2(m_c - m_use)
        ww = tl.exp2(m_w - m_use)
        total = l_c * wc + l_w * ww
        inv = tl.where(total > 0, 1.0 / tl.where(total > 0, total, 1.0), 0.0)
        out = acc_w * (ww * inv)
        w_s = w_s * (wc * inv)
        o_row = o_ptr + (srow[:, None] * BLOCK_M + r) * D
        if HAS_ADJ:  # the merged compressed row through the inverse map, BLOCK_D input dims at a time
            rk = tl.arange(0, BLOCK_D)
            if ADJ_PER_HEAD:
                adj_ptr += h.to(tl.int64) * D * D
            for kb in tl.static_range(D // BLOCK_D):
                part = tl.sum(tl.load(o_row + kb * BLOCK_D + rk[None, :], mask=smask[:, None], other=0.0)
                              * w_s[:, None], axis=0)
                adj = tl.load(adj_ptr + (kb * BLOCK_D + rk[:, None]) * D + rd[None, :])
                out += tl.sum(part[:, None] * adj, axis=0)
        else:
            out += tl.sum(tl.load(o_row + rd[None, :], mask=smask[:, None], other=0.0) * w_s[:, None], axis=0)
        dst = out_ptr + ((b.to(tl.int64) * TQ + t) * (H * G) + h * G + g) * D + rd
        tl.store(dst, out.to(out_ptr.dtype.element_ty))
