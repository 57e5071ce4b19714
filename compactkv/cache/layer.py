"""`TurboQuantLayer`: one layer's KV cache held as compressed rows, plus optional fp16 sink and recent windows.

Tokens are kept in order as [sinks (fp16)] [compressed chunks (uint8 rows)] [recent (fp16)]. Each token is
encoded once, when it leaves the recent window, and never re-quantized; rows are independent per token, so crop
and batch selection are exact. `update` returns the new key/value tensors tagged with this layer so the
registered "compactkv" attention function computes on the stored data; nothing else rebuilds the history.
"""

from __future__ import annotations

import copy

import torch
from transformers.cache_utils import CacheLayerMixin

from ..core.codec import Codec

STORE_DTYPE = torch.float16  # sinks and recent window
TAG = "_compactkv_layer"

# encoder_for(x) -> an encoder for a layer whose first update brings x, or None: installed by the attention
# package (compactkv.attention.dispatch, on CUDA the Triton encode kernel) so that the layer, which does not import
# the attention backends, encodes its first update with it too (not with Codec.encode in torch ops and a device
# sync per call). Configuration, not state: it holds no tensors and no per-cache data.
_ENCODER_FOR = None


def set_encoder_factory(encoder_for) -> None:
    """Install encoder_for(x) -> encoder | None, asked at an update of a layer that has no encoder yet."""
    global _ENCODER_FOR
    _ENCODER_FOR = encoder_for


def fit_key_scale(q_power: torch.Tensor | None, q_count: int, k: torch.Tensor) -> torch.Tensor | None:
    """Per-channel key scale s [H, D] float32 from the queries' summed squared channels q_power [H, D] (over
    q_count query vectors per KV head) and the (centered) keys k [B, H, T, D], or None without queries.

    Rotation makes the codec's error isotropic, so the error of q·k scales like |q|·|k|. Storing k·s and
    scoring q/s keeps q·k exact and changes the error to |q/s|·|k·s|, smallest (Cauchy-Schwarz) for
    s_c² ∝ sqrt(E[q_c²] / E[k_c²]). Scales are normalized to keep E|k·s|² = E|k|², and clamped to
    [1/16, 16] of that so a silent channel cannot blow up.
    """
    if q_power is None or q_count == 0:
        return None
    qp = q_power / q_count
    kp = k.double().pow(2).mean(dim=(0, 2))  # [H, D]
    qp = qp + 1e-3 * qp.mean(-1, keepdim=True)
    kp = kp + 1e-3 * kp.mean(-1, keepdim=True)
    s2 = (qp / kp).sqrt().clamp_min(1e-30)
    s2 = s2 * (kp.sum(-1, keepdim=True) / (kp * s2).sum(-1, keepdim=True))
    return s2.sqrt().clamp(1 / 16, 16).float()


