"""Preallocated KV storage with fixed addresses and device-side lengths, for CUDA-graph decode.

`StaticTurboQuantLayer` holds compressed rows, `StaticDenseLayer` the model's K/V uncompressed (the fp16 side of a
fair graphed comparison); `StaticTurboQuantCache` / `StaticDenseCache` are transformers Caches of them, one layer
per decoder layer (full attention only). engine/graphs.py captures a whole decode step of a model over them.

Rows keep the codec's row format and sit in [B, H, max_cache_len, row_bytes] uint8 buffers, or, for turbo2/turbo4
K and V and turbo3 at head_dim 128 (`planar`), the same bytes in two planes per operand: codes [B, H,
max_cache_len, D*bits/8] uint8 (rows 16-byte aligned, which the planar decode kernels' wide loads need) and norms
[B, H, max_cache_len] fp16. The
number of stored tokens per batch row lives on the device (`lengths`), so appending a token and attending over
the cache have fixed shapes and addresses and a decode step can be captured in a CUDA graph. There is no recent
window: every token is encoded when it arrives, except `sink_tokens` fp16 attention sinks (as TurboQuantLayer
keeps): the first sink_tokens tokens of the first update (a prompt's first chunk, if it has that many), stored
apart; the compressed rows follow at their own count per batch row (`comp_lengths`; `lengths` counts all
tokens). Keys are centered (`center_keys`, as TurboQuantLayer does): the first update's compressed part, if it
has at least CENTER_MIN_TOKENS tokens, fixes a mean per batch row and head (`key_center`), subtracted from every
key before encoding. With no fp16 sinks every stored key is centered alike, so each query's scores all lack the
same q·mean, which the softmax removes, and the backends read the rows as they are; with sinks the mean is also
`k_mean`, which the backends add back to the compressed keys' scores (TurboQuantLayer's contract). With
`scale_keys`, the first update's compressed part is encoded only when the attention call hands the layer its
queries (`observe`, as TurboQuantLayer defers its first compression): they fix a per-channel key scale
`k_scale` [H, D] (keys stored as (k - mean) * k_scale, queries mapped by 1 / k_scale in the backends), used by
every later encode; a prompt's prefill is never captured, so captured steps only read the fixed scale.

The encoder is injected (`encode`): the default runs `Codec.encode` in torch at the host-known position (not
capturable); compactkv.attention.triton.encode.encode_into writes in place at the device-side positions
(capturable).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..core.codec import Codec
from .cache import _decoder_config, head_dim_of, kv_layer_types, memory_totals, require_compactkv_attention
from .layer import STORE_DTYPE, TAG, fit_key_scale

# (codec, x, target, positions, center=None, scale=None): the rows of centered_scaled(x, center, scale) (center
# float32 [B, H, 1, D], scale float32 [H, D]; None: left out) at positions; target: a rows buffer, or a (codes,
# norms) pair of planes. An encoder may carry `pair(k_codec, keys, k_target, v_codec, values, v_target, positions,
# center=None, scale=None) -> bool`: both operands at once where it can (True), nothing written otherwise (False;
# the layer then calls the encoder per operand): triton.encode.encode_into's is one launch for decode steps
Encoder = Callable[..., None]
PLANAR_HEAD_DIMS = (64, 128, 256)
CENTER_MIN_TOKENS = 16  # a first update shorter than this (a decode step into an empty cache) centers nothing


def planar_kinds(k_codec: Codec, v_codec: Codec) -> bool:
    """True where planar storage applies: turbo2/turbo4 K and V of one head_dim in PLANAR_HEAD_DIMS, or turbo3 K
    and V at head_dim 128 (48-byte code rows, 16-byte aligned; the table kernel reads them)."""
    if k_codec.head_dim != v_codec.head_dim or any(c.spec.family != "mse" for c in (k_codec, v_codec)):
        return False
    bits = {k_codec.spec.bits, v_codec.spec.bits}
    return (bits <= {2, 4} and k_codec.head_dim in PLANAR_HEAD_DIMS) or (bits == {3} and k_codec.head_dim == 128)


def planes_to_rows(codes: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Codec rows uint8 [..., 2 + nbytes] from planes codes [..., nbytes] and norms fp16 [...] (a copy)."""
    return torch.cat([norms.unsqueeze(-1).view(torch.uint8), codes], dim=-1)


