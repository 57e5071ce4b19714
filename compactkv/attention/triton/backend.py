"""Attention over a layer's stored data with the Triton kernels (same contract as reference.compressed_attention).

Decode (fewer than PREFILL_MIN_TQ query tokens): the query is mapped into the K codec's space (`map_query`, or
in the table kernel's prologue), the compressed rows go through the table kernel where it reads them (one token,
turbo4/turbo3/turbo2 at head_dim 128 or turbo4 at 64; an additive mask, e.g. a padded batch's, added per token
since session 36: `gluon.launch_rows`) or else the split kernels (`launch_splits`), then one finishing launch
(`finish_decode`) attends the fp16 sink and recent windows, merges them with the compressed splits by log-sum-exp,
applies the inverse V map and writes the output. Prefill:
prefill.py (rows expanded once to fp16, one SDPA call). Works for TurboQuantLayer (chunk list) and for layers
exposing `packed_rows()` (the preallocated StaticTurboQuantLayer). One-token steps over a static layer's planar
storage (`planes()`: turbo2/turbo4, turbo3 at head_dim 128) run the table or Gluon kernel (gluon.py) instead of the
split kernel; where nothing but the compressed tokens and fp16 sinks is attended (no recent window or mask) the
table kernel finishes the step itself (`gluon.attend_planes`: one launch). Per-layer derived tensors (chunk tables,
the query map, the finishing kernel's counters) are kept in the layer's `backend_state` dict, which TurboQuantLayer
empties whenever it rebuilds its storage (a static layer's entries never go stale: fixed codecs, counters zero
between launches).
"""

from __future__ import annotations

import functools

import torch

from ...core.switches import env_switch
from .decode import (LOG2E, chunk_table, codec_maps, finish_decode, launch_splits, map_query, packed_kind,
                     query_key_map, unsupported)
from .gluon import (attend_planes, fused_unsupported, gluon_device_error, launch_gluon, launch_rows, lut_unsupported,
                    planes_unsupported, rows_unsupported)
from .prefill import PREFILL_MIN_TQ, prefill_attention

SUPPORTS_KEY_SCALE = True  # TurboQuantLayer.k_scale: the compressed part scores q / k_scale (decode and prefill)
BLOCK_N = 64  # chunk lengths must be multiples of this (every kernel tile size divides it)
ONE_CHUNK = 1 << 30  # chunk length meaning "all rows of a batch row are in one chunk"
# one-token steps over planes: the table kernel's finishing program merges the fp16 sinks and key mean too (session
# 17); COMPACTKV_FUSE_SINKS=0: those steps take the table kernel + decode.finish_decode (two launches), for A/B runs
FUSE_SINKS = env_switch("FUSE_SINKS", default=True)
ROW_TABLE = True  # one-token steps over a chunk-list layer's rows take the table kernel where it reads them
# (`gluon.launch_rows`); False: the row-format split kernels (decode_fast_kernel / decode_split_kernel), for A/B runs


def why_not_triton(layer, query: torch.Tensor, mask: torch.Tensor | None, softcap: float | None) -> str | None:
    """Why this call must use the torch reference, or None when the kernels can run it."""
    if not query.is_cuda:
        return "the query is not on a CUDA device"
    if softcap:
        return "attention logit softcapping runs on the torch reference"
    if mask is not None and mask.dim() == 4 and mask.shape[1] != 1:
        return "per-head attention masks run on the torch reference"
    for codec in (layer.k_codec, layer.v_codec):
        why = unsupported(codec)
        if why:
            return why
    return None


