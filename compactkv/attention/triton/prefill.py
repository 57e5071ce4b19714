"""Prefill (many query tokens) over the compressed cache: expand the packed rows once to fp16, then one SDPA call.

With many query rows per key, attention is compute-bound and the decode kernel (at most 32 query rows per
program) would re-read every packed row once per block of query tokens. Here each packed row is expanded once by
`dequant_packed` into its stored space (rotated; keys centered and scaled), the fp16 sink/recent windows are mapped
into the same spaces and the query into the keys' dual space (see prefill_attention), and torch SDPA (flash when
no explicit mask is needed; a chunk after compressed history uses torch's bottom-right causal bias, also flash with
GQA) attends the mapped query over all of it; the inverse V map runs once on the output. Same function as the
reference: scores q·x̂, values x̂, with fp16 operands.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .decode import codec_maps, dequant_packed, packed_kind, query_key_map

PREFILL_MIN_TQ = 16  # query tokens from which a call goes through here instead of the split-K decode kernel


def _rotate(x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """x @ m in fp16 (fp32 accumulation): the operands SDPA sees are fp16 anyway."""
    return x.half() if m is None else x.half() @ m.half()


def prefill_attention(layer, query: torch.Tensor, mask: torch.Tensor | None, scaling: float, source) -> torch.Tensor:
    """query: [B, Hq, Tq, D] -> [B, Tq, Hq, D] in query's dtype. source: backend._packed_source(layer, ...)."""
    b, hq, tq, d = query.shape
    hkv = layer.sink_k.shape[1]
    g = hq // hkv
    dev = query.device
    kc, vc = layer.k_codec, layer.v_codec
    fwd_k, _ = codec_maps(kc, dev)
    fwd_v, adj_v = codec_maps(vc, dev)

    def per_query_head(m: torch.Tensor | None) -> torch.Tensor | None:  # [H, D, D] maps (fractional kinds)
        return m.repeat_interleave(g, dim=0) if m is not None and m.dim() == 3 and g > 1 else m

    n_comp = layer.n_compressed
    k_mean = getattr(layer, "k_mean", None)
    k_scale = getattr(layer, "k_scale", None)
    # Scores are taken in the space the keys are stored in: compressed keys are rows of (k - mean) * k_scale
    # rotated by fwd_k, so they are used as expanded, the fp16 windows are mapped into that space (a few
    # tokens) and the query by (q / k_scale) @ fwd_k, the key scale folded into the map (one fp16 matmul of the
    # whole prompt's queries). Every score is then q·k - q·mean: the same offset for all keys of a query row,
    # which the softmax removes.
    q = _rotate(query, per_query_head(query_key_map(kc, k_scale, dev)))

    def to_key_space(x: torch.Tensor) -> torch.Tensor:
        if k_mean is None and k_scale is None:
            return _rotate(x, fwd_k)
        x = x.float() - k_mean.float() if k_mean is not None else x.float()
        return _rotate(x * k_scale.float()[None, :, None, :] if k_scale is not None else x, fwd_k)

    keys = [to_key_space(layer.sink_k)]
    values = [_rotate(layer.sink_v, fwd_v)]
    if n_comp:
        k_tab, v_tab, _, chunk, _, _alive = source
        keys.append(dequant_packed(k_tab, packed_kind(kc), b, hkv, n_comp, chunk))
        values.append(dequant_packed(v_tab, packed_kind(vc), b, hkv, n_comp, chunk))
    keys.append(to_key_space(layer.recent_k))
    values.append(_rotate(layer.recent_v, fwd_v))
    k, v = torch.cat(keys, dim=-2), torch.cat(values, dim=-2)
    tk = k.shape[-2]
    if mask is None and tq == tk:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=tq > 1, scale=scaling, enable_gqa=g > 1)
    elif mask is None:  # queries are the last tq tokens: causal aligned bottom-right, every row sees a key
        # (a CausalBias: flash attention with GQA where it applies, no [tq, tk] mask in memory)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(tq, tk), scale=scaling,
                                             enable_gqa=g > 1)
    else:
        attn = mask[..., -tq:, -tk:]
        if attn.dtype != torch.bool:
            attn = attn.to(q.dtype)
        if g > 1:  # the memory-efficient kernel (masks) takes no GQA: expand the KV heads
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn, scale=scaling)
        seen = attn.any(-1) if attn.dtype == torch.bool else (attn > float("-inf")).any(-1)
        out = torch.where(seen.unsqueeze(-1), torch.nan_to_num(out), 0.0)  # no visible key: 0, as the reference
    out = out @ per_query_head(adj_v).half() if adj_v is not None else out
    return out.transpose(1, 2).to(query.dtype)
