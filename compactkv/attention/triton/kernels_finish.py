"""Triton kernel that finishes a decode attention call in one launch.

One program per (batch row, KV head, query block) takes the split partials of the compressed part (unnormalised
accumulators in the V segment space, running max and sum in log2 units, as written by the decode kernels), attends
the same query rows over the fp16 sink and recent windows (online softmax over tiles, causal and additive masks),
maps the merged compressed accumulator back through the V codec's inverse map, merges the two parts by their
log-sum-exp and writes the normalised rows straight into the [B, Tq, Hq, D] output in the query's dtype.

It replaces, per layer and decode step, the split-merge kernel plus about twenty small torch operations (window
concatenation, window scores, softmax, log-sum-exp, the inverse map matmul, the merge and the output transpose),
which is host time the eager decode step was spending (docs/performance.md).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # (a global a kernel reads must be a constexpr)


@triton.jit
def _window_tile(q, k_base, v_base, n, t0, key_abs0, qpos, bias_row, HAS_BIAS: tl.constexpr, CAUSAL: tl.constexpr,
                 m_w, l_w, acc_w, D: tl.constexpr, BLOCK_W: tl.constexpr):
    """Online-softmax step over window keys t0 .. t0 + BLOCK_W of one fp16 window ([n, D] rows at k_base/v_base).

    key_abs0: absolute position of the window's key 0; qpos [BLOCK_M]: absolute position of each query row (for
    causal); bias_row [BLOCK_M] pointers to each row's bias at the window's key 0 (additive, natural-log units).
    Scores are in log2 units (q is pre-scaled by softmax scale * log2 e).
    """
    rw = t0 + tl.arange(0, BLOCK_W)
    rd = tl.arange(0, D)
    valid = rw < n
    k = tl.load(k_base + rw[:, None] * D + rd[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
    v = tl.load(v_base + rw[:, None] * D + rd[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision="ieee")
    keep = valid[None, :]
    if CAUSAL:
        keep = keep & ((key_abs0 + rw)[None, :] <= qpos[:, None])
    if HAS_BIAS:
        s = s + tl.load(bias_row[:, None] + rw[None, :], mask=keep, other=0.0) * LOG2E
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_w, tl.max(s, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_w - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_w = l_w * alpha + tl.sum(p, axis=1)
    acc_w = acc_w * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    return m_new, l_w, acc_w


@triton.jit
def decode_finish_kernel(o_ptr, ml_ptr, num_splits, q_ptr, qscale,
                         sk_ptr, sv_ptr, n_sink, rk_ptr, rv_ptr, n_recent, n_comp,
                         adj_ptr, bias_ptr, bias_sb, bias_st, out_ptr,
                         H, G, TQ, TQB, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr,
                         BLOCK_D: tl.constexpr, HAS_ADJ: tl.constexpr, HAS_BIAS: tl.constexpr,
                         CAUSAL: tl.constexpr):
    """One (b, kv head, query block): merge the compressed splits and the fp16 windows, write the output rows.

    o_ptr/ml_ptr: split partials [B*H*NQB, num_splits, BLOCK_M, D] and [.., 2, BLOCK_M] (num_splits may be 0).
    q_ptr: fp32 [B*H, G*TQ, D], rows g*TQ + t, in the original (unrotated) space, unscaled; qscale = softmax scale
    * log2 e. sk/sv, rk/rv: contiguous [B, H, n, D] fp16/bf16 sink and recent windows. adj_ptr: fp32 [D, D], the V
    inverse map acting on row vectors (when HAS_ADJ). bias_ptr: fp32 [B or 1, TQ, tk] additive mask (strides
    bias_sb, bias_st; last stride 1; tk = n_sink + n_comp + n_recent). out_ptr: [B, TQ, H*G, D] in its dtype.
    """
    pid = tl.program_id(0)  # bh * NQB + qb
    nqb = tl.cdiv(TQ, TQB)
    bh = pid // nqb
    qb = pid % nqb
    b = bh // H
    h = bh % H
    rm = tl.arange(0, BLOCK_M)
    rd = tl.arange(0, D)
    g = rm // TQB
    t = qb * TQB + rm % TQB
    row_ok = (g < G) & (t < TQ)
    tk = n_sink + n_comp + n_recent
    qpos = tk - TQ + t

    # compressed part: max and sum over the splits (log2 units)
    ml_base = ml_ptr + pid.to(tl.int64) * num_splits * 2 * BLOCK_M
    m_c = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(num_splits):
        m_c = tl.maximum(m_c, tl.load(ml_base + s * 2 * BLOCK_M + rm))
    m_cu = tl.where(m_c == float("-inf"), 0.0, m_c)
    l_c = tl.zeros([BLOCK_M], tl.float32)
    for s in range(num_splits):
        w = tl.exp2(tl.load(ml_base + s * 2 * BLOCK_M + rm) - m_cu)
        l_c += tl.load(ml_base + s * 2 * BLOCK_M + BLOCK_M + rm) * w

    # fp16 windows: sinks (absolute positions 0..) then recent tokens (after the compressed ones)
    q_rows = bh.to(tl.int64) * G * TQ + g * TQ + t
    q = tl.load(q_ptr + q_rows[:, None] * D + rd[None, :], mask=row_ok[:, None], other=0.0) * qscale
    m_w = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_w = tl.zeros([BLOCK_M], tl.float32)
    acc_w = tl.zeros([BLOCK_M, D], tl.float32)
    bias_row = bias_ptr + b * bias_sb + tl.where(row_ok, t, 0) * bias_st
    win = bh.to(tl.int64) * n_sink * D
    for t0 in range(0, n_sink, BLOCK_W):
        m_w, l_w, acc_w = _window_tile(q, sk_ptr + win, sv_ptr + win, n_sink, t0, 0, qpos, bias_row, HAS_BIAS,
                                       CAUSAL, m_w, l_w, acc_w, D, BLOCK_W)
    win = bh.to(tl.int64) * n_recent * D
    for t0 in range(0, n_recent, BLOCK_W):
        m_w, l_w, acc_w = _window_tile(q, rk_ptr + win, rv_ptr + win, n_recent, t0, n_sink + n_comp, qpos,
                                       bias_row + n_sink + n_comp, HAS_BIAS, CAUSAL, m_w, l_w, acc_w, D, BLOCK_W)

    # merge by log-sum-exp; a row that sees no key at all gets zeros
    m = tl.maximum(m_c, m_w)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    wc = tl.exp2(m_c - m_use)
    ww = tl.exp2(m_w - m_use)
    total = l_c * wc + l_w * ww
    inv = tl.where(total > 0, 1.0 / tl.where(total > 0, total, 1.0), 0.0)
    acc = acc_w * (ww * inv)[:, None]
    scale_c = wc * inv
    o_base = o_ptr + pid.to(tl.int64) * num_splits * BLOCK_M * D
    if HAS_ADJ:  # accumulate the compressed rows BLOCK_D input dims at a time through the inverse map
        rk = tl.arange(0, BLOCK_D)
        for kb in tl.static_range(D // BLOCK_D):
            part = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            for s in range(num_splits):
                w = tl.exp2(tl.load(ml_base + s * 2 * BLOCK_M + rm) - m_cu) * scale_c
                o = tl.load(o_base + (s * BLOCK_M + rm[:, None]) * D + kb * BLOCK_D + rk[None, :])
                part += o * w[:, None]
            adj = tl.load(adj_ptr + (kb * BLOCK_D + rk[:, None]) * D + rd[None, :])
            acc += tl.dot(part, adj, input_precision="ieee")
    else:
        for s in range(num_splits):
            w = tl.exp2(tl.load(ml_base + s * 2 * BLOCK_M + rm) - m_cu) * scale_c
            acc += tl.load(o_base + (s * BLOCK_M + rm[:, None]) * D + rd[None, :]) * w[:, None]

    out_rows = (b.to(tl.int64) * TQ + t) * (H * G) + h * G + g
    dst = out_ptr + out_rows[:, None] * D + rd[None, :]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