class TurboQuantLayer(CacheLayerMixin):
    """Compressed KV storage for one attention layer. K and V kinds may differ."""

    is_compileable = False
    is_croppable = True

    def __init__(self, k_kind: str, v_kind: str, head_dim: int, sink_tokens: int = 0, residual_length: int = 0,
                 block_size: int = 1, seed: int = 0, norm_correction: bool = True, chunk_tokens: int = 1024,
                 sliding_window: int | None = None, center_keys: bool = True, scale_keys: bool = False,
                 unbiased_keys: bool = False):
        super().__init__()
        self.center_keys = center_keys and k_kind != "f16"  # exact storage: centering would only add bytes
        self.k_codec = Codec(k_kind, head_dim, seed=seed, norm_correction=norm_correction, unbiased=unbiased_keys)
        # Query-aware channel scaling applies to the rotation codecs, whose error is isotropic after rotation.
        self.scale_keys = scale_keys and self.k_codec.spec.family in ("mse", "frac", "prod")
        self.v_codec = Codec(v_kind, head_dim, seed=seed + 1, norm_correction=norm_correction)
        self.head_dim = head_dim
        self.is_sliding = sliding_window is not None
        self.sliding_window = sliding_window
        self.sink_tokens = 0 if self.is_sliding else sink_tokens
        self.residual_length, self.block_size, self.chunk_tokens = residual_length, block_size, chunk_tokens
        # encoder(codec, x) -> rows or None: a faster encoder producing rows bit-identical to codec.encode(x)
        # (the attention layer installs the Triton one on CUDA); None, or a None result, means codec.encode.
        self.encoder = None
        # defer_check: an encoder's non-finite check (a device sync) is left pending after `update` (and after the
        # attention call's first compression, `observe`) instead of run there; whoever set it (TurboQuantCache:
        # once per forward pass) calls `pending_flag` for every layer, then `rollback_pending` or
        # `accept_pending`. Reads and rebuilds of the storage check first.
        self.defer_check = False
        self._clear()

    def _clear(self) -> None:
        self.sink_k = self.sink_v = None  # [B, H, S, D] fp16
        self.recent_k = self.recent_v = None  # [B, H, R, D] fp16
        self._window = None  # (buf_k, buf_v, recent_k, recent_v): the buffers the recent windows are views of
        self.chunks_k: list[torch.Tensor] = []  # [B, H, c, row_bytes_k] uint8
        self.chunks_v: list[torch.Tensor] = []
        self.k_mean = None  # [B, H, 1, D] float32, subtracted from keys before encoding (see center_keys)
        self.k_scale = None  # [H, D] float32: keys are encoded as (k - k_mean) * k_scale (see scale_keys)
        self.q_power = None  # [H, D] float64: sum of squared query coordinates seen so far, per KV head
        self.q_count = 0
        self.calibrated = not self.scale_keys  # True once the first compression fixed k_scale (or chose none)
        self.n_compressed = 0
        self.dropped = 0  # tokens trimmed out of a sliding window
        self.cumulative_length = 0
        self.keys = self.values = None
        self.is_initialized = False
        self.backend_state = {}  # attention backends' per-layer derived tensors (e.g. kernel tables); dropped here
        self._flags: list | None = None  # inside `_checked` with defer_check: the unchecked encoders' flags
        self._pending = None  # (device bool: all finite, the layer's state before the unverified update)

    def __repr__(self) -> str:
        return f"TurboQuantLayer(k={self.k_codec.kind}, v={self.v_codec.kind}, tokens={self.cumulative_length})"

    # -- CacheLayerMixin protocol --------------------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if key_states.shape[-1] != self.head_dim or value_states.shape[-1] != self.head_dim:
            raise ValueError(f"this layer was configured for head_dim {self.head_dim}, got keys "
                             f"{list(key_states.shape)} and values {list(value_states.shape)}")
        self.device, self.dtype = key_states.device, key_states.dtype
        b, h = key_states.shape[:2]
        empty = torch.empty(b, h, 0, self.head_dim, dtype=STORE_DTYPE, device=self.device)
        self.sink_k, self.sink_v, self.recent_k, self.recent_v = empty, empty.clone(), empty.clone(), empty.clone()
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Store new tokens [B, H, T, D]; returns them tagged with this layer for the compactkv attention."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.encoder is None and _ENCODER_FOR is not None:
            self.encoder = _ENCODER_FOR(key_states)
        self.check_pending()  # an earlier update nobody verified (one sync): it is checked before this one
        self._checked(self._store, key_states.detach(), value_states.detach())  # data only, no autograd history
        out_k, out_v = key_states, value_states
        setattr(out_k, TAG, self)
        setattr(out_v, TAG, self)
        return out_k, out_v

    def _checked(self, fn, *args) -> None:
        """Run fn(*args), a change of this layer's storage whose encodes and window admissions check their input:
        on an exception (e.g. non-finite input) the layer is restored (stored tensors are never written in place);
        with `defer_check` the checks are left as one pending device flag, joined to a pending one (same forward
        pass: the update, then the attention's first compression), whose rollback restores the earliest state."""
        before = dict(self.__dict__, chunks_k=list(self.chunks_k), chunks_v=list(self.chunks_v),
                      backend_state=dict(self.backend_state))
        self._flags = [] if self.defer_check else None
        try:
            fn(*args)
        except Exception:
            self.__dict__.update(before)
            raise
        flags, self._flags = self._flags, None
        if flags:
            flag = torch.stack(flags).all()
            self._pending = (flag, before) if self._pending is None else (self._pending[0] & flag, self._pending[1])

    def _store(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.cumulative_length += k.shape[-2]
        room = self.sink_tokens - self.sink_k.shape[-2]
        if room > 0:
            self.sink_k = torch.cat([self.sink_k, k[..., :room, :].to(STORE_DTYPE)], dim=-2)
            self.sink_v = torch.cat([self.sink_v, v[..., :room, :].to(STORE_DTYPE)], dim=-2)
            self._admit(self.sink_k[..., -room:, :], self.sink_v[..., -room:, :])
            k, v = k[..., room:, :], v[..., room:, :]
        if k.shape[-2]:
            self._push_recent(k, v)

    def _push_recent(self, k: torch.Tensor, v: torch.Tensor) -> None:
        if (self.calibrated and self.residual_length == 0 and self.recent_k.shape[-2] == 0
                and k.shape[-2] >= self.block_size):
            n = (k.shape[-2] // self.block_size) * self.block_size
            self._compress(k[..., :n, :], v[..., :n, :])
            k, v = k[..., n:, :], v[..., n:, :]
        if 0 < k.shape[-2] <= self.block_size and self.block_size >= 4 and self.n_compressed >= self.chunk_tokens:
            self._append_recent(k, v)  # decode at long context: in place (see there)
        elif k.shape[-2]:  # prompts (mostly compressed by the flush below) and short contexts: exact-size windows
            self.recent_k = torch.cat([self.recent_k, k.to(STORE_DTYPE)], dim=-2)
            self.recent_v = torch.cat([self.recent_v, v.to(STORE_DTYPE)], dim=-2)
            self._admit(self.recent_k[..., -k.shape[-2]:, :], self.recent_v[..., -k.shape[-2]:, :])
        if self.calibrated:  # otherwise the attention call's query statistics come first (see observe)
            self.flush()

    def _owned_window(self) -> tuple | None:
        """The window buffer record if recent_k / recent_v are still the views this layer made of it (anything
        that replaced them, e.g. crop, a batch map or a deep copy, gives up the buffer: never written again)."""
        w = self._window
        if w is not None and not (w[2] is self.recent_k and w[3] is self.recent_v):
            self._window = w = None  # let the buffers go with the views that still use them (none are counted twice)
        return w

    def _append_recent(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Decode-sized pushes once a chunk of tokens is compressed: the new tokens are written (with the fp16
        conversion) after the window inside a buffer of residual_length + block_size token slots (the largest
        window), and the window is a view of its first tokens: one copy per tensor per step instead of a
        conversion plus a concatenation of the whole window and a new allocation. `flush` moves what stays to
        the front after each compression (two copies per tensor: worth it for blocks of >= 4 tokens). The at
        most block_size free slots are counted as held bytes; at short contexts, where they would be a visible
        share, windows keep their exact size. Writes land after the current views, so an update that fails and
        is rolled back leaves them intact."""
        n, t = self.recent_k.shape[-2], k.shape[-2]
        w = self._owned_window()
        if w is not None and n + t <= w[0].shape[-2]:
            buf_k, buf_v = w[0], w[1]
        else:  # a new buffer holding the window at its start (never shared, never written in place before)
            b, h, _, d = self.recent_k.shape
            cap = max(n + t, self.residual_length + self.block_size)
            buf_k = torch.empty(b, h, cap, d, dtype=STORE_DTYPE, device=self.recent_k.device)
            buf_v = torch.empty_like(buf_k)
            buf_k[:, :, :n].copy_(self.recent_k)
            buf_v[:, :, :n].copy_(self.recent_v)
        buf_k[:, :, n:n + t].copy_(k)
        buf_v[:, :, n:n + t].copy_(v)
        self._set_window(buf_k, buf_v, n + t)
        self._admit(buf_k[:, :, n:n + t], buf_v[:, :, n:n + t])

    def _admit(self, k16: torch.Tensor, v16: torch.Tensor) -> None:
        """Tokens just stored in an fp16 window (sinks or recent) must be finite there, as compressed rows must
        be: checked now, or (defer_check, inside `_checked`) left as a flag with the update's other checks; a
        non-finite token would otherwise sit in the window and fail every later compression."""
        ok = torch.isfinite(k16).all() & torch.isfinite(v16).all()
        if self._flags is not None:
            self._flags.append(ok)
        elif not bool(ok):
            raise ValueError("input contains NaN or Inf, or a value beyond the float16 range (±65504) that the "
                             "fp16 window cannot hold; only finite values can be stored")

    def _set_window(self, buf_k: torch.Tensor, buf_v: torch.Tensor, n: int) -> None:
        self.recent_k, self.recent_v = buf_k[:, :, :n], buf_v[:, :, :n]
        self._window = (buf_k, buf_v, self.recent_k, self.recent_v)

    def flush(self) -> None:
        """Compress the recent tokens beyond the fp16 window, `block_size` at a time.

        Before the first compression of a `scale_keys` layer this is deferred to `observe`, which the attention
        function calls with the query; calling flush() directly compresses with whatever statistics exist.
        """
        if not self.is_initialized:
            return
        over = self.recent_k.shape[-2] - self.residual_length
        if over >= self.block_size:
            n = (over // self.block_size) * self.block_size
            self._compress(self.recent_k[..., :n, :], self.recent_v[..., :n, :])
            # what stays moves to the buffer's front, after a successful compression only: not while its check
            # is pending (a rollback would find the window's tokens overwritten)
            w = None if self._flags else self._owned_window()
            if w is not None:
                r = self.recent_k.shape[-2] - n
                w[0][:, :, :r].copy_(w[0][:, :, n:n + r].clone())  # (overlapping ranges: through a copy)
                w[1][:, :, :r].copy_(w[1][:, :, n:n + r].clone())
                self._set_window(w[0], w[1], r)
            else:
                self.recent_k, self.recent_v = self.recent_k[..., n:, :].clone(), self.recent_v[..., n:, :].clone()

    def observe(self, query: torch.Tensor) -> None:
        """Called by the attention function with the (post-RoPE) query [B, Hq, Tq, D] before it reads the cache.

        Until the first compression fixes `k_scale`, accumulates each KV head's per-channel query power (over its
        query group, batch and positions), then compresses what the window no longer holds.
        """
        if self.calibrated or not self.is_initialized:
            return
        b, hq, tq, d = query.shape
        h = self.recent_k.shape[1]
        if d != self.head_dim or hq % h:
            raise ValueError(f"query {list(query.shape)} does not fit this layer ({h} KV heads, head_dim "
                             f"{self.head_dim})")
        power = query.detach().double().pow(2).reshape(b, h, hq // h * tq, d).sum(dim=(0, 2))
        self._checked(self._observed, power, b * (hq // h) * tq)

    def _observed(self, power: torch.Tensor, count: int) -> None:
        self.q_power = power if self.q_power is None else self.q_power + power
        self.q_count += count
        self.flush()

    def _fit_scale(self, k: torch.Tensor) -> torch.Tensor | None:
        """Per-channel key scale s [H, D] from the query and (centered) key powers (`fit_key_scale`)."""
        return fit_key_scale(self.q_power, self.q_count, k)

    def _compress(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Encode tokens [B, H, n, D] once and append them to the compressed chunks."""
        if self.center_keys:
            if self.k_mean is None:
                self.k_mean = k.float().mean(dim=-2, keepdim=True)
            k = k.float() - self.k_mean
        if not self.calibrated:
            self.k_scale = self._fit_scale(k)
            self.calibrated = True
        if self.k_scale is not None:
            k = k.float() * self.k_scale[:, None, :]
        for codec, x in ((self.k_codec, k), (self.v_codec, v)):
            if codec.spec.family == "frac" and codec.outliers is None:
                codec.fit_outliers(x, keep_dims=(1,))  # per head, from the first tokens this layer compresses
        rows_k, rows_v = self._encode_pair(k, v)
        pos = 0
        while pos < rows_k.shape[-2]:
            if not self.chunks_k or self.chunks_k[-1].shape[-2] >= self.chunk_tokens:
                self.chunks_k.append(rows_k[..., pos:pos, :])
                self.chunks_v.append(rows_v[..., pos:pos, :])
            take = min(self.chunk_tokens - self.chunks_k[-1].shape[-2], rows_k.shape[-2] - pos)
            self.chunks_k[-1] = torch.cat([self.chunks_k[-1], rows_k[..., pos:pos + take, :]], dim=-2)
            self.chunks_v[-1] = torch.cat([self.chunks_v[-1], rows_v[..., pos:pos + take, :]], dim=-2)
            pos += take
        self.n_compressed += rows_k.shape[-2]

    def _encode(self, codec: Codec, x: torch.Tensor) -> torch.Tensor:
        rows = self.encoder(codec, x) if self.encoder is not None else None
        return codec.encode(x) if rows is None else rows

    def _encode_pair(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V rows; an encoder with a `check` method encodes both unchecked and checks them together (one
        device sync instead of two), before anything is stored."""
        check = getattr(self.encoder, "check", None)
        if check is None:
            return self._encode(self.k_codec, k), self._encode(self.v_codec, v)
        rows_k = self.encoder(self.k_codec, k, check=False)
        rows_v = self.encoder(self.v_codec, v, check=False)
        pairs = [(self.k_codec, rows_k), (self.v_codec, rows_v)]
        flags = getattr(self.encoder, "flags", None)
        if self._flags is not None and flags is not None:  # deferred: the device flag only, no sync
            flag = flags(pairs)
            if flag is not None:
                self._flags.append(flag)
        else:
            check(pairs)
        return (self.k_codec.encode(k) if rows_k is None else rows_k,
                self.v_codec.encode(v) if rows_v is None else rows_v)

    def pending_flag(self) -> torch.Tensor | None:
        """Device bool (True: every row of the unverified update is finite), or None when nothing is pending."""
        return None if self._pending is None else self._pending[0]

    def accept_pending(self) -> None:
        self._pending = None

    def rollback_pending(self) -> None:
        """Back to the state before the unverified update (its stored tensors were never written in place)."""
        if self._pending is not None:
            self.__dict__.update(self._pending[1])
            self._pending = None

    def check_pending(self) -> None:
        """Verify the pending update now (one device sync): ValueError, with the update undone, if it held
        non-finite rows."""
        check_pending_updates([self])

    def stored_length(self) -> int:
        """Tokens physically held (sinks + compressed + recent)."""
        if not self.is_initialized:
            return 0
        return self.sink_k.shape[-2] + self.n_compressed + self.recent_k.shape[-2]

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.sliding_window if self.is_sliding else -1

    def get_mask_sizes(self, query_length, *args) -> tuple[int, int]:
        """(kv_length, kv_offset) of what attention will see: the stored tokens plus the incoming ones."""
        if not isinstance(query_length, int):  # older transformers pass cache_position
            query_length = query_length.shape[0]
        return self.stored_length() + query_length, self.dropped

    def trim_window(self) -> None:
        """Sliding layers: drop whole compressed chunks, then fp16 recent tokens, that lie outside the window."""
        if not self.is_sliding or not self.is_initialized:
            return
        keep = self.sliding_window - 1
        self.backend_state = {}
        while self.chunks_k and self.stored_length() - self.chunks_k[0].shape[-2] >= keep:
            n = self.chunks_k[0].shape[-2]
            del self.chunks_k[0], self.chunks_v[0]
            self.n_compressed -= n
            self.dropped += n
        extra = self.stored_length() - keep
        if not self.chunks_k and extra > 0:
            self.recent_k, self.recent_v = self.recent_k[..., extra:, :].clone(), self.recent_v[..., extra:, :].clone()
            self.dropped += extra

    def crop(self, max_length: int) -> None:
        """Keep the first tokens: `max_length` >= 0 is the new length, < 0 the number of tokens to remove."""
        self.check_pending()
        new_len = self.cumulative_length + max_length if max_length < 0 else min(max_length, self.cumulative_length)
        if new_len < 0:
            raise ValueError(f"cannot remove {-max_length} tokens from a cache of {self.cumulative_length}")
        if not self.is_initialized or new_len == self.cumulative_length:
            return
        if new_len < self.dropped:
            raise ValueError(f"cannot crop to {new_len} tokens: this sliding layer already dropped the first "
                             f"{self.dropped}")
        keep = new_len - self.dropped
        self.backend_state = {}
        s = min(keep, self.sink_k.shape[-2])
        self.sink_k, self.sink_v = self.sink_k[..., :s, :], self.sink_v[..., :s, :]
        keep -= s
        c = min(keep, self.n_compressed)
        self.chunks_k, self.chunks_v = _crop_chunks(self.chunks_k, c), _crop_chunks(self.chunks_v, c)
        self.n_compressed = c
        keep -= c
        self.recent_k, self.recent_v = self.recent_k[..., :keep, :], self.recent_v[..., :keep, :]
        self.cumulative_length = new_len

    def reset(self) -> None:
        self._clear()

    def _map(self, fn) -> None:
        if not self.is_initialized:
            return
        self.check_pending()
        self.backend_state = {}  # derived from the tensors being replaced (and would keep them alive)
        self._window = None  # (the windows are replaced below: their buffers are not this layer's any more)
        self.sink_k, self.sink_v = fn(self.sink_k), fn(self.sink_v)
        self.recent_k, self.recent_v = fn(self.recent_k), fn(self.recent_v)
        self.chunks_k = [fn(c) for c in self.chunks_k]
        self.chunks_v = [fn(c) for c in self.chunks_v]
        if self.k_mean is not None:
            self.k_mean = fn(self.k_mean)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def offload(self):
        self._map(lambda t: t.to("cpu", non_blocking=True))
        if self.k_scale is not None:  # per head, not per batch row: moved, never batch-indexed
            self.k_scale = self.k_scale.to("cpu", non_blocking=True)

    def prefetch(self):
        if self.is_initialized:
            self._map(lambda t: t.to(self.device, non_blocking=True))
            if self.k_scale is not None:
                self.k_scale = self.k_scale.to(self.device, non_blocking=True)

    def decode_keys(self, rows: torch.Tensor) -> torch.Tensor:
        """Compressed key rows [..., row_bytes] back to keys in the model's space (float32), undoing the
        channel scale and the centering."""
        k = self.k_codec.decode(rows)
        if self.k_scale is not None:
            k = k / self.k_scale[:, None, :]
        return k + self.k_mean if self.k_mean is not None else k

    def __deepcopy__(self, memo):
        self.check_pending()  # (a copy must not hold the snapshot)
        new = copy.copy(self)
        new.k_codec, new.v_codec = copy.copy(self.k_codec), copy.copy(self.v_codec)
        new.chunks_k, new.chunks_v = [c.clone() for c in self.chunks_k], [c.clone() for c in self.chunks_v]
        new.backend_state = {}
        new._window = None  # the copy's windows are clones: it must not hold (or write) this layer's buffers
        for name in ("sink_k", "sink_v", "recent_k", "recent_v"):
            t = getattr(self, name)
            setattr(new, name, None if t is None else t.clone())
        return new

    # -- accounting ----------------------------------------------------------------------------------------------
    def memory(self) -> dict:
        """Bytes really held: compressed rows, the fp16 windows (their buffers' free slots included), per-head
        metadata (key means, outlier channel maps), and the fp16 equivalent of the stored tokens (all of them, and
        the compressed ones alone)."""
        if not self.is_initialized:
            return {"compressed_bytes": 0, "window_bytes": 0, "aux_bytes": 0, "fp16_bytes": 0, "tokens": 0,
                    "codec_bytes": 0, "compressed_fp16_bytes": 0}
        comp = sum(_storage_bytes(c) for c in self.chunks_k + self.chunks_v)
        win = sum(_storage_bytes(t) for t in (self.sink_k, self.sink_v, self.recent_k, self.recent_v))
        aux = [self.k_mean, self.k_scale] + [c.outliers for c in (self.k_codec, self.v_codec)]  # per-head metadata
        aux_bytes = sum(_storage_bytes(t) for t in aux if t is not None)
        b, h = self.sink_k.shape[:2]
        return {"compressed_bytes": comp, "window_bytes": win, "aux_bytes": aux_bytes, "tokens": self.stored_length(),
                "fp16_bytes": 2 * 2 * b * h * self.head_dim * self.stored_length(),
                "compressed_fp16_bytes": 2 * 2 * b * h * self.head_dim * self.n_compressed,
                "codec_bytes": b * h * (self.k_codec.nbytes(self.n_compressed) + self.v_codec.nbytes(self.n_compressed))}


def _crop_chunks(chunks: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    out, left = [], n
    for c in chunks:
        if left <= 0:
            break
        out.append(c if c.shape[-2] <= left else c[..., :left, :].clone())
        left -= c.shape[-2]
    return out


def _storage_bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def check_pending_updates(layers, note: str = "") -> None:
    """Verify the unchecked updates of `layers` (`TurboQuantLayer.defer_check`) with one device sync. If any held
    non-finite rows, every pending update is undone and ValueError (the encoder's message + note) is raised."""
    pending = [(layer, layer.pending_flag()) for layer in layers]
    pending = [(layer, flag) for layer, flag in pending if flag is not None]
    if not pending:
        return
    if bool(torch.stack([flag.to(pending[0][1].device) for _, flag in pending]).all()):
        for layer, _ in pending:
            layer.accept_pending()
        return
    for layer, _ in pending:
        layer.rollback_pending()
    raise ValueError(getattr(pending[0][0].encoder, "MESSAGE", "input contains NaN or Inf") + note)