def _packed_source(layer, b: int, device):
    """(k_table, v_table, lengths int32 [B], chunk tokens, max_len hint, (K chunks, V chunks, whether they all start
    at even addresses): the tensors the tables point into).

    The tables hold raw addresses: the caller keeps the returned tensors alive until the kernel is launched. For a
    chunk-list layer the result is kept in `layer.backend_state` (with the chunk tensors themselves in its key) and
    reused while its chunks are the same objects, so a decode step between two compressions builds no table.
    """
    packed_rows = getattr(layer, "packed_rows", None)
    if packed_rows is not None:  # preallocated buffers: tables cached by address, so graph capture sees no copy
        k_rows, v_rows, lengths, max_len = packed_rows()
        return (_fixed_table(k_rows), _fixed_table(v_rows), lengths, ONE_CHUNK, max_len,
                ([k_rows], [v_rows], _even(k_rows, v_rows)))
    ck, cv, n = layer.chunks_k, layer.chunks_v, layer.n_compressed
    # The layer only appends chunks or replaces its last one, and empties backend_state whenever it rebuilds the
    # list otherwise (crop, trim, batch maps): the count and the first and last chunks identify the list, in
    # O(1) per call (comparing every chunk cost ~60 identity checks per call at 32K tokens). The cached entry
    # holds the chunk tensors, so none of them can be freed and its address reused while it is cached.
    key = (b, n, device, len(ck), len(cv), tuple(ck[:1] + ck[-1:]), tuple(cv[:1] + cv[-1:]))
    state = getattr(layer, "backend_state", None)
    cached = state.get("triton_source") if state is not None else None
    if cached is not None and _same(cached[0], key):
        return cached[1]
    chunk = layer.chunk_tokens if len(ck) > 1 else ONE_CHUNK
    regular = chunk % BLOCK_N == 0 and all(c.shape[-2] == chunk for c in ck[:-1])
    if not regular:
        ck, cv, chunk = [torch.cat(ck, dim=-2)], [torch.cat(cv, dim=-2)], ONE_CHUNK
    ck = [c if c.stride(-1) == 1 and c.stride(-2) == c.shape[-1] else c.contiguous() for c in ck]
    cv = [c if c.stride(-1) == 1 and c.stride(-2) == c.shape[-1] else c.contiguous() for c in cv]
    lengths = torch.full((b,), n, dtype=torch.int32, device=device)
    source = chunk_table(ck), chunk_table(cv), lengths, chunk, n, (ck, cv, _even(*ck, *cv))
    # kept only when the tables point into the layer's own chunks: a concatenated or contiguous copy of the
    # history is rebuilt per call rather than held beside the cache (it would double the compressed bytes)
    if state is not None and all(x is y for x, y in zip(ck + cv, layer.chunks_k + layer.chunks_v)) \
            and len(ck) == len(layer.chunks_k):
        state["triton_source"] = (key, source)
    return source


def _even(*chunks: torch.Tensor) -> bool:
    """True when every chunk starts at an even address (the row reader's alignment rule, `gluon.launch_rows`)."""
    return all(c.data_ptr() % 2 == 0 for c in chunks)


