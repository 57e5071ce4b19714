"""Memory beyond weights and KV: the runtime and the activations of one forward pass, as a documented formula.

    overhead(T, B) = base
                   + B * c * (hidden_buffers * hidden + mlp_buffers * intermediate) * act_bytes    activations
                   + B * r * vocab * 4                                                           fp32 logits
                   + B * n_heads * c * min(T, score_block) * score_bytes                         attention scores
                   + B * c * T * mask_bytes                                                      attention masks
                   + B * max over KV layers of T_l * (kv_copies * kv_heads_l + head_copies * n_heads)
                         * (k_dim_l + v_dim_l) * copy_bytes                                     attention K/V copies
    c = min(T, prefill_chunk) tokens per forward (T when prefill_chunk is None), r = min(c, logits_rows),
    score_block None = no cap (scores over the whole history at once), T_l = tokens layer l holds.

The last term is one layer's history copied by the attention path while it runs (layers run one after another, so
the largest layer counts): `kv_copies` copies at the KV-head count, `head_copies` copies expanded to every query
head. It depends on the path, so each path has its own pair: `dense_*` for an uncompressed f16 cache (on CUDA:
transformers' DynamicCache + SDPA, which expands K and V to all query heads when a mask is passed, i.e. every
prefill chunk after the first) and `packed_*` for TurboQuantCache (on CUDA: the Triton prefill path, which holds
the decoded fp16 K and V, their concatenation with the fp16 windows, and the query-head expansion for SDPA's
masked kernel). These counts are read off the code, not fitted; on CPU both are 0 (the torch reference streams
over key blocks of at most `score_block` tokens, counted by the scores term).

Allocator slack (`slack_bytes`, in the plan's overhead column, CUDA only): what the caching allocator holds beyond
live tensors when it runs out: a constant `alloc_reserve_bytes` (fitted from measured OOMs) plus the packing loss
of the compressed cache's chunk tensors that fall in its small-block pool (requests <= 1 MiB share 2 MiB blocks).

The constants are provisional guesses until `compactkv bench ceiling` measures them: a calibration JSON
(`compactkv/plan/calibration.json`, or `--calibration PATH`) with one object per device overrides them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .shapes import ModelShape

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")


@dataclass(frozen=True)
class OverheadModel:
    """Constants of the overhead formula for one device; `source` says whether they were measured."""

    base_bytes: int
    hidden_buffers: float
    mlp_buffers: float
    act_bytes: int
    logits_rows: int | None
    score_bytes: float
    prefill_chunk: int | None
    source: str
    score_block: int | None = None  # attention processes keys in blocks of this many tokens (None = all at once)
    mask_bytes: float = 0.0  # bytes per (query, key) pair of masks materialized for a forward
    dense_kv_copies: float = 0.0  # f16 path: copies of one layer's K/V history at the KV-head count
    dense_head_copies: float = 0.0  # f16 path: copies expanded to every query head
    packed_kv_copies: float = 0.0  # compressed path: the same two counts
    packed_head_copies: float = 0.0
    copy_bytes: int = 2  # bytes per element of those copies (fp16 / bf16)
    alloc_reserve_bytes: int = 0  # allocator: reserved but unallocated memory it cannot hand back (fitted at OOM)
    small_alloc_bytes: int = 0  # allocator: requests up to this size share blocks of small_block_bytes (0 = off)
    small_block_bytes: int = 0
    alloc_round: int = 512  # allocator: request sizes are rounded up to a multiple of this
    cache_chunk_tokens: int = 1024  # TurboQuantCache: compressed rows per chunk tensor (CacheConfig.chunk_tokens)

    def slack_bytes(self, shape: ModelShape, config, context: int, batch: int = 1, fp16_tokens: int = 0) -> int:
        """Memory the allocator holds beyond the live tensors: `alloc_reserve_bytes`, plus the small-block packing
        loss of the compressed cache's chunk tensors [B, kv_heads, rows, row_bytes]. A tensor of s bytes (rounded
        to `alloc_round`) no larger than `small_alloc_bytes` sits in a shared block of `small_block_bytes` that
        holds floor(block / s) of them, so it costs block / floor(block / s). An all-f16 config is the dense
        path (no chunk tensors)."""
        from compactkv.core.kinds import row_bytes

        out = self.alloc_reserve_bytes
        kinds = config.layer_kinds(shape.n_kv_layers)
        if not self.small_alloc_bytes or all(k == v == "f16" for k, v in kinds):
            return int(out)
        chunk, block, rnd = self.cache_chunk_tokens, self.small_block_bytes, self.alloc_round
        for layer, (k, v) in zip(shape.layers, kinds):
            n = layer.tokens(context) - min(layer.tokens(context), fp16_tokens)  # compressed rows
            for kind, dim in ((k, layer.k_dim), (v, layer.v_dim)):
                for rows, count in ((chunk, n // chunk), (n % chunk, 1 if n % chunk else 0)):
                    raw = batch * layer.kv_heads * rows * row_bytes(kind, dim)
                    size = -(-raw // rnd) * rnd
                    if count and size <= self.small_alloc_bytes:
                        out += count * (block / (block // size) - raw)
        return int(out)

    def config_bytes(self, shape: ModelShape, config, context: int, batch: int = 1, fp16_tokens: int = 0) -> int:
        """Everything beyond weights and KV for `config`: bytes() on its path plus slack_bytes()."""
        dense = all(k == v == "f16" for k, v in config.layer_kinds(shape.n_kv_layers))
        return self.bytes(shape, context, batch, dense) + self.slack_bytes(shape, config, context, batch, fp16_tokens)

    def copies_bytes(self, shape: ModelShape, context: int, dense: bool) -> int:
        """Bytes of one layer's K/V history copied by attention (the largest layer), one sequence."""
        kv, heads = ((self.dense_kv_copies, self.dense_head_copies) if dense
                     else (self.packed_kv_copies, self.packed_head_copies))
        if not (kv or heads):
            return 0
        return int(max((layer.tokens(context) * (kv * layer.kv_heads + heads * shape.n_heads)
                        * (layer.k_dim + layer.v_dim) * self.copy_bytes for layer in shape.layers), default=0))

    def bytes(self, shape: ModelShape, context: int, batch: int = 1, dense: bool = False) -> int:
        """Overhead in bytes for `batch` sequences prefilled to `context` tokens; `dense` = an uncompressed f16
        cache (see the module doc for the paths)."""
        c = context if self.prefill_chunk is None else min(context, self.prefill_chunk)
        rows = c if self.logits_rows is None else min(c, self.logits_rows)
        act = c * (self.hidden_buffers * shape.hidden + self.mlp_buffers * shape.intermediate) * self.act_bytes
        keys = context if self.score_block is None else min(context, self.score_block)
        scores = shape.n_heads * c * keys * self.score_bytes + c * context * self.mask_bytes
        copies = self.copies_bytes(shape, context, dense)
        return int(self.base_bytes + batch * (act + rows * shape.vocab * 4 + scores + copies))


