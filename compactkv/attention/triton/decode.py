"""Launchers for split-K decode attention over packed rows: checks, codebook and chunk tables, grid, split choice.

`attend_packed` is the whole compressed part of one attention call: it takes the query already mapped into the K
segment space and returns the output still in the V segment space (the caller applies the inverse map once).
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass

import torch
import triton

from ...core.codebook import lloyd_max
from ...core.codec import Codec
from .fastasm import decode_asm, table_words
from .kernels_decode import (FAMILY_F16, FAMILY_FRAC, FAMILY_MSE, FAMILY_Q8_0, decode_reduce_kernel,
                             decode_split_kernel, dequant_kernel)
from .kernels_fast import decode_fast_kernel
from .kernels_finish import decode_finish_kernel
from .kernels_query import query_map_kernel

LOG2E = 1.4426950408889634
HEAD_DIMS = (32, 64, 128, 256)
MAX_ROWS = 32  # query rows (GQA group x query tokens) per program; more use more programs (64 rows break
#               Triton 3.6 on sm_90: "Illegal shared layout" in TritonGPUOptimizeDotOperands)


@dataclass(frozen=True)
class SplitPartials:
    """What the split kernels leave for a merge: o fp32 [B*H*NQB, S, BLOCK_M, D] unnormalised accumulators (V
    segment space), ml fp32 [B*H*NQB, S, 2, BLOCK_M] running max and sum (log2 units), S = num_splits."""

    o: torch.Tensor
    ml: torch.Tensor
    num_splits: int
    block_m: int
    g: int
    tq: int
    tqb: int
    nqb: int


@dataclass(frozen=True)
class PackedKind:
    """What the kernels need to know about a codec: family code, index bits, head_dim, bytes per row."""

    family: int
    bits: int
    head_dim: int
    row_bytes: int
    kind: str


def packed_kind(codec: Codec) -> PackedKind | None:
    """The kernel description of `codec`, or None when only the torch reference handles it (see unsupported)."""
    return None if unsupported(codec) else PackedKind(
        {"f16": FAMILY_F16, "q8_0": FAMILY_Q8_0, "mse": FAMILY_MSE, "frac": FAMILY_FRAC}[codec.spec.family],
        codec.spec.bits, codec.head_dim, codec.row_bytes, codec.kind)


def unsupported(codec: Codec) -> str | None:
    """Why the Triton kernels cannot read `codec`'s rows, or None if they can."""
    if codec.spec.family not in ("f16", "q8_0", "mse", "frac"):
        return f"{codec.kind}: +qjl kinds run on the torch reference"
    if codec.head_dim not in HEAD_DIMS:
        return f"head_dim {codec.head_dim}: the kernels take {HEAD_DIMS}"
    hi = codec.outliers
    if hi is not None and not (hi.dim() == 1 or (hi.dim() == 3 and hi.shape[1] == 1)):
        return f"{codec.kind}: outlier channel sets of shape {list(hi.shape)} (the kernels take [d/2] or [H, 1, d/2])"
    return None


def _i32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