def rows_to_planes(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codec rows uint8 [..., 2 + nbytes] ([fp16 norm][codes]) as new contiguous planes (codes [..., nbytes],
    norms fp16 [...]); the inverse of `planes_to_rows`."""
    return rows[..., 2:].contiguous(), rows[..., :2].contiguous().view(torch.float16)[..., 0].contiguous()


class _StaticLayer(CacheLayerMixin):
    """What both static layers share: a host token count (`cumulative_length`) next to the device one (`lengths`),
    a fixed capacity, no sliding window; subclasses name their batch-indexed buffers in `_buffers()`."""

    is_compileable = False
    is_sliding = False
    is_croppable = True
    masks_itself = True  # one-token steps ignore transformers' mask and apply `pad_bias` (attention.interface)
    # float32 [B, max_cache_len + sink_tokens]: 0, or -inf for a stored slot no later token may attend (a padded
    # batch's padding, taken from its prompt's mask by `record_padding`); None until a prompt hides a slot. A fixed
    # buffer, so a captured step reads the current padding; its extra sink_tokens columns let the compressed
    # tokens' part, `pad_bias[:, n_sink:]`, span max_cache_len columns as the kernels' row bound asks.
    pad_bias: torch.Tensor | None = None

    def record_padding(self, mask: torch.Tensor) -> None:
        """Take a multi-token update's padding from transformers' mask ([B or 1, 1 or H, Tq, >= stored], boolean
        keep or additive): the stored slots its last query row may not attend are hidden from every later token
        (one-token steps ignore transformers' mask, which is sized by the host's count and frozen into a captured
        step). Allocates `pad_bias` at the first prompt that hides a slot; a later prompt that hides none (after a
        reset) clears its slots."""
        n = self.cumulative_length
        if mask.dim() != 4 or mask.shape[-1] < n or mask.shape[0] not in (1, self.lengths.shape[0]):
            raise ValueError(f"attention mask of shape {list(mask.shape)} does not cover this cache's "
                             f"{self.lengths.shape[0]} batch rows x {n} stored tokens ([B, 1 or heads, queries, "
                             f">= {n}] expected)")
        last = mask[..., -1, :n]
        hidden = (~last if last.dtype == torch.bool else last != 0).any(1)  # [B or 1, n]
        if self.pad_bias is None:
            if not bool(hidden.any()):
                return
            self.pad_bias = self._pad_buffer(self.max_cache_len)
        self.pad_bias[:, :n] = torch.where(hidden.to(self.pad_bias.device), float("-inf"), 0.0)

    def _pad_buffer(self, capacity: int) -> torch.Tensor:
        """A zero `pad_bias` for `capacity` slots: [B, capacity + sink_tokens] float32 on the layer's device."""
        return torch.zeros(self.lengths.shape[0], capacity + getattr(self, "sink_tokens", 0), dtype=torch.float32,
                           device=self.lengths.device)

    def padding_mask(self) -> torch.Tensor | None:
        """float32 [B, 1, 1, stored] additive mask of the recorded padding over the stored tokens (host count),
        for the torch reference's one-token steps; None without padding."""
        if self.pad_bias is None:
            return None
        return self.pad_bias[:, None, None, :self.cumulative_length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Storage is allocated in __init__."""

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.max_cache_len

    def get_mask_sizes(self, query_length, *args) -> tuple[int, int]:
        if not isinstance(query_length, int):
            query_length = query_length.shape[0]
        return self.cumulative_length + query_length, 0

    def trim_window(self) -> None:
        """No sliding window here."""

    def crop(self, max_length: int) -> None:
        new_len = self.cumulative_length + max_length if max_length < 0 else min(max_length, self.cumulative_length)
        if new_len < 0:
            raise ValueError(f"cannot remove {-max_length} tokens from a cache of {self.cumulative_length}")
        self.cumulative_length = new_len
        self.lengths.clamp_(max=new_len)
        if self.pad_bias is not None:  # the slots the next tokens take are visible
            self.pad_bias[:, new_len:] = 0.0

    def reset(self) -> None:
        self.cumulative_length = 0
        self.lengths.zero_()
        if self.pad_bias is not None:  # kept (a captured step reads it), emptied
            self.pad_bias.zero_()

    def _device_counts(self) -> tuple[torch.Tensor, ...]:
        """The device tensors that hold this layer's token counts (what a step advances)."""
        return (self.lengths,)

    def mark_filled(self, tokens: int) -> None:
        """`tokens` tokens per row count as stored (StaticKVCache.fill: buffers written by the caller)."""
        self.lengths.fill_(tokens)
        self.cumulative_length = tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder batch rows in place (the buffers keep their addresses)."""
        idx = beam_idx.to(self.device)
        for t in self._buffers() + ((self.pad_bias,) if self.pad_bias is not None else ()):
            t.copy_(t.index_select(0, idx))

    # buffers with a token axis (dim 2) of max_cache_len slots, and how many of their slots hold tokens
    _CAPACITY_BUFFERS: tuple[str, ...] = ()

    def _slots_used(self) -> int:
        return self.cumulative_length

    def resized(self, capacity: int) -> "_StaticLayer":
        """A copy holding the same tokens in buffers of `capacity` slots (>= the tokens stored): a prefix store
        keeps a stored sequence in no more than its own length, and a reused one gets a whole context again.
        Tensors shared between attributes stay shared in the copy; per-layer backend state starts empty."""
        if not isinstance(capacity, int) or not self.cumulative_length <= capacity or capacity < 1:
            raise ValueError(f"capacity must be an integer >= the {self.cumulative_length} stored tokens and >= 1, "
                             f"got {capacity!r}")
        n = self._slots_used()
        memo: dict[int, torch.Tensor] = {}
        new = copy.copy(self)
        for name, value in vars(self).items():
            if not isinstance(value, torch.Tensor):
                continue
            if id(value) not in memo:
                if name in self._CAPACITY_BUFFERS:
                    buf = value.new_zeros(value.shape[:2] + (capacity,) + value.shape[3:])
                    buf[:, :, :n] = value[:, :, :n]
                    memo[id(value)] = buf
                else:
                    memo[id(value)] = value.clone()
            setattr(new, name, memo[id(value)])
        new.max_cache_len = capacity
        if self.pad_bias is not None:  # token axis 1, max_cache_len + sink_tokens columns
            new.pad_bias = self._pad_buffer(capacity)
            new.pad_bias[:, :self.cumulative_length] = self.pad_bias[:, :self.cumulative_length]
        if hasattr(self, "backend_state"):
            new.backend_state = {}
        return new


class StaticTurboQuantLayer(_StaticLayer):
    """Compressed K/V rows in preallocated buffers. Same attention contract as TurboQuantLayer (tagged keys), except
    that single-token steps ignore the transformers mask (`masks_itself`): each row attends every token it stores
    but the slots its prompt's mask hid (a padded batch's padding: `pad_bias`, recorded at the prompt)."""

    def __init__(self, k_kind: str, v_kind: str, head_dim: int, batch_size: int, num_kv_heads: int,
                 max_cache_len: int, device="cuda", seed: int = 0, norm_correction: bool = True,
                 encode: Encoder | None = None, unbiased_keys: bool = False, planar: bool | None = None,
                 center_keys: bool = True, sink_tokens: int = 0, scale_keys: bool = False):
        """planar: code and norm planes instead of row buffers (None: wherever `planar_kinds` allows it on a CUDA
        device; True raises for other kinds). center_keys, sink_tokens, scale_keys: see the module's docstring."""
        super().__init__()
        self.k_codec = Codec(k_kind, head_dim, seed=seed, norm_correction=norm_correction, unbiased=unbiased_keys)
        self.v_codec = Codec(v_kind, head_dim, seed=seed + 1, norm_correction=norm_correction)
        for codec in (self.k_codec, self.v_codec):
            if codec.spec.family == "frac":
                raise ValueError(f"{codec.kind} picks its outlier channels from the first tokens it sees; "
                                 f"use TurboQuantLayer for fractional kinds")
        if min(batch_size, num_kv_heads, max_cache_len) < 1:
            raise ValueError("batch_size, num_kv_heads and max_cache_len must be >= 1")
        if not isinstance(sink_tokens, int) or not 0 <= sink_tokens < max_cache_len:
            raise ValueError(f"sink_tokens must be an integer in [0, max_cache_len={max_cache_len}), got "
                             f"{sink_tokens!r}")
        self.head_dim, self.max_cache_len, self.num_kv_heads = head_dim, max_cache_len, num_kv_heads
        self.device = torch.device(device)
        self.dtype = STORE_DTYPE
        # attention backends' per-layer derived tensors (the query map, made at the first decode step and then
        # reused, so a captured step holds no kernel that remakes it); the codecs never change, nothing goes stale
        self.backend_state = {}
        shape = (batch_size, num_kv_heads, max_cache_len)
        eligible = planar_kinds(self.k_codec, self.v_codec)
        if planar and not eligible:
            raise ValueError(f"planar storage takes turbo2/turbo4 K and V with head_dim in {PLANAR_HEAD_DIMS} or "
                             f"turbo3 K and V at head_dim 128, got "
                             f"{k_kind}/{v_kind} at head_dim {head_dim}")
        self.planar = eligible and self.device.type == "cuda" if planar is None else planar
        if self.planar:
            nk, nv = self.k_codec.row_bytes - 2, self.v_codec.row_bytes - 2
            self.k_codes = torch.zeros(*shape, nk, dtype=torch.uint8, device=self.device)
            self.v_codes = torch.zeros(*shape, nv, dtype=torch.uint8, device=self.device)
            self.k_norms = torch.zeros(*shape, dtype=torch.float16, device=self.device)
            self.v_norms = torch.zeros(*shape, dtype=torch.float16, device=self.device)
        else:
            self.k_rows = torch.zeros(*shape, self.k_codec.row_bytes, dtype=torch.uint8, device=self.device)
            self.v_rows = torch.zeros(*shape, self.v_codec.row_bytes, dtype=torch.uint8, device=self.device)
        # tokens per batch row, and compressed rows per batch row (where the encoder writes): `lengths` itself
        # until sinks are taken, then the second row of the same buffer, so a step advances both in one launch
        self._counts = torch.zeros(2, batch_size, dtype=torch.int32, device=self.device)
        self.lengths = self._counts[0]
        self.comp_lengths = self.lengths
        self.sink_tokens = sink_tokens
        self._empty = torch.empty(batch_size, num_kv_heads, 0, head_dim, dtype=STORE_DTYPE, device=self.device)
        self.sink_k = self.sink_v = self.recent_k = self.recent_v = self._empty
        self.k_mean = None  # the key mean as the backends read it: key_center once fp16 sinks sit beside the rows
        self.center_keys = center_keys
        # float32 [B, H, 1, D], subtracted from keys before encoding (a fixed buffer: captured steps read it);
        # `centered`: whether the first update has set it (zeros when that update was short)
        self.key_center = torch.zeros(batch_size, num_kv_heads, 1, head_dim, device=self.device) if center_keys \
            else None
        self.centered = False
        # query-aware key scale float32 [H, D] (TurboQuantLayer's scale_keys), fixed by the first attention call's
        # queries: the first update's compressed part waits in `_pending` until `observe` (or the first read)
        self.scale_keys = scale_keys and self.k_codec.spec.family in ("mse", "prod")
        self.k_scale = None
        self.calibrated = not self.scale_keys
        self._pending = None
        self.sliding_window, self.dropped = None, 0
        self.encode = encode or _torch_encode
        self.cumulative_length = 0
        self.is_initialized = True

    def __repr__(self) -> str:
        return (f"StaticTurboQuantLayer(k={self.k_codec.kind}, v={self.v_codec.kind}, "
                f"tokens={self.cumulative_length}/{self.max_cache_len}{', planar' if self.planar else ''})")

    @property
    def k_target(self):
        """Where the encoder writes keys: the rows buffer, or the (codes, norms) planes."""
        return (self.k_codes, self.k_norms) if self.planar else self.k_rows

    @property
    def v_target(self):
        return (self.v_codes, self.v_norms) if self.planar else self.v_rows

    def write_rows(self, k_rows: torch.Tensor, v_rows: torch.Tensor) -> None:
        """Put codec rows [B, H, t, row_bytes] at positions 0..t of every batch row (benchmarks and tests fill
        the cache this way; the token counts are set by the caller, e.g. StaticKVCache.fill)."""
        t = k_rows.shape[-2]
        if self.planar:
            for rows, codes, norms in ((k_rows, self.k_codes, self.k_norms), (v_rows, self.v_codes, self.v_norms)):
                codes[:, :, :t], norms[:, :, :t] = rows_to_planes(rows)
        else:
            self.k_rows[:, :, :t] = k_rows
            self.v_rows[:, :, :t] = v_rows

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Encode new tokens [B, H, T, D] after each batch row's compressed ones (the first update's first
        sink_tokens kept in fp16 instead); returns them tagged with this layer."""
        t = key_states.shape[-2]
        if self.cumulative_length + t > self.max_cache_len:
            raise ValueError(f"the static cache holds {self.max_cache_len} tokens; {self.cumulative_length} "
                             f"stored and {t} more given")
        self._flush_pending()  # (a second update before any attention call: the first is encoded unscaled)
        keys, values = key_states, value_states
        first = self.cumulative_length == 0
        if first and self.sink_tokens and t >= self.sink_tokens:
            s = self.sink_tokens
            self.sink_k, self.sink_v = keys[..., :s, :].to(STORE_DTYPE), values[..., :s, :].to(STORE_DTYPE)
            self.comp_lengths = self._counts[1]
            self.comp_lengths.zero_()
            keys, values = keys[..., s:, :], values[..., s:, :]
        n = keys.shape[-2]
        if self.key_center is not None:
            if not self.centered:
                if n >= CENTER_MIN_TOKENS:
                    self.key_center.copy_(keys.float().mean(dim=-2, keepdim=True))
                    # fp16 sinks hold raw keys: the backends add q·mean back to the compressed keys' scores
                    self.k_mean = self.key_center if self.sink_k.shape[-2] else None
                self.centered = True
        if n and not self.calibrated:
            if first and n >= CENTER_MIN_TOKENS:  # encoded by `observe` with the queries' key scale
                self._pending = (keys, values)
            else:  # a short first update: no statistics worth fitting to
                self.calibrated = True
        if n and self._pending is None:
            self._encode(keys, values, self.comp_lengths)
        if self.comp_lengths is self.lengths:
            self.lengths += t
        elif n == t:  # every update after the one that took the sinks: both counts in one launch
            self._counts += t
        else:
            self.lengths += t
            self.comp_lengths += n
        self.cumulative_length += t
        setattr(key_states, TAG, self)
        setattr(value_states, TAG, self)
        return key_states, value_states

    def _encode(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        """Encode K/V [B, H, n, D] at `positions`; keys minus the mean and times the key scale where set (the
        encoder does both: inside the Triton kernel, with no launch or float32 copy of its own)."""
        extra = {} if self.key_center is None else {"center": self.key_center}
        if self.k_scale is not None:
            extra["scale"] = self.k_scale
        pair = getattr(self.encode, "pair", None)
        if pair is not None and pair(self.k_codec, keys, self.k_target, self.v_codec, values, self.v_target,
                                     positions, **extra):
            return
        self.encode(self.k_codec, keys, self.k_target, positions, **extra)
        self.encode(self.v_codec, values, self.v_target, positions)

    def observe(self, query: torch.Tensor) -> None:
        """Called by the attention function with the (post-RoPE) query [B, Hq, Tq, D] before it reads the cache:
        the first update's queries fix the key scale (as TurboQuantLayer's first compression does), then that
        update's tokens are encoded."""
        if self._pending is None:
            return
        b, hq, tq, d = query.shape
        h = self.num_kv_heads
        if d != self.head_dim or hq % h:
            raise ValueError(f"query {list(query.shape)} does not fit this layer ({h} KV heads, head_dim "
                             f"{self.head_dim})")
        power = query.detach().double().pow(2).reshape(b, h, hq // h * tq, d).sum(dim=(0, 2))
        keys = self._pending[0]
        if self.key_center is not None:
            keys = keys.float() - self.key_center
        self.k_scale = fit_key_scale(power, b * (hq // h) * tq, keys)
        self._flush_pending()

    def _flush_pending(self) -> None:
        """Encode the first update's tokens if they still wait (at the start of every batch row's rows)."""
        if self._pending is not None:
            keys, values = self._pending
            self._pending = None
            self.calibrated = True
            self._encode(keys, values, torch.zeros_like(self.comp_lengths))

    def crop(self, max_length: int) -> None:
        self._flush_pending()
        super().crop(max_length)
        n, s = self.cumulative_length, self.n_sink
        if n == 0:
            self.reset()
        elif n < s:  # fewer tokens than sinks: the sinks' first n are all that is left
            self.sink_k, self.sink_v = self.sink_k[..., :n, :].clone(), self.sink_v[..., :n, :].clone()
            self.comp_lengths.zero_()
        elif self.comp_lengths is not self.lengths:
            self.comp_lengths.clamp_(max=n - s)

    def reset(self) -> None:
        """Empty; the next first update takes sinks and fixes the key mean anew."""
        super().reset()
        self.sink_k = self.sink_v = self._empty
        self.comp_lengths = self.lengths
        self.k_mean = None
        if self.key_center is not None:
            self.key_center.zero_()
        self.centered = False
        self.k_scale, self._pending, self.calibrated = None, None, not self.scale_keys

    def mark_filled(self, tokens: int) -> None:
        """Benchmark rows written as they are (write_rows): no sinks, no mean to subtract from later keys."""
        self.reset()
        super().mark_filled(tokens)
        self.centered = tokens > 0
        self.calibrated = self.calibrated or tokens > 0

    @property
    def n_sink(self) -> int:
        return self.sink_k.shape[-2]

    # -- the views attention reads ---------------------------------------------------------------------------------
    @property
    def n_compressed(self) -> int:
        return self.cumulative_length - self.n_sink

    @property
    def chunks_k(self) -> list[torch.Tensor]:
        """The stored rows of every batch row (planar storage: a row-format copy)."""
        self._flush_pending()
        n = self.n_compressed
        if self.planar:
            return [planes_to_rows(self.k_codes[:, :, :n], self.k_norms[:, :, :n])]
        return [self.k_rows[:, :, :n]]

    @property
    def chunks_v(self) -> list[torch.Tensor]:
        self._flush_pending()
        n = self.n_compressed
        if self.planar:
            return [planes_to_rows(self.v_codes[:, :, :n], self.v_norms[:, :, :n])]
        return [self.v_rows[:, :, :n]]

    def packed_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(k_rows, v_rows, lengths int32 [B], max_len) for kernels that read row buffers: the buffers themselves
        (max_len = capacity), or with planar storage row-format copies of the stored tokens."""
        self._flush_pending()
        if self.planar:
            return self.chunks_k[0], self.chunks_v[0], self.comp_lengths, self.n_compressed
        return self.k_rows, self.v_rows, self.comp_lengths, self.max_cache_len

    def planes(self) -> tuple[torch.Tensor, ...] | None:
        """(k_codes, k_norms, v_codes, v_norms, compressed rows per batch row, max_cache_len) with planar storage,
        else None."""
        if not self.planar:
            return None
        self._flush_pending()
        return self.k_codes, self.k_norms, self.v_codes, self.v_norms, self.comp_lengths, self.max_cache_len

    def stored_length(self) -> int:
        return self.cumulative_length

    def _device_counts(self) -> tuple[torch.Tensor, ...]:
        return (self._counts,)  # lengths and comp_lengths are rows (or one row) of it

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        if self.planar:
            return self.k_codes, self.k_norms, self.v_codes, self.v_norms, self.lengths
        return self.k_rows, self.v_rows, self.lengths

    _CAPACITY_BUFFERS = ("k_codes", "k_norms", "v_codes", "v_norms", "k_rows", "v_rows")

    def _slots_used(self) -> int:
        return self.n_compressed

    def resized(self, capacity: int) -> "StaticTurboQuantLayer":
        self._flush_pending()
        new = super().resized(capacity)
        # (the copy cloned the counts and their two views apart: views of its own counts again)
        new._counts = self._counts.clone()
        new.lengths = new._counts[0]
        new.comp_lengths = new.lengths if self.comp_lengths is self.lengths else new._counts[1]
        return new

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._flush_pending()
        super().reorder_cache(beam_idx)
        idx = beam_idx.to(self.device)
        if self.comp_lengths is not self.lengths:
            self.comp_lengths.copy_(self.comp_lengths.index_select(0, idx))
        if self.key_center is not None:
            self.key_center.copy_(self.key_center.index_select(0, idx))
        if self.n_sink:
            self.sink_k, self.sink_v = self.sink_k.index_select(0, idx), self.sink_v.index_select(0, idx)

    def memory(self) -> dict:
        comp = sum(t.nbytes for t in self._buffers()[:-1])
        b, h = self.lengths.shape[0], self.num_kv_heads
        n = self.n_compressed
        return {"compressed_bytes": comp, "window_bytes": self.sink_k.nbytes + self.sink_v.nbytes, "aux_bytes": 0,
                "tokens": self.cumulative_length,
                "fp16_bytes": 2 * 2 * b * h * self.head_dim * self.cumulative_length,
                "compressed_fp16_bytes": 2 * 2 * b * h * self.head_dim * n,
                "codec_bytes": b * h * (self.k_codec.nbytes(n) + self.v_codec.nbytes(n))}


def centered_scaled(x: torch.Tensor, center: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor:
    """x.float() - center, then times scale [H, D] per head (each only when given), as TurboQuantLayer computes
    the keys it compresses; x itself when neither is given."""
    if center is not None:
        x = x.float() - center
    if scale is not None:
        x = x.float() * scale[:, None, :]
    return x


def _torch_encode(codec: Codec, x: torch.Tensor, target, positions: torch.Tensor,
                  center: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> None:
    """Codec.encode of centered_scaled(x, center, scale), written at each batch row's position (read back to the
    host: not capturable). target: a rows buffer or a (codes, norms) pair of planes."""
    write_encoded(codec.encode(centered_scaled(x, center, scale)), target, positions)


def write_encoded(enc: torch.Tensor, target, positions: torch.Tensor) -> None:
    """Encoded rows [B, H, T, row_bytes] into `target` (rows buffer or (codes, norms) planes) at each batch row's
    position (host-side positions)."""
    t = enc.shape[-2]
    for b, p in enumerate(positions.tolist()):
        if isinstance(target, tuple):
            target[0][b, :, p:p + t], target[1][b, :, p:p + t] = rows_to_planes(enc[b])
        else:
            target[b, :, p:p + t] = enc[b]


class StaticDenseLayer(_StaticLayer):
    """Uncompressed K/V in preallocated [B, H, max_cache_len, D] buffers, lengths on the device.

    `update` writes the new tokens at each batch row's length and returns the whole buffers tagged with this layer;
    compactkv's attention function then runs SDPA over them with `attn_mask(...)`: every stored token of the row up
    to the query's own position (exact). exact_mask=False drops the mask for single-token steps: SDPA attends all
    max_cache_len slots, unwritten ones included (zeros), which costs what an exact attention over max_cache_len
    tokens costs (flash kernels take no mask) but gives wrong values while slots are empty: a timing baseline only.
    """

    dense = True  # read by compactkv's attention function: SDPA over the buffers, not the compressed path

    def __init__(self, head_dim: int, batch_size: int, num_kv_heads: int, max_cache_len: int, device="cuda",
                 dtype=torch.bfloat16, exact_mask: bool = True):
        super().__init__()
        if min(batch_size, num_kv_heads, max_cache_len, head_dim) < 1:
            raise ValueError("head_dim, batch_size, num_kv_heads and max_cache_len must be >= 1")
        self.head_dim, self.max_cache_len, self.exact_mask = head_dim, max_cache_len, exact_mask
        self.device, self.dtype = torch.device(device), dtype
        shape = (batch_size, num_kv_heads, max_cache_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=dtype, device=self.device)
        self.lengths = torch.zeros(batch_size, dtype=torch.int32, device=self.device)
        self._slots = torch.arange(max_cache_len, device=self.device)
        self.query_positions = None  # int64 [B, T]: positions of the last update's tokens (for the mask)
        self.cumulative_length = 0
        self.is_initialized = True

    def __repr__(self) -> str:
        return f"StaticDenseLayer({self.dtype}, tokens={self.cumulative_length}/{self.max_cache_len})"

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        b, h, t, d = key_states.shape
        if self.cumulative_length + t > self.max_cache_len:
            raise ValueError(f"the static cache holds {self.max_cache_len} tokens; {self.cumulative_length} "
                             f"stored and {t} more given")
        if (b, h, d) != (self.keys.shape[0], self.keys.shape[1], self.head_dim):
            raise ValueError(f"key states [B={b}, H={h}, D={d}] do not match the cache's buffers "
                             f"[B={self.keys.shape[0]}, H={self.keys.shape[1]}, D={self.head_dim}]")
        pos = self.lengths.long()[:, None] + torch.arange(t, device=self.device)  # [B, T]
        idx = pos[:, None, :, None].expand(b, h, t, d)
        self.keys.scatter_(2, idx, key_states.to(self.dtype))
        self.values.scatter_(2, idx, value_states.to(self.dtype))
        self.query_positions = pos
        self.lengths += t
        self.cumulative_length += t
        keys, values = self.keys, self.values
        setattr(keys, TAG, self)
        setattr(values, TAG, self)
        return keys, values

    _CAPACITY_BUFFERS = ("keys", "values")

    def resized(self, capacity: int) -> "StaticDenseLayer":
        new = super().resized(capacity)
        new._slots = torch.arange(capacity, device=self.device)
        return new

    def record_padding(self, mask: torch.Tensor) -> None:
        super().record_padding(mask)
        if self.pad_bias is not None and not self.exact_mask:
            raise ValueError("this static dense cache has exact_mask=False (a timing baseline whose one-token steps "
                             "attend every slot): it cannot hide a padded batch's padding; build it with "
                             "exact_mask=True")

    def attn_mask(self, groups: int, tq: int) -> torch.Tensor | None:
        """bool [B, 1, groups * tq, max_cache_len] (query rows ordered (group, token), as the attention function
        folds GQA into the query length), or None where exact_mask is off for a single-token step."""
        if not self.exact_mask and tq == 1:
            return None
        own = self.query_positions[:, -tq:, None]
        keep = self._slots[None, None, :] <= own  # [B, Tq, max]
        if self.pad_bias is not None:  # a padded batch: its padding hidden (a padding query still sees itself)
            keep = keep & ((self.pad_bias[:, None, :] == 0) | (self._slots[None, None, :] == own))
        return keep[:, None].expand(-1, groups, -1, -1).reshape(keep.shape[0], 1, groups * tq, -1)

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        return self.keys, self.values, self.lengths

    def memory(self) -> dict:
        b, h = self.keys.shape[:2]
        used = 2 * b * h * self.head_dim * self.cumulative_length * self.keys.element_size()
        return {"compressed_bytes": 0, "window_bytes": self.keys.nbytes + self.values.nbytes, "aux_bytes": 0,
                "tokens": self.cumulative_length, "fp16_bytes": 2 * 2 * b * h * self.head_dim * self.cumulative_length,
                "used_bytes": used}


class StaticKVCache(Cache):
    """A transformers Cache of static layers (one per decoder layer), all with the same batch and capacity.

    Tokens are counted twice: on the device (`lengths`, what captured steps advance) and on the host
    (`cumulative_length` per layer, what transformers asks); `host_lengths` / `set_host_lengths` let a caller that
    replays captured steps keep the host count in step (engine/graphs.py)."""

    def __init__(self, config, layers: list):
        self.model_config = _decoder_config(config)
        super().__init__(layers=layers)

    @torch.compiler.disable  # a compiled model (engine.graphs.compiled_model) writes the cache as uncompiled code
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        require_compactkv_attention(self)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    @property
    def lengths(self) -> torch.Tensor:
        """int32 [B]: tokens stored per batch row (the device copy every layer advances alike)."""
        return self.layers[0].lengths

    @property
    def max_cache_len(self) -> int:
        return self.layers[0].max_cache_len

    def room(self) -> int:
        """Tokens that still fit."""
        return self.max_cache_len - self.layers[0].cumulative_length

    def host_lengths(self) -> list[int]:
        return [layer.cumulative_length for layer in self.layers]

    def set_host_lengths(self, counts: list[int]) -> None:
        for layer, n in zip(self.layers, counts):
            layer.cumulative_length = n

    def counts_snapshot(self) -> list:
        """Every layer's host and device token counts (device copies), for `restore_counts`: a decode step run
        between the two leaves the cache as it was, except for the slots after the stored tokens, which the next
        step overwrites. Not across a first update (fp16 sinks, key center and key scale are set there)."""
        return [(layer.cumulative_length, [t.clone() for t in layer._device_counts()]) for layer in self.layers]

    def restore_counts(self, snapshot: list) -> None:
        for layer, (host, saved) in zip(self.layers, snapshot):
            layer.cumulative_length = host
            for t, old in zip(layer._device_counts(), saved):
                t.copy_(old)

    def resized(self, capacity: int) -> "StaticKVCache":
        """A copy of this cache with the same tokens and room for `capacity` (see _StaticLayer.resized)."""
        new = copy.copy(self)
        new.layers = [layer.resized(capacity) for layer in self.layers]
        return new

    def fill(self, tokens: int) -> None:
        """Mark `tokens` tokens per row as stored without writing them (benchmarks fill the buffers themselves)."""
        if not 0 <= tokens <= self.max_cache_len:
            raise ValueError(f"tokens must be in [0, {self.max_cache_len}], got {tokens}")
        for layer in self.layers:
            layer.mark_filled(tokens)

    def memory_report(self) -> dict:
        """As TurboQuantCache.memory_report (buffers counted whole: they are allocated up front)."""
        return memory_totals([layer.memory() for layer in self.layers])


def _static_shapes(config) -> tuple[int, int, int]:
    """(layers, kv heads, head_dim); ValueError for models with sliding-window layers."""
    types = kv_layer_types(config)
    if any(t != "full_attention" for t in types):
        raise ValueError("static caches hold full-attention layers only; this model has sliding-window layers "
                         "(use TurboQuantCache)")
    cfg = _decoder_config(config)
    return len(types), getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads, head_dim_of(config)


class StaticTurboQuantCache(StaticKVCache):
    """Compressed KV in preallocated buffers (`StaticTurboQuantLayer` per layer): every token encoded on arrival,
    keys centered by their first chunk's mean (center_keys), the first update's first `sink_tokens` in fp16 (none
    by default; engine.graphs.static_cache takes the default cache's 4), keys scaled per channel from the first
    attention call's queries (scale_keys; engine.graphs.static_cache: STATIC_SCALE_KEYS), no recent window.
    `encode`: see StaticTurboQuantLayer (engine/graphs.py passes the in-place Triton encoder on CUDA); planar: see
    StaticTurboQuantLayer."""

    def __init__(self, config, k: str = "turbo4", v: str = "turbo4", *, batch_size: int, max_cache_len: int,
                 device="cuda", seed: int = 0, norm_correction: bool = True, unbiased_keys: bool = False,
                 encode: Encoder | None = None, planar: bool | None = None, center_keys: bool = True,
                 sink_tokens: int = 0, scale_keys: bool = False):
        n, hkv, d = _static_shapes(config)
        layers = [StaticTurboQuantLayer(k, v, d, batch_size, hkv, max_cache_len, device=device, seed=seed,
                                        norm_correction=norm_correction, encode=encode, unbiased_keys=unbiased_keys,
                                        planar=planar, center_keys=center_keys, sink_tokens=sink_tokens,
                                        scale_keys=scale_keys)
                  for _ in range(n)]
        super().__init__(config, layers)


class StaticDenseCache(StaticKVCache):
    """Uncompressed KV in preallocated buffers (`StaticDenseLayer` per layer), the model's dtype by default."""

    def __init__(self, config, *, batch_size: int, max_cache_len: int, device="cuda", dtype=torch.bfloat16,
                 exact_mask: bool = True):
        n, hkv, d = _static_shapes(config)
        layers = [StaticDenseLayer(d, batch_size, hkv, max_cache_len, device=device, dtype=dtype,
                                   exact_mask=exact_mask) for _ in range(n)]
        super().__init__(config, layers)