# Defaults before any measurement (the shipped calibration.json overrides the measured fields). base: CPU =
# `import torch, transformers` peak RSS on the dev box (236 MiB) rounded up; CUDA = cuBLAS workspace and the like.
# Buffers: residual, norm, q/k/v/o and attention output alive at once (8 x hidden), gate/up/act of the MLP
# (3 x intermediate). Fused SDPA keeps no scores. CUDA copy counts, from the code (one layer, peak inside attention):
#   dense:  transformers' sdpa_attention_forward passes a mask for every chunk after the first, so repeat_kv expands
#           K and V to all query heads (1 head copy); DynamicCache's torch.cat transient ends before that.
#   packed: compactkv/attention/triton/prefill.py holds dequantized K and V (fp16) and their concatenation with the
#           fp16 windows (2 KV copies) while it expands both to all query heads for the masked SDPA (1 head copy).
PROVISIONAL = {
    "cpu": OverheadModel(300 * 2**20, 8.0, 3.0, 4, 1, 0.0, 512, "provisional: not yet measured"),
    "cuda": OverheadModel(512 * 2**20, 8.0, 3.0, 2, 1, 0.0, 512, "provisional: not yet measured",
                          dense_head_copies=1.0, packed_kv_copies=2.0, packed_head_copies=1.0,
                          small_alloc_bytes=2**20, small_block_bytes=2 * 2**20),
}


def load_overhead(device: str = "cpu", path: str | Path | None = None, prefill_chunk: int | None = -1) -> OverheadModel:
    """The overhead model for `device`: measured calibration from `path` (or the shipped file) if any, else provisional.
    `prefill_chunk` overrides the chunk (None = whole prompt in one forward; -1 keeps the model's)."""
    if device not in PROVISIONAL:
        raise ValueError(f"unknown device {device!r}; accepted: {', '.join(PROVISIONAL)}")
    model = PROVISIONAL[device]
    file = Path(path) if path else CALIBRATION_FILE
    if path and not file.is_file():
        raise ValueError(f"no calibration file at {file}")
    if file.is_file():
        entry = json.loads(file.read_text()).get(device)
        if entry:
            names = {f.name for f in fields(OverheadModel)}
            unknown = set(entry) - names
            if unknown:
                raise ValueError(f"{file}: unknown calibration keys {sorted(unknown)}; accepted: {sorted(names)}")
            model = replace(model, **entry)
    if prefill_chunk != -1:
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill chunk must be >= 1 token, got {prefill_chunk}")
        model = replace(model, prefill_chunk=prefill_chunk)
    return model