def _same(a: tuple, b: tuple) -> bool:
    """Cache keys equal, comparing tensors by identity (a tensor held in the key cannot be freed and replaced)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, tuple):
            if not (isinstance(y, tuple) and len(x) == len(y) and all(u is w for u, w in zip(x, y))):
                return False
        elif isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if x is not y:
                return False
        elif x != y:
            return False
    return True


def _query_maps(layer, scaling: float, device) -> torch.Tensor:
    """w: `q @ w` is the query in the K segment space, divided by the key scale (keys are stored as
    (k - mean) * k_scale; `query_key_map`) and multiplied by scaling * log2 e; fp32 [D, D] or [H, D, D]. The
    mean's share of the scores (q·k_mean, the same for every compressed key of a row) is added by the finishing
    kernel. Kept in `layer.backend_state` while k_scale, scaling and the outlier channels are unchanged."""
    k_scale = getattr(layer, "k_scale", None)
    key = (scaling, device, k_scale, layer.k_codec.outliers)
    state = getattr(layer, "backend_state", None)
    cached = state.get("triton_maps") if state is not None else None
    if cached is not None and _same(cached[0], key):
        return cached[1]
    w = query_key_map(layer.k_codec, k_scale, device)
    w = (w if w is not None else torch.eye(layer.k_codec.head_dim, device=device)) * (scaling * LOG2E)
    if state is not None:
        state["triton_maps"] = (key, w)
    return w


def _counters(layer, n: int, device) -> torch.Tensor:
    """The layer's int32 [n] zeros for the finishing table kernel's group counters (zero again after each launch;
    per layer, so layers never share them), kept in `layer.backend_state`."""
    state = layer.backend_state
    c = state.get("lut_counters")
    if c is None or c.numel() != n or c.device != torch.device(device):
        c = state["lut_counters"] = torch.zeros(n, dtype=torch.int32, device=device)
    return c


def _fixed_table(rows: torch.Tensor) -> torch.Tensor:
    return _table_at(rows.data_ptr(), rows.stride(0), rows.stride(1), rows.shape[-1], rows.stride(-2), rows.device)


@functools.lru_cache(maxsize=256)
def _table_at(ptr: int, stride_b: int, stride_h: int, row_bytes: int, stride_t: int, device) -> torch.Tensor:
    if stride_t != row_bytes:
        raise ValueError("static row buffers must hold contiguous rows")
    return torch.tensor([[ptr, stride_b, stride_h]], dtype=torch.int64).to(device)


def _gluon_planes(layer, pk, pv, g: int, tq: int, bias) -> tuple | None:
    """The planar static layer's (k_codes, k_norms, v_codes, v_norms, lengths, max_len) when `launch_gluon` (the
    table or the Gluon kernel) takes this call (one query token, no additive mask, <= 8 query rows per KV head),
    else None (other calls over planar storage read row-format copies through `packed_rows`)."""
    planes_of = getattr(layer, "planes", None)
    planes = planes_of() if planes_of is not None else None
    if planes is None or bias is not None:
        return None
    if planes_unsupported(pk, pv, g * tq, tq) is not None:
        return None
    if gluon_device_error(planes[0].device) is not None:
        return None
    return planes


def _rows_table(pk, pv, g: int, tq: int, chunk: int, alive) -> bool:
    """True when `gluon.launch_rows` (the table kernel over codec rows) takes this call: ROW_TABLE, a kind pair,
    head_dim, query rows and chunk length it reads (`rows_unsupported`), a device it runs on, and chunks at even
    addresses (the row reader's alignment rule, checked once per chunk table in `_packed_source`)."""
    ck, _, even = alive
    return (ROW_TABLE and even and rows_unsupported(pk, pv, g * tq, tq, chunk) is None
            and gluon_device_error(ck[0].device) is None)


def _mask_bias(mask: torch.Tensor | None, b: int, tq: int, tk: int) -> torch.Tensor | None:
    """float32 additive bias [B or 1, Tq, Tk] from a transformers mask (bool keep / float additive / None)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, float("-inf"))
    else:
        bias = mask.float()
    bias = bias[..., -tq:, -tk:]
    if bias.shape[-1] != tk:
        raise ValueError(f"attention mask covers {bias.shape[-1]} keys but the cache holds {tk}")
    return bias.reshape(bias.shape[0], *bias.shape[-2:]).expand(-1, tq, -1)


def triton_attention(layer, query: torch.Tensor, mask: torch.Tensor | None, scaling: float,
                     softcap: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """query: [B, Hq, Tq, D]; attends to everything `layer` stores. Returns [B, Tq, Hq, D] in query's dtype."""
    why = why_not_triton(layer, query, mask, softcap)
    if why:
        raise ValueError(why)
    b, hq, tq, d = query.shape
    hkv = layer.sink_k.shape[1]
    if hq % hkv:
        raise ValueError(f"{hq} query heads cannot share {hkv} KV heads")
    g = hq // hkv
    if tq >= PREFILL_MIN_TQ:  # static layers too: their rows all hold the host's count (a prefill is never captured)
        source = _packed_source(layer, b, query.device) if layer.n_compressed else None
        return prefill_attention(layer, query, mask, scaling, source)
    # the query in its own dtype: the map and the finishing launch read it as fp32 (an fp32 copy was one more launch)
    q = query if query.dtype in (torch.float16, torch.bfloat16, torch.float32) else query.float()
    q = q.reshape(b, hkv, g * tq, d)
    n_sink, n_comp, n_recent = layer.sink_k.shape[-2], layer.n_compressed, layer.recent_k.shape[-2]
    k_mean = getattr(layer, "k_mean", None)
    bias = _mask_bias(mask, b, tq, n_sink + n_comp + n_recent)
    causal = mask is None and tq > 1
    # a static layer's recorded padding (0 / -inf a slot, the same in log2 and natural units): read from its fixed
    # buffer by the kernels up to each row's device-side length, so a captured step follows the padding it holds
    pad = getattr(layer, "pad_bias", None) if mask is None and tq == 1 else None
    kc, vc = layer.k_codec, layer.v_codec
    pk, pv = packed_kind(kc), packed_kind(vc)
    parts = adj = None
    if n_comp:
        _, adj = codec_maps(vc, query.device)
        w = _query_maps(layer, scaling, query.device)
        bias_c = None
        if bias is not None:
            bias_c = (bias[..., n_sink:n_sink + n_comp] * LOG2E).contiguous().expand(b, -1, -1)
        elif pad is not None:  # the compressed tokens' slots: [B, >= max_cache_len] (the buffer's sink columns)
            bias_c = pad[:, None, n_sink:]
        planes = _gluon_planes(layer, pk, pv, g, tq, bias)  # (a recorded padding comes without a mask: bias None)
        if planes is not None and pad is not None and lut_unsupported(pk, pv) is not None:
            # the one-warp Gluon kernel takes no bias: row-format copies of the planes, made for the host's count
            if torch.cuda.is_current_stream_capturing():
                raise ValueError(f"a padded batch over planar {kc.kind}/{vc.kind} at head_dim {d} runs eager steps "
                                 f"only (no kernel reads its planes with a bias; the row copies a step makes are "
                                 f"sized by the host's count): decode without capturing, or use turbo4 (head_dim "
                                 f"64 / 128), turbo3 or turbo2 (head_dim 128), whose table kernel takes the padding")
            planes = None
        if planes is not None:  # planar static storage: the table or Gluon kernel reads the code planes directly
            kcodes, knorms, vcodes, vnorms, lengths, max_len = planes
            if n_recent == 0 and bias is None and pad is None and (FUSE_SINKS or (n_sink == 0 and k_mean is None)) \
                    and fused_unsupported(pk, pv, g * tq, adj) is None:
                # nothing to merge but the compressed splits and the fp16 sinks: the table kernel finishes the step
                return attend_planes(q, w, adj, kcodes, knorms, vcodes, vnorms, lengths, pk, pv, max_len=max_len,
                                     counters=_counters(layer, b * hkv, q.device), out_dtype=query.dtype,
                                     num_splits=num_splits, sinks=(layer.sink_k, layer.sink_v) if n_sink else None,
                                     k_mean=k_mean, qscale=scaling * LOG2E)
            # the table kernel maps the query in its prologue (no map_query launch); a padded batch's slots masked
            parts = launch_gluon(q, kcodes, knorms, vcodes, vnorms, lengths, pk, pv, max_len=max_len, w=w,
                                 num_splits=num_splits, lut=None if pad is None else True,
                                 bias=None if pad is None else bias_c[:, 0])
        else:
            k_tab, v_tab, lengths, chunk, max_len, alive = _packed_source(layer, b, query.device)
            # the table kernel reads the rows, with an additive mask over them too (a padded batch's; one query
            # token, so bias_c's rows are its [B, compressed tokens] in log2 units)
            if _rows_table(pk, pv, g, tq, chunk, alive) and (bias_c is None or bias_c.shape[-1] >= max_len):
                parts = launch_rows(q, k_tab, v_tab, lengths, pk, pv, chunk=chunk, max_len=max_len, w=w,
                                    num_splits=num_splits, bias=None if bias_c is None else bias_c[:, 0])
            else:
                parts = launch_splits(map_query(q, w), k_tab, v_tab, lengths, pk, pv,
                                      chunk=chunk, max_len=max_len, tq=tq, causal=causal, qshift=n_recent,
                                      bias=bias_c, num_splits=num_splits)
    # one launch merges the splits with the fp16 windows, applies the inverse V map and writes [B, Tq, Hq, D]
    return finish_decode(q, parts, tq=tq, qscale=scaling * LOG2E,
                         windows=(layer.sink_k, layer.sink_v, layer.recent_k, layer.recent_v), n_comp=n_comp,
                         adj=adj, bias=bias if pad is None else pad[:, None, :], causal=causal, out_dtype=query.dtype,
                         k_mean=k_mean)
