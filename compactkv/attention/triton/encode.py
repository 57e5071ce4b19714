"""Launcher for the in-place encode kernel: turboB rows bit-identical to `Codec.encode`, written into a buffer."""

from __future__ import annotations

import functools
import math
import os

import torch

from ...core.codebook import lloyd_max
from ...core.codec import Codec, norm_scale
from ...core.switches import env_switch
from ...core.rotation import get_rotation
from .kernels_encode import encode_half_kernel, encode_mse_kernel, encode_pair_kernel, encode_row_kernel

ENCODE_HEAD_DIMS = (32, 64, 128, 256)
ROW_HEAD_DIMS = (32, 64, 128)  # encode_row_kernel (one row per thread); 256 would not fit a thread's registers
ENCODE_KERNELS = ("auto", "row", "lanes", "half")
HALF_HEAD_DIMS = (64, 128)  # encode_half_kernel (a row over two threads; its words split in halves)
# (head_dim, bits) where "auto" takes the half-row kernel over the row kernel for prompts: a row over two threads
# has ~15-26% more instructions in all but half the code and registers per thread, so more warps issue (H200, 8 x
# 8 heads x 1 M fp16 values, 32 rows per program: head_dim 128 turbo4 / turbo3 / turbo2 176.9 -> 150.0, 130.5 ->
# 116.0, 109.3 -> 97.4 us; head_dim 64 turbo4 159.0 -> 142.5, but turbo3 100.0 -> 113.3 and turbo2 79.6 -> 97.8;
# docs/kernels.md, session 35)
HALF_DEFAULT = frozenset({(128, 2), (128, 3), (128, 4), (64, 4)})
# the half-row kernel's default rows per program by bits, the fastest of 16 / 32 / 64 at head_dim 128 (H200, two
# calls: turbo2 95.0-95.8 us at 16 vs 97.0-97.4 at 32; turbo3 116.0-116.1 at 32 vs 120.7-121.4 at 16; turbo4
# 150.0-150.5 at 32 vs 156.9-157.0 at 16)
HALF_ROWS = {2: 16, 3: 32, 4: 32}
GRID_Y = 65535  # CUDA's limit on a grid's second dimension (the row kernel's batch rows x heads)
# "auto" takes the row (or half-row) kernel from this many tokens per batch row and head: a thread runs a whole
# row's ~5,600 instructions, so a decode step's one token waits for one thread; the lanes kernel spreads it over a
# program
# (H200, one static layer's graphed one-token K+V update, 8 heads, head_dim 128, turbo4: 19.0 -> 12.4 us;
# scripts/static_update_bench.py, docs/kernels.md)
ROW_MIN_TOKENS = 16
# a static layer's decode-step K and V in one launch (encode_pair, session 18); COMPACTKV_ENCODE_PAIR=0: two
# launches, for A/B runs
PAIR = env_switch("ENCODE_PAIR", default=True)


def encode_unsupported(codec: Codec) -> str | None:
    """Why the encode kernel cannot produce `codec`'s rows in place (encode_rows), or None if it can."""
    if codec.spec.family != "mse":
        return f"{codec.kind}: only turbo2/3/4 rows are encoded in place by the kernel"
    if codec.head_dim not in ENCODE_HEAD_DIMS:
        return f"head_dim {codec.head_dim}: the encode kernel takes {ENCODE_HEAD_DIMS}"
    return None


def frac_unsupported(codec: Codec) -> str | None:
    """Why `encode_frac` cannot produce `codec`'s turboB.5 rows, or None if it can."""
    if codec.spec.family != "frac":
        return f"{codec.kind}: not a fractional kind"
    if codec.head_dim // 2 not in ENCODE_HEAD_DIMS:
        return f"head_dim {codec.head_dim}: the encode kernel takes halves of {ENCODE_HEAD_DIMS}"
    if codec.outliers is None:
        return f"{codec.kind}: no outlier channel set yet (Codec.encode or fit_outliers picks it)"
    return None