@functools.lru_cache(maxsize=64)
def codebook_table(kind: PackedKind, lut: bool, device: torch.device) -> torch.Tensor:
    """fp16 centroids [2**bits], or with lut the int32 pair table [2**(2*bits)] (low half: even index)."""
    if kind.family == FAMILY_FRAC:  # the B+1-bit group's centroids, then the B-bit group's (both of d/2 dims)
        return torch.cat([torch.tensor(lloyd_max(kind.head_dim // 2, b).centroids, dtype=torch.float32).half()
                          for b in (kind.bits + 1, kind.bits)]).to(device)
    if kind.family != FAMILY_MSE:
        return torch.zeros(1, dtype=torch.int32, device=device)
    c16 = torch.tensor(lloyd_max(kind.head_dim, kind.bits).centroids, dtype=torch.float32).half()
    if not lut:
        return c16.to(device)
    n = 2**kind.bits
    u = c16.view(torch.int16).long() & 0xFFFF
    i = torch.arange(n * n)
    return _i32(u[i % n] | (u[i // n] << 16)).to(device)


@functools.lru_cache(maxsize=64)
def segment_maps(codec_key: tuple, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(fwd, adj) as dense fp32 [D, D] matrices acting on row vectors (x @ fwd = segment fwd of x); None = identity."""
    kind, head_dim, seed = codec_key
    codec = Codec(kind, head_dim, seed=seed)
    if codec.spec.family != "mse":
        return None, None
    seg = codec.segments()[0]
    eye = torch.eye(head_dim, dtype=torch.float64)
    return seg.fwd(eye).float().to(device), seg.adj(eye).float().to(device)


def codec_maps(codec: Codec, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(fwd, adj): dense fp32 maps on row vectors into and out of the space the kernels read `codec`'s rows in;
    [D, D], or [H, D, D] for fractional kinds with per-head outlier channels; None = identity."""
    if codec.spec.family == "frac":
        return _frac_maps(codec, torch.device(device))
    return segment_maps((codec.kind, codec.head_dim, codec.seed), torch.device(device))


_FRAC_MAPS: "weakref.WeakKeyDictionary[Codec, tuple]" = weakref.WeakKeyDictionary()


def _frac_maps(codec: Codec, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A turboB.5 codec's maps: x @ fwd puts the high-bit group's rotated channels at even dims and the low
    group's at odd dims (the order `_frac_tile` decodes rows in); adj = fwd^T (gather + rotations: orthogonal).
    Per codec (its outlier channels are fitted per layer), rebuilt if they change."""
    hi = codec.outliers
    if hi is None:  # nothing encoded yet, so no row to read: any orthogonal map serves the fp16 windows
        return None, None
    cached = _FRAC_MAPS.get(codec)
    if cached is not None and cached[0] is hi and cached[1] == device:
        return cached[2]
    d = codec.head_dim
    eye = torch.eye(d, dtype=torch.float64)
    if hi.dim() == 3:  # [H, 1, d/2]: one map per head
        eye = eye.expand(hi.shape[0], d, d)
    parts = codec.query_parts(eye.double())
    fwd = torch.stack(parts, dim=-1).reshape(*eye.shape[:-1], d)
    maps = fwd.float().to(device), fwd.transpose(-1, -2).float().contiguous().to(device)
    _FRAC_MAPS[codec] = (hi, device, maps)
    return maps


def query_key_map(k_codec: Codec, k_scale: torch.Tensor | None, device) -> torch.Tensor | None:
    """The map taking a query into the space `k_codec`'s rows are read in, for keys stored scaled by k_scale
    [H, D] (TurboQuantLayer.scale_keys): (q / k_scale) @ fwd = q @ (diag(1 / k_scale) fwd), fp32 [D, D] or
    [H, D, D] on row vectors; None = identity. Decode and prefill both score the query through it."""
    fwd, _ = codec_maps(k_codec, device)
    if k_scale is None:
        return fwd
    base = fwd if fwd is not None else torch.eye(k_codec.head_dim, device=device)
    return base / k_scale.float().to(device)[:, :, None]


def chunk_table(chunks: list[torch.Tensor]) -> torch.Tensor:
    """int64 [n, 3] (address, batch stride, head stride in bytes) of row chunks uint8 [B, H, c, row_bytes]."""
    rows = []
    for c in chunks:
        if c.dtype != torch.uint8 or c.dim() != 4 or c.stride(-1) != 1 or c.stride(-2) != c.shape[-1]:
            raise ValueError(f"expected uint8 rows [B, H, T, row_bytes] with contiguous rows, got {c.dtype} "
                             f"{list(c.shape)} strides {c.stride()}")
        rows.append((c.data_ptr(), c.stride(0), c.stride(1)))
    return torch.tensor(rows, dtype=torch.int64).to(chunks[0].device, non_blocking=True)


def kernel_config(k_kind: PackedKind, v_kind: PackedKind) -> tuple[int, int]:
    """(block_n, num_warps): smaller tiles where a 64-row tile spills registers (q8_0, head_dim 256)."""
    wide = max(k_kind.head_dim, v_kind.head_dim) >= 256
    block_n = 32 if wide or FAMILY_Q8_0 in (k_kind.family, v_kind.family) else 64
    return block_n, 8 if wide else 4


def fast_unsupported(k_kind: PackedKind, v_kind: PackedKind) -> str | None:
    """Why `decode_fast_kernel` cannot take this pair (the split kernel then runs), or None if it can."""
    for kind in (k_kind, v_kind):
        if kind.family != FAMILY_MSE:
            return f"{kind.kind}: the fast kernel reads turbo2/3/4 rows only (the split kernel reads the rest)"
        if kind.head_dim not in (64, 128, 256):
            return f"head_dim {kind.head_dim}: the fast kernel takes 64/128/256"
        if kind.bits == 3:
            return "turbo3: 3-bit codes straddle bytes; the split kernel is faster for them (measured)"
        if decode_asm(kind.head_dim, kind.bits) is None:
            return f"{kind.kind} d={kind.head_dim}: fp16 codebook not symmetric"
    return None


def fast_config(k_kind: PackedKind, v_kind: PackedKind) -> tuple[int, int]:
    """(block_n, num_warps) of the fast kernel."""
    return 64, 4


def fast_maxnreg(k_kind: PackedKind, v_kind: PackedKind, block_m: int, has_bias: bool) -> int | None:
    """Register cap of the fast kernel. 128 for head_dim 128 with one 16-row query block and no additive mask:
    4 programs of 4 warps per multiprocessor instead of 2-3 at the 165-196 registers ptxas picks on its own (the
    loop is latency-bound, so the extra programs pay; measured on an H200, docs/kernels.md), no spills inside the
    loop. None (no cap) elsewhere: 32-row blocks, the bias loads and head_dim 256 would spill under 128, head_dim 64
    mostly fits without a cap (scripts/sass_decode.py)."""
    if k_kind.head_dim == v_kind.head_dim == 128 and block_m == 16 and not has_bias:
        return 128
    return None


def fast_table_regs(k_kind: PackedKind, v_kind: PackedKind) -> int:
    """decode_fast_kernel's TABLE_REGS (launch_splits' table_regs): bit 0 set = the K decoder's tables in opaque
    registers, bit 1 = V's. Constant tables (0) let Triton decode the code bytes in the tensor-core operand layout
    (kernels_fast). Registers (3) where that layout costs more than it saves: 2-bit V at head_dim 64, whose
    16-byte V parts take ~43% more loop instructions in it (sm_90 SASS: 1182 vs 839 per tile for turbo2, 1265 vs
    882 for turbo4 K / turbo2 V). H200, B=8 T=32K, CUDA graphs (docs/kernels.md): turbo2 d=64 295.7 us with
    registers vs 340.9 with constants; with constants turbo4 d=64 191.8 -> 164.7 us, d=128 259.9 -> 244.9 us
    (turbo2 234.1 -> 208.6), d=256 turbo2 436.5 -> 420.9 us, turbo4 equal. Mixed settings (1, 2) are untimed."""
    return 3 if v_kind.head_dim == 64 and v_kind.bits == 2 else 0


TABLE_REGS = {False: 0, True: 3, "k": 1, "v": 2}  # launch_splits' table_regs -> the kernel's TABLE_REGS


FAST_PREFETCH = 0  # decode_fast_kernel's PREFETCH (launch_splits' row_prefetch)
FAST_MIN_SPLIT = 2048  # tokens: fewer per split make the split-merge pass (and per-program setup) dominate


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=16)
def _cuda_sm_count(index: int) -> int:
    """Multiprocessors of CUDA device `index` (asked once: every decode call chooses its splits from it)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def choose_splits(programs: int, max_len: int, block_n: int, device: torch.device, per_sm: float = 4.0,
                  min_split: int | None = None, min_per_sm: int = 2) -> int:
    """Splits per (b, head, query block) so that about `per_sm` programs run per multiprocessor, each split at
    least one tile. With `min_split`, splits also hold at least that many tokens, unless that would leave fewer
    than `min_per_sm` programs per multiprocessor (short contexts)."""
    sms = _sm_count(device)
    want = math.ceil(per_sm * sms / max(programs, 1))
    tiles = math.ceil(max(max_len, 1) / block_n)
    if min_split:
        want = min(want, max(math.ceil(max(max_len, 1) / min_split), math.ceil(min_per_sm * sms / max(programs, 1))))
    return max(1, min(want, tiles, 256))


def launch_splits(q: torch.Tensor, k_table: torch.Tensor, v_table: torch.Tensor, lengths: torch.Tensor,
                  k_kind: PackedKind, v_kind: PackedKind, *, chunk: int, max_len: int, tq: int,
                  causal: bool = False, qshift: int = 0, bias: torch.Tensor | None = None,
                  num_splits: int | None = None, block_n: int | None = None,
                  lut: bool = False, prefetch: bool = True, bcast: bool = False, num_warps: int | None = None,
                  num_stages: int = 2,
                  fast: bool | None = None,
                  splits_per_sm: float | None = None,
                  maxnreg: int | None = None, row_prefetch: int | None = None,
                  table_regs: bool | str | None = None) -> SplitPartials:
    """Run the split kernel of a decode call and return its per-split partials.

    q: fp32 [B, H, G*Tq, D], row g*Tq + t, already mapped by the K segment map and scaled by softmax scale * log2 e.
    k_table, v_table: `chunk_table`s of chunks holding `chunk` tokens each (the last may hold fewer).
    lengths: int32 [B] compressed tokens per batch row (<= max_len). bias: fp32 [B, Tq, >= max_len] additive, in
    log2 units. causal: key j visible to token t iff j <= length - Tq + qshift + t. Returns the split partials;
    `attend_packed` or `finish_decode` merges them.
    fast: None picks `decode_fast_kernel` wherever `fast_unsupported` allows it (lut/bcast are split-kernel
    options and select the split kernel); True requires it; False forces the split kernel. splits_per_sm: None =
    8 for the fast kernel (splits of at least FAST_MIN_SPLIT tokens), 4 for the split kernel. maxnreg: register
    cap of the fast kernel (None: `fast_maxnreg`; 0: no cap). row_prefetch: the fast kernel's PREFETCH (0: rows
    loaded where a tile's math starts, 1: the next tile's K rows one tile ahead, 2: K and V; None: FAST_PREFETCH).
    table_regs: the fast kernel's decoder tables (True: opaque registers, False: constants, which lets Triton decode
    the code bytes in the tensor-core operand layout; "k" / "v": registers for that operand only; None:
    `fast_table_regs`).
    """
    b, h, m, d = q.shape
    if row_prefetch not in (None, 0, 1, 2):
        raise ValueError(f"row_prefetch must be 0, 1 or 2 (None: FAST_PREFETCH), got {row_prefetch!r}")
    if table_regs is not None and not isinstance(table_regs, bool) and table_regs not in ("k", "v"):
        raise ValueError(f"table_regs must be None, False, True, 'k' or 'v', got {table_regs!r}")
    if d != k_kind.head_dim or d != v_kind.head_dim or m % tq:
        raise ValueError(f"query [.., {m}, {d}] does not fit head_dim {k_kind.head_dim}/{v_kind.head_dim}, tq {tq}")
    why = fast_unsupported(k_kind, v_kind)
    if fast and why:
        raise ValueError(why)
    if fast is None:
        fast = why is None and not lut and not bcast
    auto_n, auto_warps = fast_config(k_kind, v_kind) if fast else kernel_config(k_kind, v_kind)
    block_n, num_warps = block_n or auto_n, num_warps or auto_warps
    if chunk % block_n:
        raise ValueError(f"chunk of {chunk} tokens is not a multiple of the block of {block_n}")
    g = m // tq
    tqb, nqb, block_m = query_blocks(g, tq)
    if fast and maxnreg is None:
        maxnreg = fast_maxnreg(k_kind, v_kind, block_m, bias is not None)
    if num_splits is None:
        if fast:
            # 4 programs per SM fit under the 128-register cap: short contexts split until they fill them (B=1
            # T=32K on an H200, graphs: turbo4 59.0 -> 56.9 us, turbo2 53.5 -> 48.4 us against 2 per SM)
            num_splits = choose_splits(b * h * nqb, max_len, block_n, q.device, splits_per_sm or 8.0, FAST_MIN_SPLIT,
                                       4 if maxnreg == 128 else 2)
        else:
            num_splits = choose_splits(b * h * nqb, max_len, block_n, q.device, splits_per_sm or 4.0)
    q = q.contiguous()
    dev = q.device
    o = torch.empty(b * h * nqb * num_splits * block_m * d, dtype=torch.float32, device=dev)
    ml = torch.empty(b * h * nqb * num_splits * 2 * block_m, dtype=torch.float32, device=dev)
    if bias is not None and bias.stride(-1) != 1:
        bias = bias.contiguous()
    bias_t = bias if bias is not None else ml  # (any tensor: not read without a bias)
    if fast:
        k_words, v_words = table_words(d, k_kind.bits), table_words(d, v_kind.bits)
        decode_fast_kernel[(num_splits, b * h, nqb)](
            q, k_table, v_table, lengths, bias_t,
            bias_t.stride(0) if bias is not None else 0, bias_t.stride(1) if bias is not None else 0,
            o, ml, h, g, tq, tqb, chunk, qshift, num_splits,
            K_BITS=k_kind.bits, V_BITS=v_kind.bits, K_ASM=decode_asm(d, k_kind.bits), V_ASM=decode_asm(d, v_kind.bits),
            D=d, RBK=k_kind.row_bytes, RBV=v_kind.row_bytes, CAUSAL=causal, HAS_BIAS=bias is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, ONE_CHUNK=chunk >= max_len,
            K_TW0=k_words[0], K_TW1=k_words[1], V_TW0=v_words[0], V_TW1=v_words[1],
            PREFETCH=FAST_PREFETCH if row_prefetch is None else row_prefetch,
            TABLE_REGS=fast_table_regs(k_kind, v_kind) if table_regs is None else TABLE_REGS[table_regs],
            num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg} if maxnreg else {}))
    else:
        decode_split_kernel[(num_splits, b * h, nqb)](
            q, k_table, v_table, codebook_table(k_kind, lut, dev), codebook_table(v_kind, lut, dev), lengths,
            bias_t,
            bias_t.stride(0) if bias is not None else 0, bias_t.stride(1) if bias is not None else 0,
            o, ml, h, g, tq, tqb, chunk, qshift, num_splits,
            K_FAMILY=k_kind.family, K_BITS=k_kind.bits, V_FAMILY=v_kind.family, V_BITS=v_kind.bits, D=d,
            RBK=k_kind.row_bytes, RBV=v_kind.row_bytes, LUT=lut, CAUSAL=causal, HAS_BIAS=bias is not None,
            PREFETCH=prefetch, BCAST=bcast, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=num_warps, num_stages=num_stages)
    return SplitPartials(o, ml, num_splits, block_m, g, tq, tqb, nqb)


def attend_packed(q: torch.Tensor, k_table: torch.Tensor, v_table: torch.Tensor, lengths: torch.Tensor,
                  k_kind: PackedKind, v_kind: PackedKind, *, out: torch.Tensor | None = None,
                  lse: torch.Tensor | None = None, **split) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over packed rows: `launch_splits` (its arguments and keyword options: chunk, max_len, tq,
    causal, ..., row_prefetch) and one merge launch. Returns (out fp32 [B, H, G*Tq, D] in the V segment space,
    lse fp32 [B, H, G*Tq]), written into `out` / `lse` when given (contiguous fp32 of those shapes; tests pass
    poisoned buffers).
    """
    parts = launch_splits(q, k_table, v_table, lengths, k_kind, v_kind, **split)
    return merge_partials(parts, q.shape, q.device, out, lse)


def merge_partials(parts: SplitPartials, shape, device, out: torch.Tensor | None = None,
                   lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch merging split partials into (out fp32 [B, H, G*Tq, D], lse fp32 [B, H, G*Tq]); shape = the
    query's [B, H, G*Tq, D]."""
    b, h, m, d = shape
    if out is None:
        out = torch.empty(b, h, m, d, dtype=torch.float32, device=device)
    if lse is None:
        lse = torch.empty(b, h, m, dtype=torch.float32, device=device)
    if out.shape != (b, h, m, d) or lse.shape != (b, h, m) or not (out.is_contiguous() and lse.is_contiguous()):
        raise ValueError("out / lse must be contiguous fp32 [B, H, G*Tq, D] / [B, H, G*Tq]")
    o, ml, num_splits, block_m, g, tq, tqb, nqb = (parts.o, parts.ml, parts.num_splits, parts.block_m, parts.g,
                                                   parts.tq, parts.tqb, parts.nqb)
    block_s = max(2, triton.next_power_of_2(num_splits))
    decode_reduce_kernel[(b * h * nqb * block_m,)](
        o, ml, out, lse, g, tq, tqb, num_splits, D=d, BLOCK_M=block_m, BLOCK_S=block_s,
        num_warps=4 if block_s * d >= 4096 else 1)
    return out, lse


def query_blocks(g: int, tq: int) -> tuple[int, int, int]:
    """(tqb, nqb, block_m): query tokens per program, programs per (b, head), padded rows per program."""
    tqb = max(1, min(tq, MAX_ROWS // g))
    return tqb, math.ceil(tq / tqb), max(16, triton.next_power_of_2(g * tqb))


def check_query_map(q: torch.Tensor, w: torch.Tensor) -> None:
    """q [B, H, M, D] fp16/bf16/fp32 and its map w fp32 [D, D] or [H, D, D] (`map_query`, and the table kernel's
    prologue map); ValueError otherwise."""
    _, h, _, d = q.shape
    if w.dtype != torch.float32 or w.dim() not in (2, 3) or w.shape[-2:] != (d, d) \
            or (w.dim() == 3 and w.shape[0] != h):
        raise ValueError(f"w must be fp32 [{d}, {d}] or [{h}, {d}, {d}], got {w.dtype} {list(w.shape)}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q must be fp16/bf16/fp32, got {q.dtype}")


def map_query(q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """q @ w in one launch: q [B, H, M, D] in its float dtype (fp16/bf16/fp32), w fp32 [D, D] or [H, D, D];
    returns fp32 [B, H, M, D] (fp32 products, IEEE). The decode step's query map (kernels_query.py)."""
    b, h, m, d = q.shape
    check_query_map(q, w)
    q, w = q.contiguous(), w.contiguous()
    out = torch.empty(b, h, m, d, dtype=torch.float32, device=q.device)
    if out.numel():
        # tiles that compile without spills for sm_90 at head_dim 32-256 (fp32 FMA dot: 48-64 registers)
        bm = 16 if m <= 16 else 32
        bn = min(d, 64 if bm == 16 else 32)
        query_map_kernel[(b * h, triton.cdiv(m, bm), d // bn)](q, w, out, h, m, d * d if w.dim() == 3 else 0, D=d,
                                                               BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=min(d, 32),
                                                               num_warps=4)
    return out


def finish_decode(q: torch.Tensor, parts: SplitPartials | None, *, tq: int, qscale: float,
                  windows: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], n_comp: int,
                  adj: torch.Tensor | None, bias: torch.Tensor | None, causal: bool,
                  out_dtype: torch.dtype, k_mean: torch.Tensor | None = None) -> torch.Tensor:
    """The whole output of a decode call, in one launch: split partials (or None without compressed tokens)
    merged with the attention over the fp16 windows, mapped back by `adj`, as [B, Tq, H*G, D] in `out_dtype`.

    q: [B, H, G*Tq, D] (fp32, or the query's fp16/bf16) in the original space, unscaled (row g*Tq + t); qscale =
    softmax scale * log2 e.
    windows: (sink_k, sink_v, recent_k, recent_v), each [B, H, n, D] fp16/bf16 (sinks at positions 0.., recent
    tokens after the n_comp compressed ones). adj: fp32 [D, D] or [H, D, D] inverse V map on row vectors, or None.
    bias: fp32 [B or 1, Tq, tk] additive mask in natural-log units (tk = all stored tokens), or None. causal: query
    token t sees keys at positions <= tk - Tq + t. k_mean: [B, H, 1, D] mean subtracted from the compressed keys
    (their split scores, made without it, get q·k_mean here), or None. A row that sees no key gets zeros.
    """
    b, h, m, d = q.shape
    g = m // tq
    if parts is not None:  # the split launch chose the blocking for this very query shape
        if (parts.g, parts.tq) != (g, tq):
            raise ValueError("split partials were made for another query shape")
        tqb, nqb, block_m = parts.tqb, parts.nqb, parts.block_m
    else:
        tqb, nqb, block_m = query_blocks(g, tq)
    sk, sv, rk, rv = windows
    if sv.shape != sk.shape or rv.shape != rk.shape or any(w.shape[:2] != (b, h) or w.shape[-1] != d
                                                          for w in (sk, rk)):
        raise ValueError("window K/V must be [B, H, n, D] pairs matching the query")
    sk, sv = _window_pair(sk, sv)
    rk, rv = _window_pair(rk, rv)
    n_sink, n_recent = sk.shape[-2], rk.shape[-2]
    q = q.contiguous()
    out = torch.empty(b, tq, h * g, d, dtype=out_dtype, device=q.device)
    if bias is not None and bias.stride(-1) != 1:
        bias = bias.contiguous()
    o, ml, splits = (parts.o, parts.ml, parts.num_splits) if parts is not None else (q, q, 0)
    kmean = k_mean.float().reshape(b * h, d) if k_mean is not None and splits else None
    block_s = max(2, triton.next_power_of_2(splits))
    decode_finish_kernel[(b * h * nqb * block_m,)](
        o, ml, splits, q, qscale, sk, sv, n_sink, sk.stride(0), sk.stride(1), rk, rv, n_recent, rk.stride(0),
        rk.stride(1), n_comp,
        adj.contiguous() if adj is not None else q, kmean.contiguous() if kmean is not None else q,
        bias if bias is not None else q,
        bias.stride(0) if bias is not None and bias.shape[0] > 1 else 0, bias.stride(1) if bias is not None else 0,
        out, h, g, tq, tqb, D=d, BLOCK_M=block_m, BLOCK_S=block_s, BLOCK_W=16 if d >= 256 else 32,
        BLOCK_D=min(d, max(16, 4096 // block_s), max(16, 8192 // d)), HAS_ADJ=adj is not None and splits > 0,
        ADJ_PER_HEAD=adj is not None and adj.dim() == 3, HAS_KMEAN=kmean is not None, HAS_BIAS=bias is not None,
        CAUSAL=causal, num_warps=4)
    return out


def _window_pair(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A K/V window pair as the finishing kernel reads it: rows of D contiguous values, both tensors with the
    same strides (views into the layer's window buffers pass as they are; anything else is made contiguous)."""
    d = k.shape[-1]
    if k.stride()[-2:] == (d, 1) and v.stride() == k.stride():
        return k, v
    return k.contiguous(), v.contiguous()


def dequant_packed(table: torch.Tensor, kind: PackedKind, b: int, h: int, t: int, chunk: int,
                   block_n: int = 64) -> torch.Tensor:
    """The first t rows of every (b, h) as fp16 [B, H, T, D] in the segment space (row scales folded in).

    For prefill: many query rows per key make attention compute-bound, so one pass writing fp16 values for SDPA
    costs little next to it (decode reads the packed rows directly instead).
    """
    if chunk % block_n:
        raise ValueError(f"chunk of {chunk} tokens is not a multiple of the block of {block_n}")
    dev = table.device
    out = torch.empty(b, h, t, kind.head_dim, dtype=torch.float16, device=dev)
    if t:
        dequant_kernel[(math.ceil(t / block_n), b * h)](
            table, codebook_table(kind, False, dev), out, h, t, chunk, FAMILY=kind.family, BITS=kind.bits,
            D=kind.head_dim, RB=kind.row_bytes, BLOCK_N=block_n, num_warps=4)
    return out
