"""`StaticTurboQuantLayer`: preallocated compressed KV storage with fixed addresses, for CUDA-graph decode.

Rows keep the codec's row format and sit in [B, H, max_cache_len, row_bytes] uint8 buffers; the number of stored
tokens per batch row lives on the device (`lengths`), so appending a token and attending over the cache have
fixed shapes and addresses and a decode step can be captured in a CUDA graph. There are no fp16 sink or recent
windows: every token is encoded when it arrives. The encoder is injected (`encode`): the default runs
`Codec.encode` in torch at the host-known position (not capturable); compactkv.attention.triton.encode.encode_into
writes in place at the device-side positions (capturable).
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers.cache_utils import CacheLayerMixin

from ..core.codec import Codec
from .layer import STORE_DTYPE, TAG

Encoder = Callable[[Codec, torch.Tensor, torch.Tensor, torch.Tensor], None]  # (codec, x, rows, positions)


class StaticTurboQuantLayer(CacheLayerMixin):
    """Compressed K/V rows in preallocated buffers. Same attention contract as TurboQuantLayer (tagged keys)."""

    is_compileable = False
    is_sliding = False
    is_croppable = True

    def __init__(self, k_kind: str, v_kind: str, head_dim: int, batch_size: int, num_kv_heads: int,
                 max_cache_len: int, device="cuda", seed: int = 0, norm_correction: bool = True,
                 encode: Encoder | None = None, unbiased_keys: bool = False):
        super().__init__()
        self.k_codec = Codec(k_kind, head_dim, seed=seed, norm_correction=norm_correction, unbiased=unbiased_keys)
        self.v_codec = Codec(v_kind, head_dim, seed=seed + 1, norm_correction=norm_correction)
        for codec in (self.k_codec, self.v_codec):
            if codec.spec.family == "frac":
                raise ValueError(f"{codec.kind} picks its outlier channels from the first tokens it sees; "
                                 f"use TurboQuantLayer for fractional kinds")
        if min(batch_size, num_kv_heads, max_cache_len) < 1:
            raise ValueError("batch_size, num_kv_heads and max_cache_len must be >= 1")
        self.head_dim, self.max_cache_len = head_dim, max_cache_len
        self.device = torch.device(device)
        self.dtype = STORE_DTYPE
        shape = (batch_size, num_kv_heads, max_cache_len)
        self.k_rows = torch.zeros(*shape, self.k_codec.row_bytes, dtype=torch.uint8, device=self.device)
        self.v_rows = torch.zeros(*shape, self.v_codec.row_bytes, dtype=torch.uint8, device=self.device)
        self.lengths = torch.zeros(batch_size, dtype=torch.int32, device=self.device)  # tokens per batch row
        empty = torch.empty(batch_size, num_kv_heads, 0, head_dim, dtype=STORE_DTYPE, device=self.device)
        self.sink_k = self.sink_v = self.recent_k = self.recent_v = empty
        self.k_mean = None
        self.sliding_window, self.dropped = None, 0
        self.encode = encode or _torch_encode
        self.cumulative_length = 0
        self.is_initialized = True

    def __repr__(self) -> str:
        return (f"StaticTurboQuantLayer(k={self.k_codec.kind}, v={self.v_codec.kind}, "
                f"tokens={self.cumulative_length}/{self.max_cache_len})")

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Storage is allocated in __init__."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Encode new tokens [B, H, T, D] at each batch row's current length; returns them tagged with this layer."""
        t = key_states.shape[-2]
        if self.cumulative_length + t > self.max_cache_len:
            raise ValueError(f"the static cache holds {self.max_cache_len} tokens; {self.cumulative_length} "
                             f"stored and {t} more given")
        self.encode(self.k_codec, key_states, self.k_rows, self.lengths)
        self.encode(self.v_codec, value_states, self.v_rows, self.lengths)
        self.lengths += t
        self.cumulative_length += t
        setattr(key_states, TAG, self)
        setattr(value_states, TAG, self)
        return key_states, value_states

    # -- the views attention reads ---------------------------------------------------------------------------------
    @property
    def n_compressed(self) -> int:
        return self.cumulative_length

    @property
    def chunks_k(self) -> list[torch.Tensor]:
        return [self.k_rows[:, :, :self.cumulative_length]]

    @property
    def chunks_v(self) -> list[torch.Tensor]:
        return [self.v_rows[:, :, :self.cumulative_length]]

    def packed_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(k_rows, v_rows, lengths int32 [B], max_cache_len) for kernels that read the buffers directly."""
        return self.k_rows, self.v_rows, self.lengths, self.max_cache_len

    def stored_length(self) -> int:
        return self.cumulative_length

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

    def reset(self) -> None:
        self.cumulative_length = 0
        self.lengths.zero_()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder batch rows in place (the buffers keep their addresses)."""
        idx = beam_idx.to(self.device)
        for t in (self.k_rows, self.v_rows, self.lengths):
            t.copy_(t.index_select(0, idx))

    def memory(self) -> dict:
        comp = self.k_rows.nbytes + self.v_rows.nbytes
        b, h = self.k_rows.shape[:2]
        return {"compressed_bytes": comp, "window_bytes": 0, "tokens": self.cumulative_length,
                "fp16_bytes": 2 * 2 * b * h * self.head_dim * self.cumulative_length,
                "compressed_fp16_bytes": 2 * 2 * b * h * self.head_dim * self.cumulative_length,
                "codec_bytes": b * h * (self.k_codec.nbytes(self.cumulative_length)
                                        + self.v_codec.nbytes(self.cumulative_length))}


def _torch_encode(codec: Codec, x: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> None:
    """Codec.encode, written at each batch row's position (read back to the host: not capturable)."""
    enc = codec.encode(x)
    for b, p in enumerate(positions.tolist()):
        rows[b, :, p:p + x.shape[-2]] = enc[b]
