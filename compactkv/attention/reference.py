"""Attention computed on a TurboQuantLayer's stored data, in pure torch (CPU, and GPU until kernels take over).

The query is mapped once per codec segment (rotated, or rotated then QJL-projected); each stored block is scored
against codebook values times per-row scales, softmax runs online over blocks in float32, values accumulate in
each V segment's own (rotated) space, and the inverse maps run once per output row at the end. GQA shares each
KV head across its query group without repeating K/V. Work and temporary memory are per block, never the whole
history at once.
"""

from __future__ import annotations

import torch

from ..cache.layer import TurboQuantLayer


def _blocks(layer: TurboQuantLayer):
    """Yield (kind, keys, values) in token order: ("dense", [B,H,n,D], [B,H,n,D]) or ("rows", uint8, uint8)."""
    if layer.sink_k.shape[-2]:
        yield "dense", layer.sink_k, layer.sink_v
    for ck, cv in zip(layer.chunks_k, layer.chunks_v):
        yield "rows", ck, cv
    if layer.recent_k.shape[-2]:
        yield "dense", layer.recent_k, layer.recent_v


class _Mask:
    """Per-block additive float32 bias [B or 1, 1, G*Tq, n] from a transformers mask (bool keep / float additive /
    None = causal), built one key block at a time so no [Tq, history] float tensor is ever materialized."""

    def __init__(self, mask: torch.Tensor | None, tq: int, tk: int, groups: int, device):
        self.tq, self.tk, self.groups, self.device = tq, tk, groups, device
        if mask is not None:
            if mask.shape[-1] < tk:
                raise ValueError(f"attention mask covers {mask.shape[-1]} keys but the cache holds {tk}")
            mask = mask[..., -tq:, mask.shape[-1] - tk:]
        self.mask = mask

    def block(self, start: int, n: int) -> torch.Tensor | None:
        tq, g = self.tq, self.groups
        if self.mask is None:
            if tq == 1:
                return None
            qpos = torch.arange(tq, device=self.device) + (self.tk - tq)
            keep = (torch.arange(start, start + n, device=self.device)[None, :] <= qpos[:, None])[None, None]
        else:
            keep = self.mask[..., start:start + n]
        if keep.dtype == torch.bool:
            bias = torch.zeros(keep.shape, dtype=torch.float32, device=self.device).masked_fill(~keep, float("-inf"))
        else:
            bias = keep.float()
        bias = bias.expand(bias.shape[0], 1, tq, n)
        return bias.unsqueeze(2).expand(-1, -1, g, -1, -1).reshape(bias.shape[0], 1, g * tq, n)


def compressed_attention(layer: TurboQuantLayer, query: torch.Tensor, mask: torch.Tensor | None,
                         scaling: float, softcap: float | None = None) -> torch.Tensor:
    """query: [B, Hq, Tq, D]; attends to everything `layer` stores. Returns [B, Tq, Hq, D] in query's dtype."""
    return _attend(query, list(_blocks(layer)), layer.stored_length(), layer.k_codec, layer.v_codec,
                   layer.k_mean, layer.n_compressed > 0, mask, scaling, softcap, getattr(layer, "k_scale", None))


def dense_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                    scaling: float, softcap: float | None = None) -> torch.Tensor:
    """The same computation over plain K/V [B, Hkv, T, D] (used for models SDPA cannot serve, e.g. softcap)."""
    return _attend(query, [("dense", key, value)], key.shape[-2], None, None, None, False, mask, scaling, softcap)


def _attend(query, blocks, tk, kc, vc, k_mean, has_rows, mask, scaling, softcap, k_scale=None) -> torch.Tensor:
    b, hq, tq, d = query.shape
    hkv = blocks[0][1].shape[1] if blocks else 1
    if hq % hkv:
        raise ValueError(f"{hq} query heads cannot share {hkv} KV heads")
    g = hq // hkv
    q = query.float().reshape(b, hkv, g * tq, d)  # query head = kv_head * g + group member
    bias = _Mask(mask, tq, tk, g, query.device)
    # Keys were stored scaled per channel (k * k_scale): the compressed part scores the query divided by it.
    qc = q / k_scale[None, :, None, :] if has_rows and k_scale is not None else q
    q_parts = [p * scaling for p in kc.query_parts(qc)] if has_rows else []
    # Keys were stored as k - mean: add back q·mean, the same for every compressed key of a query row.
    q_mean = (q * scaling) @ k_mean.transpose(-1, -2) if has_rows and k_mean is not None else None
    m = torch.full((b, hkv, g * tq, 1), float("-inf"), device=query.device)
    l = torch.zeros_like(m)
    dense_acc = torch.zeros(b, hkv, g * tq, d, device=query.device)
    seg_acc = [torch.zeros(b, hkv, g * tq, s.width, device=query.device) for s in vc.segments()] if has_rows else []
    pos = 0
    for kind, kb, vb in blocks:
        n = kb.shape[-2]
        if kind == "dense":
            s = (q * scaling) @ kb.float().transpose(-1, -2)
        else:
            s = None
            for qp, (vals, scale) in zip(q_parts, kc.key_parts(kb)):
                part = qp @ vals.transpose(-1, -2)
                part = part * scale.unsqueeze(-2) if scale is not None else part
                s = part if s is None else s + part
            if q_mean is not None:
                s = s + q_mean
        if softcap:
            s = torch.tanh(s / softcap) * softcap
        blk = bias.block(pos, n)
        if blk is not None:
            s = s + blk
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        alpha = torch.exp(m - m_safe)
        p = torch.exp(s - m_safe)
        l = l * alpha + p.sum(-1, keepdim=True)
        dense_acc = dense_acc * alpha
        seg_acc = [a * alpha for a in seg_acc]
        if kind == "dense":
            dense_acc = dense_acc + p @ vb.float()
        else:
            for i, (vals, scale) in enumerate(vc.key_parts(vb)):
                pw = p * scale.unsqueeze(-2) if scale is not None else p
                seg_acc[i] = seg_acc[i] + pw @ vals
        m = m_new
        pos += n
        s = p = blk = part = pw = None  # free this block's [G*Tq, n] temporaries before the next block makes its own
    out = dense_acc
    if has_rows:
        out = out + vc.combine(seg_acc)
    out = out / torch.where(l > 0, l, torch.ones_like(l))
    return out.reshape(b, hq, tq, d).transpose(1, 2).to(query.dtype)


def packed_dense_float64(k_codec, v_codec, rows_k: torch.Tensor, rows_v: torch.Tensor, query: torch.Tensor,
                         scaling: float, lengths: list[int], tq: int,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 reference for kernels over packed rows: decode everything, then plain softmax attention per batch
    row over its own length, causal over the last `tq` positions. rows: [B, H, T, row]; query: [B, H, M, D]
    with M = G * tq rows per KV head (query rows cycle through the tq positions); bias: None, or [B, T] added to
    every query row's scores of that batch row (natural-log units, -inf masks a token). Returns [B, H, M, D] on
    CPU."""
    k, v = k_codec.decode(rows_k.cpu()).double(), v_codec.decode(rows_v.cpu()).double()
    q = query.cpu().double()
    outs = []
    for b, n in enumerate(lengths):
        s = (q[b] * scaling) @ k[b, :, :n].transpose(-1, -2)
        if bias is not None:
            s = s + bias[b, :n].cpu().double()
        t = torch.arange(q.shape[-2]) % tq
        s = s.masked_fill(~(torch.arange(n)[None, :] <= (n - tq + t)[:, None]), float("-inf"))
        outs.append(torch.softmax(s, -1) @ v[b, :, :n])
    return torch.stack(outs)