@functools.lru_cache(maxsize=32)
def _group_codecs(b: int, head_dim: int, seed: int, norm_correction: bool, unbiased: bool) -> tuple[Codec, Codec]:
    """A turboB.5 codec's two groups as turboB+1 and turboB codecs of head_dim/2 (the same quantizers: bits,
    rotation seeds seed and seed + 1, codebooks of dimension head_dim/2), whose rows the kernel encodes."""
    return (Codec(f"turbo{b + 1}", head_dim // 2, seed=seed, norm_correction=norm_correction, unbiased=unbiased),
            Codec(f"turbo{b}", head_dim // 2, seed=seed + 1, norm_correction=norm_correction, unbiased=unbiased))


def encode_frac(codec: Codec, x: torch.Tensor) -> torch.Tensor:
    """turboB.5 rows of x [B, H, T, D], bit-identical to `codec.encode(x)`: each channel group gathered and
    encoded by the kernel as a turbo row of D/2 values, then laid out as [norm_hi][norm_lo][codes_hi][codes_lo]."""
    why = frac_unsupported(codec)
    if why:
        raise ValueError(why)
    hi_codec, lo_codec = _group_codecs(codec.spec.bits, codec.head_dim, codec.seed, codec.norm_correction,
                                       codec.unbiased)
    x_hi, x_lo = codec.group_parts(x)
    hi, lo = encode_rows(hi_codec, x_hi), encode_rows(lo_codec, x_lo)
    return torch.cat([hi[..., :2], lo[..., :2], hi[..., 2:], lo[..., 2:]], dim=-1)


@functools.lru_cache(maxsize=32)
def _constants(head_dim: int, bits: int, seed: int, device: torch.device):
    """(signs, centroids, boundaries) float32 on `device`, the same values the CPU quantizer uses."""
    cb = lloyd_max(head_dim, bits)
    return (get_rotation(head_dim, seed).signs.to(device),
            torch.tensor(cb.centroids, dtype=torch.float32).to(device),
            torch.tensor(cb.boundaries, dtype=torch.float32).to(device))


@functools.lru_cache(maxsize=32)
def _row_constants(head_dim: int, bits: int, seed: int, device: torch.device):
    """encode_row_kernel's (signs as bits, boundary midpoints, centroids squared float32 on `device`): mids[i] is
    the midpoint of boundary i and the next float32 up, exact as a Python float (double)."""
    cb = lloyd_max(head_dim, bits)
    c = torch.tensor(cb.centroids, dtype=torch.float32)
    b = torch.tensor(cb.boundaries, dtype=torch.float32)
    up = torch.nextafter(b, torch.tensor(float("inf")))
    mid = (b.double() + up.double()) / 2
    signs = sum(1 << i for i, s in enumerate(get_rotation(head_dim, seed).signs.tolist()) if s < 0)
    return signs, tuple(mid.tolist()), (c * c).to(device)


def _checked(codec: Codec, x: torch.Tensor, out: torch.Tensor | None, positions: torch.Tensor | None,
             norms: torch.Tensor | None, center: torch.Tensor | None, scale: torch.Tensor | None):
    """encode_rows' arguments checked (ValueError naming what was wrong): (x with a unit last stride, out,
    allocated when None)."""
    if x.dim() != 4 or x.shape[-1] != codec.head_dim or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"expected [B, H, T, {codec.head_dim}] fp16/bf16/fp32, got {x.dtype} {list(x.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    b, h, t, d = x.shape
    width = codec.row_bytes - 2 if norms is not None else codec.row_bytes
    if out is None:
        if norms is not None:
            raise ValueError("planar encoding needs the code plane (out) next to the norms")
        out = torch.empty(b, h, t, codec.row_bytes, dtype=torch.uint8, device=x.device)
    if out.dtype != torch.uint8 or out.dim() != 4 or out.shape[:2] != (b, h) or out.shape[-1] != width \
            or out.stride(-1) != 1:
        raise ValueError(f"out must be uint8 [{b}, {h}, T, {width}] with contiguous rows, got "
                         f"{out.dtype} {list(out.shape)}")
    if out.data_ptr() % 2 or any(s % 2 for s in out.stride()[:3]):
        raise ValueError("out's rows must start at even byte addresses (the fp16 norm and the 16-bit code stores)")
    if norms is not None and (norms.dtype != torch.float16 or norms.shape != out.shape[:3] or norms.stride(-1) != 1):
        raise ValueError(f"norms must be fp16 {list(out.shape[:3])} with unit token stride, got {norms.dtype} "
                         f"{list(norms.shape)}")
    if positions is None and out.shape[2] < t:
        raise ValueError(f"out holds {out.shape[2]} tokens, {t} given")
    if center is not None and (center.dtype != torch.float32 or center.shape != (b, h, 1, d) or center.stride(-1) != 1
                               or center.device != x.device):
        raise ValueError(f"center must be float32 [{b}, {h}, 1, {d}] with unit stride over head_dim on {x.device}, "
                         f"got {center.dtype} {list(center.shape)} on {center.device}")
    if scale is not None and (scale.dtype != torch.float32 or scale.shape != (h, d) or scale.stride(-1) != 1
                              or scale.device != x.device):
        raise ValueError(f"scale must be float32 [{h}, {d}] with unit stride over head_dim on {x.device}, got "
                         f"{scale.dtype} {list(scale.shape)} on {scale.device}")
    return x, out


def _stored_scale(codec: Codec) -> float:
    """The float32 factor the kernels multiply stored norms by (Codec(unbiased=True)'s; 1 otherwise)."""
    return norm_scale(codec.head_dim, codec.spec.bits, codec.norm_correction) if codec.unbiased else 1.0


def _bh_strides(t: torch.Tensor | None) -> tuple[int, int]:
    """(batch, head) strides of an optional per-(b, h) operand (norm plane, key center); (0, 0) without one."""
    return (t.stride(0), t.stride(1)) if t is not None else (0, 0)


def _which_kernel(codec: Codec, x: torch.Tensor, kernel: str | None) -> str:
    """The kernel encode_rows(kernel=...) takes for x: "row", "half" or "lanes"; ValueError for a bad name, in the
    argument or in COMPACTKV_ENCODE_KERNEL, or a head_dim the named kernel does not take."""
    if kernel is None:  # the environment picks between auto and lanes only: "row" would fail at head_dim 256
        kernel = os.environ.get("COMPACTKV_ENCODE_KERNEL", "auto")
        if kernel not in ("auto", "lanes"):
            raise ValueError(f"COMPACTKV_ENCODE_KERNEL must be 'auto' or 'lanes', got {kernel!r}")
    if kernel not in ENCODE_KERNELS:
        raise ValueError(f"kernel must be one of {ENCODE_KERNELS}, got {kernel!r}")
    if kernel == "row" and codec.head_dim not in ROW_HEAD_DIMS:
        raise ValueError(f"head_dim {codec.head_dim}: the row kernel takes {ROW_HEAD_DIMS}")
    if kernel == "half" and codec.head_dim not in HALF_HEAD_DIMS:
        raise ValueError(f"head_dim {codec.head_dim}: the half-row kernel takes {HALF_HEAD_DIMS}")
    if kernel == "auto":
        if codec.head_dim not in ROW_HEAD_DIMS or x.shape[-2] < ROW_MIN_TOKENS:
            return "lanes"
        return "half" if (codec.head_dim, codec.spec.bits) in HALF_DEFAULT else "row"
    return kernel


def encode_rows(codec: Codec, x: torch.Tensor, out: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, block_rows: int | None = None,
                norms: torch.Tensor | None = None, kernel: str | None = None,
                center: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Encode x [B, H, T, D] (fp16/bf16/fp32) into `codec` rows.

    out: uint8 [B, H, T_out, row_bytes] with contiguous rows; token t of batch row b goes to out[b, :, p_b + t]
    with p_b = positions[b] (int32 [B] on the device) or 0. Allocated as [B, H, T, row_bytes] when None.
    norms: planar storage: out is then the code plane uint8 [B, H, T_out, row_bytes - 2] and the fp16 norms go to
    norms [B, H, T_out] (unit token stride) at the same positions.
    kernel: "row" (encode_row_kernel, one row per thread: head_dim 32/64/128), "half" (encode_half_kernel, a row
    over two threads: head_dim 64/128; the same bytes), "lanes" (encode_mse_kernel, a row across lanes: every
    head_dim), "auto" (from ROW_MIN_TOKENS tokens per row the half-row kernel where HALF_DEFAULT lists the
    head_dim and bits, else the row kernel where it applies: the faster for prompts; the lanes kernel for decode
    steps); None reads COMPACTKV_ENCODE_KERNEL (auto or lanes; default auto). The row kernel compiles for 9-15 s
    at head_dim 128 (a 2-vCPU CPU, docs/kernels.md) per (kind, rotation seed, layout) on first use (Triton caches
    it on disk), the lanes kernel in ~3 s.
    block_rows: rows per program (row: a multiple of 32 up to 256, default 64, the fastest of 64/128/256 on an
    H200 for every kind; half: a multiple of 16 up to 128, default HALF_ROWS[bits]; lanes: a power of two,
    default 16).
    center: float32 [B, H, 1, D] subtracted from x in float32 inside the kernel (the rows are those of
    Codec.encode(x.float() - center): a centered cache's keys without a separate subtraction and float32 copy);
    scale: float32 [H, D], multiplied after that (Codec.encode((x.float() - center) * scale[:, None, :]): keys of a
    cache with query-aware key scaling).
    No finiteness or fp16-range check is made here (Codec.encode makes them); returns out.
    """
    why = encode_unsupported(codec)
    if why:
        raise ValueError(why)
    name = _which_kernel(codec, x, kernel)
    row, half = name != "lanes", name == "half"
    if block_rows is None:
        block_rows = HALF_ROWS[codec.spec.bits] if half else 64 if row else 16
    if half and (block_rows % 16 or not 16 <= block_rows <= 128):
        raise ValueError(f"block_rows {block_rows}: the half-row kernel takes a multiple of 16 from 16 to 128")
    if row and not half and (block_rows % 32 or not 32 <= block_rows <= 256):
        raise ValueError(f"block_rows {block_rows}: the row kernel takes a multiple of 32 from 32 to 256")
    if not row and (block_rows < 1 or block_rows & (block_rows - 1)):
        raise ValueError(f"block_rows {block_rows}: the lanes kernel takes a power of two")
    x, out = _checked(codec, x, out, positions, norms, center, scale)
    b, h, t, d = x.shape
    if b * h * t == 0:
        return out
    bits = codec.spec.bits
    stored_scale = _stored_scale(codec)
    norm_strides = _bh_strides(norms)
    common = dict(D=d, LOG2D=int(math.log2(d)), BITS=bits, NORM_CORR=codec.norm_correction,
                  UNBIASED=codec.unbiased, HAS_POS=positions is not None, BLOCK_R=block_rows,
                  PLANAR=norms is not None, CENTER=center is not None, SCALE=scale is not None)
    # one program per block of tokens of one (batch row, head), batch rows in slices of grid-y size
    per = GRID_Y // h
    if per < 1:
        raise ValueError(f"{h} heads: the encode kernel takes at most {GRID_Y}")
    if row:
        signs, mids, c2 = _row_constants(d, bits, codec.seed, x.device)
        kernel_args = (c2,)
        halves = d * bits // 32 if half else d * bits // 16  # 16-bit halves of a thread's code words
        options = dict(SIGNS=signs, MIDS=mids, LOG2H=max(1, (halves - 1).bit_length()),
                       num_warps=block_rows // 16 if half else block_rows // 32)
    else:
        signs, cents, bounds = _constants(d, bits, codec.seed, x.device)
        kernel_args = (signs, cents, bounds)
        options = dict(num_warps=4)
    fn = encode_half_kernel if half else encode_row_kernel if row else encode_mse_kernel
    center_strides = _bh_strides(center)
    for b0 in range(0, b, per):
        xs, os_, ps, ns, cs = x, out, positions, norms, center
        if b > per:  # (views only when the batch is split: a slice per call costs host time)
            xs, os_ = x[b0:b0 + per], out[b0:b0 + per]
            ps = positions[b0:b0 + per] if positions is not None else None
            ns = norms[b0:b0 + per] if norms is not None else None
            cs = center[b0:b0 + per] if center is not None else None
        fn[(math.ceil(t / block_rows), xs.shape[0] * h)](
            xs, xs.stride(0), xs.stride(1), xs.stride(2), os_, os_.stride(0), os_.stride(1), os_.stride(2),
            ps if ps is not None else kernel_args[0], *kernel_args, h, t, 1.0 / math.sqrt(d), stored_scale,
            ns if ns is not None else os_, *norm_strides, cs if cs is not None else xs, *center_strides,
            scale if scale is not None else xs, scale.stride(0) if scale is not None else 0,
            enable_fp_fusion=False, **options, **common)
    return out


class LayerEncoder:
    """`TurboQuantLayer.encoder` on CUDA. Called as encoder(codec, x): the kernel's rows for x [B, H, T, D] where
    it applies, else None (the layer then calls `codec.encode`); raises ValueError, as `codec.encode` does, for
    non-finite input or a norm beyond the float16 range (one device sync). With check=False the rows come back
    unchecked and `check` does it for several outputs with one sync: the layer encodes K and V, then checks both
    before it stores anything (a 32K prefill in two chunks synced 128 times, one per K/V, layer and chunk:
    docs/performance.md, session 9)."""

    MESSAGE = ("input contains NaN or Inf, or a vector norm beyond the float16 range (±65504); only finite values "
               "whose norms fit float16 can be encoded")

    def __call__(self, codec: Codec, x: torch.Tensor, check: bool = True) -> torch.Tensor | None:
        if not x.is_cuda or x.dim() != 4 or x.dtype == torch.float64:
            return None
        if encode_unsupported(codec) is None:
            rows = encode_rows(codec, x)
        elif frac_unsupported(codec) is None:
            rows = encode_frac(codec, x)
        else:
            return None
        if check:
            self.check([(codec, rows)])
        return rows

    def flags(self, pairs) -> torch.Tensor | None:
        """Device bool: every (codec, rows) pair (rows None: skipped) holds finite norms only; None if no rows.
        No sync (`TurboQuantLayer.defer_check` keeps it for one check per forward pass)."""
        flags = []
        for codec, rows in pairs:
            if rows is not None and rows.numel():
                nb = 2 if encode_unsupported(codec) is None else 4
                flags.append(torch.isfinite(rows[..., :nb].contiguous().view(torch.float16)).all())
        return torch.stack(flags).all() if flags else None

    def check(self, pairs) -> None:
        """Raise ValueError if any (codec, rows) pair (rows None: skipped) holds a non-finite norm; one sync."""
        flag = self.flags(pairs)
        if flag is not None and not bool(flag):
            raise ValueError(self.MESSAGE)


layer_encoder = LayerEncoder()


def encode_into(codec: Codec, x: torch.Tensor, target, positions: torch.Tensor,
                center: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> None:
    """StaticTurboQuantLayer encoder: the kernel where it applies (in place, capturable), else Codec.encode.
    target: a rows buffer, or the (codes, norms) planes of planar storage; center, scale: see encode_rows."""
    if x.is_cuda and encode_unsupported(codec) is None:
        if isinstance(target, tuple):
            encode_rows(codec, x, target[0], positions=positions, norms=target[1], center=center, scale=scale)
        else:
            encode_rows(codec, x, target, positions=positions, center=center, scale=scale)
        return
    from ...cache.static import centered_scaled, write_encoded
    write_encoded(codec.encode(centered_scaled(x, center, scale)), target, positions)


def _on_cuda(x: torch.Tensor) -> bool:
    return x.is_cuda


def encode_pair(k_codec: Codec, keys: torch.Tensor, k_target, v_codec: Codec, values: torch.Tensor, v_target,
                positions: torch.Tensor, center: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                block_rows: int | None = None) -> bool:
    """A static layer's keys and values encoded by one launch of the lanes kernel (`encode_pair_kernel`), with the
    rows each would get from encode_rows(kernel="lanes") alone (keys centered and scaled by center/scale).

    Takes what a decode step writes: both inputs on CUDA with the same [B, H, T, D] shape, both codecs encoded by
    the kernel (encode_unsupported), targets of one layout (rows buffers, or (codes, norms) planes), and T where
    encode_rows would pick the lanes kernel anyway (below ROW_MIN_TOKENS unless COMPACTKV_ENCODE_KERNEL=lanes) and
    B x H within one grid. Returns False, writing nothing, for anything else (the caller then encodes each);
    ValueError for arguments encode_rows would refuse."""
    planar = isinstance(k_target, tuple)
    if (not PAIR or positions is None or not _on_cuda(keys) or keys.shape != values.shape or keys.device != values.device
            or planar != isinstance(v_target, tuple) or encode_unsupported(k_codec) or encode_unsupported(v_codec)
            or k_codec.head_dim != v_codec.head_dim or _which_kernel(k_codec, keys, None) != "lanes"
            or keys.shape[0] * keys.shape[1] > GRID_Y):
        return False
    launch_pair(k_codec, keys, k_target, v_codec, values, v_target, positions, center, scale, block_rows)
    return True


def launch_pair(k_codec: Codec, keys: torch.Tensor, k_target, v_codec: Codec, values: torch.Tensor, v_target,
                positions: torch.Tensor, center: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                block_rows: int | None = None) -> None:
    """encode_pair's launch without its choice of when (any T); ValueError for arguments encode_rows would refuse,
    targets of two layouts, or more batch rows x heads than one grid takes. block_rows (tokens per program, a power
    of two): by default the smallest power of two >= T, at most 16: a one-token step's program then holds one row
    (sm_90, turbo4 at head_dim 128: 912 instructions for both operands against 2,968 with 16 rows, 15 of them
    masked)."""
    for codec in (k_codec, v_codec):
        why = encode_unsupported(codec)
        if why:
            raise ValueError(why)
    if positions is None:
        raise ValueError("encode_pair writes at each batch row's position: positions (int32 [B]) is required")
    planar = isinstance(k_target, tuple)
    if planar != isinstance(v_target, tuple):
        raise ValueError("keys and values must both go to rows buffers or both to (codes, norms) planes")
    if keys.shape != values.shape or k_codec.head_dim != v_codec.head_dim:
        raise ValueError(f"keys {list(keys.shape)} (head_dim {k_codec.head_dim}) and values {list(values.shape)} "
                         f"(head_dim {v_codec.head_dim}) must have one shape")
    if block_rows is None:
        block_rows = min(16, 1 << max(0, keys.shape[-2] - 1).bit_length())
    if block_rows < 1 or block_rows & (block_rows - 1):
        raise ValueError(f"block_rows {block_rows}: the lanes kernel takes a power of two")
    k_out, k_norms = k_target if planar else (k_target, None)
    v_out, v_norms = v_target if planar else (v_target, None)
    keys, k_out = _checked(k_codec, keys, k_out, positions, k_norms, center, scale)
    values, v_out = _checked(v_codec, values, v_out, positions, v_norms, None, None)
    b, h, t, d = keys.shape
    if b * h > GRID_Y:
        raise ValueError(f"{b} batch rows x {h} heads: one pair launch takes at most {GRID_Y}")
    if b * h * t == 0:
        return
    args = []
    for codec, x, out, norms in ((k_codec, keys, k_out, k_norms), (v_codec, values, v_out, v_norms)):
        args.append((x, x.stride(0), x.stride(1), x.stride(2), out, out.stride(0), out.stride(1), out.stride(2),
                     *_constants(d, codec.spec.bits, codec.seed, x.device), _stored_scale(codec),
                     norms if norms is not None else out, *_bh_strides(norms)))
    extras = (center if center is not None else keys, *_bh_strides(center),
              scale if scale is not None else keys, scale.stride(0) if scale is not None else 0)
    encode_pair_kernel[(math.ceil(t / block_rows), b * h, 2)](
        *args[0], *extras, *args[1], positions, h, t, 1.0 / math.sqrt(d),
        D=d, LOG2D=int(math.log2(d)), K_BITS=k_codec.spec.bits, K_NORM_CORR=k_codec.norm_correction,
        K_UNBIASED=k_codec.unbiased, V_BITS=v_codec.spec.bits, V_NORM_CORR=v_codec.norm_correction,
        V_UNBIASED=v_codec.unbiased, HAS_POS=True, BLOCK_R=block_rows, PLANAR=planar, CENTER=center is not None,
        SCALE=scale is not None, num_warps=4, enable_fp_fusion=False)


encode_into.pair = encode_pair  # StaticTurboQuantLayer tries both operands in one launch first (cache/static.py)
