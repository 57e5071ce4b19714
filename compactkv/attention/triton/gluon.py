"""Launcher of the Gluon decode kernel (kernels_gluon.py) over planar code and norm planes."""

from __future__ import annotations

import functools
import weakref

import torch

from ...core.rotation import hadamard_factors
from .decode import (FAMILY_MSE, PackedKind, SplitPartials, _sm_count, _window_pair, check_query_map, choose_splits,
                     map_query, merge_partials)
from .fastasm import decode_asm, fp16_bits, table_words

GLUON_BLOCK_N = 32  # tokens per tile of one warp
GLUON_MIN_SPLIT = 1024  # tokens per split at least (H200, turbo4: B=1 T=128K 105.3 -> 100.9 us against 512; 2048
# left B=8 T=32K at 8 one-warp programs per SM: 202 us; docs/kernels.md, session 9)
GLUON_MAXNREG = 128  # 16 one-warp programs per SM (see docs/kernels.md, session 8)
GLUON_ROWS = 8  # query rows per program (the n of m16n8k16): a GQA group of up to 8 heads, one token each
LUT_WARPS = 8  # warps (one split each) per program of the table kernel: H200 turbo4 B=8 T=128K 417.7 us with 8, 443.5
# with 4 (no prefetch, 128 registers; docs/kernels.md, session 9)
LUT_TABLE_BYTES = 256 * 256  # 256 entries x 256-byte rows (32 lane copies of 4 bytes, the rest of each row unused)
LUT3_TABLE_BYTES = 64 * 128  # turbo3: 64 entries (two 3-bit codes) x 128-byte rows (32 lane copies of 4 bytes)
LUT_SMEM_PER_SM = 227 * 1024  # shared memory a multiprocessor gives its programs (sm_90), 1 KB reserved per program
LUT_PIPE = 3  # the table kernel loads the tiles two ahead (codes and norms) into registers (H200 turbo4, 8 warps,
# 232 registers, vs one ahead at 168: B=8 T=32K 136.0 -> 130.2 us, B=8 T=128K 423.5 -> 401.3, B=1 T=128K 87.2 -> 85.1;
# one ahead vs none: 142.8 -> 136.2, 425.4 -> 428.9, 103.4 -> 87.0; session 10, docs/kernels.md)
LUT_MAXNREG = 232  # its registers per thread: the prefetch without spills (one 8-warp program per multiprocessor;
# at 200 registers two-ahead gained nothing: 136.5 / 420.6 / 87.9 us)
LUT_FUSED_MAXNREG = 255  # the finishing build's (attend_planes): at 232 its epilogue's live values cost the loop 15
# instructions per tile (771 vs 756, sm_90 SASS), at 255 it is 746 (248 registers: still one program per SM)
LUT_ROWS_MAXNREG = 255  # the row reader's build (launch_rows): sm_90 loop of turbo4 / turbo3 / turbo2 at 255
# registers 944 / 1080 / 719 instructions per tile (pipe 3), at 232 978 / 1129 / 768 with 8 bytes of spills for turbo2
# (H200, CUDA graphs, B=8 T=32K turbo4: 143.2 us at 255, 167.3 at 232; docs/perf/sweep-rows-s13-h200.json)
LUT_ROWS_PIPE = 2  # and one tile ahead: 871 / 993 / 691 instructions per tile; H200 turbo4 B=8 T=32K 131.1 vs 143.2
# us (two ahead), T=128K 486.2 vs 517.2, B=1 T=128K 75.9 vs 82.8, B=1 T=32K 30.4 vs 31.2 (turbo3, turbo2 likewise)
LUT_FUSED_TILES = {4: (8, 64), 2: (7, 64), 3: (2, 32)}  # bits -> (lut_pipe, lut_block_n) of the finishing build where
# not (LUT_PIPE, GLUON_BLOCK_N): turbo4 in 64-token tiles, one ahead (sm_90 loop 17.9 vs 20.8 instructions per token;
# H200 same-card A/B, two calls: B=8 T=32K 102.5 / 101.6 -> 97.3 / 96.2 us, B=8 T=128K 386.0 / 380.5 -> 365.0 / 357.8,
# B=1 T=128K 58.3 / 58.7 -> 54.9 / 54.8; session 21). turbo2 in 64-token tiles two ahead since session 23 (with the
# Hadamard maps; 18.1 vs 18.8 instructions per token, 248 registers): B=8 T=32K 81.5 -> 78.2 us, B=8 T=128K 295.8 ->
# 276.5, B=1 T=128K 46.3 -> 45.4, B=1 T=32K 18.0 -> 18.5 (one ahead: 86.9 / 314.6 / 49.0 / 17.9); turbo3 one ahead in
# 64-token tiles 111.0 / 406.0 / 62.5 / 21.8 against 112.7 / 416.9 / 62.1 / 21.8 (not taken); one call, same card
# (docs/perf/sweep-tiles-*-s23-h200.json). With the dense maps (session 21) turbo2 86.8 -> 89.1 one ahead. Session 28:
# turbo4 with per-warp bulk copies into stages (lut_pipe 6): H200, same calls, B=8 T=32K 92.4 -> 87.6 us and 94.5-94.7
# -> 89.2-89.7 (with the 4fcb747 build), B=1 T=128K 51.9 -> 50.4 and 52.4 -> 50.7
# (docs/perf/sweep-bulk-*-s28-h200.json); turbo2 there 78.0 / 45.0-45.6, not taken. Session 29: the stages' rows traded
# (`kernels_lut.bulk_stage_layout`); turbo2 on lut_pipe 6 too: H200, same call, two rounds, B=8 T=32K 78.1-78.4 ->
# 74.8-75.2 us, B=8 T=128K 278.0-278.4 -> 261.5-261.6, B=1 T=128K 45.1 -> 44.0 (docs/perf/sweep-trade-*-s29-h200.json).
# Session 30: turbo2 on lut_pipe 7 (each operand's copy issued once its stage is read) with the first copies before the
# prologue: H200, same call, two rounds, B=8 T=32K 75.1 -> 73.1-73.3 us, B=1 T=128K 44.2-44.4 -> 42.4, B=8 T=128K
# 263.1-263.2 -> 261.0 (docs/perf/sweep-early-*-s30-h200.*). turbo4 on lut_pipe 8 (K's copy issued as 7's, V's as 6's;
# 199 registers): same call, three rounds, B=8 T=32K 83.5-83.9 -> 81.7-82.1 us (2.90-2.92x -> 2.97-2.98x), B=1 T=128K
# 46.5-46.7 -> 44.2-44.5, B=8 T=128K 314.2-316.3 -> 312.1-317.4; on 7 83.2-83.7 / 45.4 / 323.5-326.4 (7 with the early
# copies lost 1-3% at B=8 T=128K in four calls); turbo2 on 8 74.0 / 42.0 / 266.4 against 73.3 / 42.6 / 257.8 on 7
# (docs/perf/sweep-pipe8-*-s30-h200.*). Session 32 (turbo3 without pairing prmt): turbo3 one ahead (lut_pipe 2) in
# 32-token tiles, H200, same call, B=8 T=32K / B=1 T=128K / B=8 T=128K 100.2 / 54.8 / 381.2 us against 102.7 / 56.4 /
# 390.3 two ahead (64-token tiles one ahead 100.2 / 55.9 / 382.8; docs/perf/sweep-t3-*-s32-h200.*). turbo2 on lut_pipe 8
# / 6 in 64-token tiles 65.6 / 38.0 / 236.5 and 63.6 / 37.7 / 230.4 against 61.7 / 36.6 / 226.7 on 7 after its
# token-pair keys (same call).
LUT_FUSED_TILES_SINCE = {}  # triton release -> LUT_FUSED_TILES entries from that release on (none now). Session
# 30 kept turbo4 on lut_pipe 7 from triton 3.9 on: 3.9 spills turbo4's lut_pipe 6 loop (sm_90: 13 reloads a tile),
# and its lut_pipe 6 / 7 builds did 88.4-88.7 / 84.8-85.4 us at B=8 T=32K (3.6 on 6: 83.8-83.9; docs/perf/
# triton-swap-s30-h200.*). Session 31 timed lut_pipe 8 with 3.9 (scripts/triton_swap.py, H200, same call, two
# rounds, B=8 T=32K / B=1 T=128K / B=8 T=128K): 79.7-80.0 / 44.6 / 299.7-300.9 us on 8 against 81.4-82.3 / 45.9-46.1 /
# 311.4-312.2 on 7 (3.6 on 8 in the call before: 79.3 / 43.6 / 300.7), so 8 for every release
# (docs/perf/triton-swap-s31-h200.txt).
BULK_PIPES = (6, 7, 8)  # lut_pipe values that copy with cp.async.bulk (sm_90+, 16-byte aligned planes)
LUT_FUSED_FALLBACKS = {4: (2, 64), 2: (3, 64)}  # bits -> the finishing build where the bulk copies cannot run (before
# sm_90, unaligned planes): the register pipelines that were the defaults before
LUT_FUSED_MAXNREGS = {(4, 2): 248}  # (bits, lut_pipe) -> the finishing build's register cap where not
# LUT_FUSED_MAXNREG: turbo4's register pipeline with the Hadamard maps at 248 (ptxas schedules its loop otherwise;
# H200, two interleaved runs, us at B=1 T=128K / B=8 T=32K / B=8 T=128K: 52.2-52.7 / 95.1-95.6 / 353.9-354.9
# against 53.5-53.9 / 96.7 / 360.0-360.6 at 255; turbo2 alike at both; session 23,
# docs/perf/sweep-regs-*-s23-h200.json). The bulk-copy builds (lut_pipe 6) at 255: no spill in their sm_90 loops
# (turbo4 at 248: 5 spill loads / stores per tile), H200 same call, two rounds, turbo4 82.8-83.3 / 47.5 / 307.4-308.4
# us at B=8 T=32K / B=1 T=128K / B=8 T=128K against 83.2 / 47.9 / 308.6-309.5 at 248 (session 29).
LUT_EARLY_BITS = frozenset({3})  # kinds (bits) whose finishing table kernel (attend_planes) issues its first tiles'
# loads before the prologue on the register pipelines (`lut_early_loads`; lut_pipe 2 / 3, the query map as Hadamard
# factors or none; the other launches, not timed that way, load them after it unless asked). The bulk copies
# (BULK_PIPES) start before the prologue in every finishing build since session 30 (H200, same call, two rounds,
# turbo4 on lut_pipe 6 at B=8 T=32K / B=1 T=128K / B=8 T=128K: 85.9 / 47.6 / 321.1-322.9 us -> 85.2-85.3 / 46.3-46.4
# / 321.9-322.4; the prologue 3.3 -> 2.6 us, docs/perf/*-s30-h200.*). Session 24, H200, same-card A/B
# against loading them after it, two interleaved runs, us at B=1 T=128K / B=8 T=32K / B=8 T=128K: turbo3 60.9 /
# 110.2-110.3 / 408.2-409.3 against 62.2-62.3 / 112.7-112.9 / 417.4-417.7. turbo4 and turbo2 gained nothing steady
# (52.7-52.9 vs 52.6, 96.5-96.6 vs 96.8, 356.9-358.5 vs 358.7; turbo2 45.1 vs 45.4, 78.6 vs 78.0, 287.1-289.4 vs
# 284.7-286.7): their prologue waited ~2.3 us longer behind the tiles' loads and their loop gained as much
# (docs/kernels.md, session 24). The dense query map's prologue (64 KB of loads) spilled with the tiles live.
HAD_D1 = 8  # the finishing table kernel's Hadamard maps: H_D = H_8 (x) H_{D/8} (kernels_lut `_hadamard_map`)
LUT_COMPACT = True  # the table kernel's softmax over query rows 0-3 only where a KV head has at most 4 (G * Tq <= 4;
# kernels_lut `compact_layout`), a program at most 8 warps, not turbo3's codec rows (`lut_compact`): the m16n8
# products' padding columns (rows 4-7) cost each lane half its softmax work and norm loads. sm_90 loops of the
# finishing builds: turbo4 1067 -> 966, turbo2 816 -> 718, turbo3 778 -> 744 instructions per tile; H200 B=8 T=32K
# turbo4 83.3-83.8 -> 82.3-82.5 us, turbo3 98.4-99.2 -> 96.6-96.7, turbo2 62.1-62.2 -> 62.0; over codec rows turbo4
# 136.3-136.5 -> 128.4-128.6, turbo2 118.3-118.7 -> 99.5-99.6 (docs/kernels.md, session 33)
LUT_TMA_PIPES = (6, 7)  # the bulk-copy builds that copy V's 64-byte rows (turbo4 at head_dim 128) through a tensor
# map with the 64-byte swizzle by default (`lut_tma`, kernels_lut `tma_stage_layout`). It removes the V reads' bank
# conflicts (H200 ncu, B=8 T=32K, lut_pipe 8: 1.23 M -> 0.17 M of 11.8 M -> 10.75 M shared wavefronts, L1 83.7% ->
# 77.5% busy) but not time where the loop is bound elsewhere: lut_pipe 8 (turbo4's default) 78.1-78.8 vs 78.5-79.8 us
# at B=8 T=32K, 297.5-299.7 vs 297.1-297.5 at B=8 T=128K, 43.0 vs 42.9-43.1 at B=1 T=128K (same call, two rounds),
# so not there; lut_pipe 7 87.0-87.1 -> 84.6, 48.5-48.7 -> 45.6-45.7, 333.4-334.1 -> 321.8-324.5 (session 34)
LUT_MIN_WARP_TOKENS = 256  # a warp's split holds at least this many tokens (8 tiles)
GLUON_STAGES = 2  # shared-memory stages of the cp.async pipeline (prefetch 2): 3 and 4 were slower (session 9)


@functools.lru_cache(maxsize=1)
def _gluon_import_error() -> str | None:
    try:
        from . import kernels_gluon  # noqa: F401
    except Exception as exc:  # Gluon is experimental: absent or changed in other Triton releases
        return f"Triton's Gluon dialect is not usable here ({type(exc).__name__}: {exc})"
    return None


def gluon_device_error(device) -> str | None:
    """Why the Gluon kernels cannot run on `device`, or None: they use sm_80 tensor-core instructions
    (mma.m16n8k16, cp.async) and up to 64 KB of shared memory per program."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the Gluon kernels run on CUDA devices, not {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return f"compute capability {major}.{minor}: the Gluon kernels need 8.0 or newer"
    return None


def gluon_usable(device=None) -> bool:
    """True when Triton's Gluon dialect imports here (the kernel module loads) and, given a device, the kernels can
    run on it (`gluon_device_error`)."""
    return _gluon_import_error() is None and (device is None or gluon_device_error(device) is None)


def gluon_unsupported(k_kind: PackedKind, v_kind: PackedKind, rows: int, tq: int = 1) -> str | None:
    """Why `launch_gluon` cannot run this call, or None. rows: query rows per KV head (GQA group x tq)."""
    for kind in (k_kind, v_kind):
        if kind.family != FAMILY_MSE or kind.bits not in (2, 4):
            return f"{kind.kind}: the Gluon kernel reads turbo2/turbo4 codes only"
        if kind.head_dim not in (64, 128, 256):
            return f"head_dim {kind.head_dim}: the Gluon kernel takes 64/128/256"
        if decode_asm(kind.head_dim, kind.bits) is None:
            return f"{kind.kind} d={kind.head_dim}: fp16 codebook not symmetric"
    if k_kind.head_dim != v_kind.head_dim:
        return "K and V head_dims differ"
    if tq != 1:
        return f"{tq} query tokens: the Gluon kernel takes one-token decode steps (no causal mask)"
    if rows > GLUON_ROWS:
        return f"{rows} query rows per KV head: the Gluon kernel takes at most {GLUON_ROWS}"
    return _gluon_import_error()


def _lut_call_unsupported(rows: int, tq: int) -> str | None:
    """Why the table kernel cannot take a call of `rows` query rows per KV head and `tq` query tokens, or None."""
    if tq != 1:
        return f"{tq} query tokens: the table kernel takes one-token decode steps (no causal mask)"
    if rows > GLUON_ROWS:
        return f"{rows} query rows per KV head: the table kernel takes at most {GLUON_ROWS}"
    return _gluon_import_error()


def planes_unsupported(k_kind: PackedKind, v_kind: PackedKind, rows: int, tq: int = 1) -> str | None:
    """Why `launch_gluon` cannot run this call with its default kernel over code planes (the table kernel where
    `lut_default`, else the one-warp Gluon kernel), or None."""
    if lut_default(k_kind, v_kind):
        return _lut_call_unsupported(rows, tq)
    return gluon_unsupported(k_kind, v_kind, rows, tq)


@functools.lru_cache(maxsize=64)
def gluon_constants(k_kind: PackedKind, v_kind: PackedKind, block_n: int = GLUON_BLOCK_N) -> dict:
    """The kernel's constexpr arguments for a K/V pair."""
    from .kernels_gluon import gluon_layouts
    d = k_kind.head_dim
    nbk, nbv = d * k_kind.bits // 8, d * v_kind.bits // 8
    kload, vload = gluon_layouts(block_n, nbk, nbv)
    kw, vw = table_words(d, k_kind.bits), table_words(d, v_kind.bits)
    return dict(D=d, K_BITS=k_kind.bits, V_BITS=v_kind.bits, K_ASM=decode_asm(d, k_kind.bits),
                V_ASM=decode_asm(d, v_kind.bits), K_TW0=kw[0], K_TW1=kw[1], V_TW0=vw[0], V_TW1=vw[1],
                BN=block_n, NH=GLUON_ROWS, BLOCK_M=16, KLOAD=kload, VLOAD=vload)


def lut_unsupported(k_kind: PackedKind, v_kind: PackedKind) -> str | None:
    """Why the table kernel (kernels_lut) cannot decode this K/V pair, or None."""
    pair = (k_kind.family, k_kind.bits, v_kind.family, v_kind.bits)
    if pair not in ((FAMILY_MSE, 4, FAMILY_MSE, 4), (FAMILY_MSE, 3, FAMILY_MSE, 3), (FAMILY_MSE, 2, FAMILY_MSE, 2)):
        return "the table kernel reads turbo4, turbo3 or turbo2 codes, the same kind for K and V"
    dims = (64, 128) if k_kind.bits == 4 else (128,)
    if k_kind.head_dim != v_kind.head_dim or k_kind.head_dim not in dims:
        return (f"head_dim {k_kind.head_dim}/{v_kind.head_dim}: the table kernel takes "
                f"{' or '.join(map(str, dims))} for {k_kind.kind} (same for K and V)")
    return None


def lut_default(k_kind: PackedKind, v_kind: PackedKind) -> bool:
    """The table kernel by default where it was timed faster than the Gluon kernel (H200, CUDA graphs): turbo4 K
    and V at head_dim 128 (session 9: B=8 T=32K 143.1 vs 157.6 us, T=128K 417.7 vs 483.9, B=1 T=32K 46.1 vs 52.3,
    B=1 T=128K 103.2 vs 102.2) and turbo2 at head_dim 128 (session 11: 111.9 vs 119.0, 329.2 vs 330.6, 44.4 vs
    45.8, 75.4 vs 80.4; docs/perf/sweep-lut-turbo2-s11-h200.json); turbo3 at head_dim 128 has no other kernel over
    planes. turbo4 at head_dim 64 is tested, not timed (`lut=True` asks for it)."""
    return lut_unsupported(k_kind, v_kind) is None and k_kind.head_dim == 128


@functools.lru_cache(maxsize=8)
def lut_words(head_dim: int, device: torch.device, bits: int = 4) -> torch.Tensor:
    """The table kernel's entries as int32 words. bits 4: [256], entry e = half2 (c[e & 15], c[e >> 4]) of the
    turbo4 codebook's fp16 centroids; bits 2: [512], entry e = half2 (c[e & 3], c[(e >> 2) & 3]) at 2 e and half2
    (c[(e >> 4) & 3], c[e >> 6]) at 2 e + 1 (part p = code bits [2 p, 2 p + 2)); bits 3: [64], entry e = half2
    (c[e & 7], c[e >> 3]): the two codes of dims 2 j, 2 j + 1 (row bits [6 j, 6 j + 6))."""
    u = fp16_bits(head_dim, bits)
    if bits == 4:
        w = [u[e & 15] | (u[e >> 4] << 16) for e in range(256)]
    elif bits == 3:
        w = [u[e & 7] | (u[e >> 3] << 16) for e in range(64)]
    elif bits == 2:
        w = [x for e in range(256) for x in (u[e & 3] | (u[(e >> 2) & 3] << 16),
                                              u[(e >> 4) & 3] | (u[e >> 6] << 16))]
    else:
        raise ValueError(f"bits {bits}: the table kernel takes turbo4, turbo3 or turbo2 codes")
    return torch.tensor([x - (1 << 32) if x >= 1 << 31 else x for x in w], dtype=torch.int32, device=device)


def gluon_prefetch(head_dim: int) -> int:
    """The default load scheme (launch_gluon's `prefetch`): the cp.async pipeline at head_dim 128 (H200, turbo4 B=8:
    T=32K 167.5 -> 164.4 us, T=128K 515.3 -> 490.1 us; turbo2 126.7 -> 126.2, 350.7 -> 337.2), plain loads at 64
    (turbo4 +5%, turbo2 -2%) and 256 (its 16 KB of stages per one-warp program: 349.5 -> 487.9 us)."""
    return 2 if head_dim == 128 else 0


def _check_plane(name: str, codes: torch.Tensor, norms: torch.Tensor, nbytes: int, b: int, h: int) -> None:
    if not isinstance(codes, torch.Tensor) or not isinstance(norms, torch.Tensor):
        raise ValueError(f"{name} codes and norms must be tensors (uint8 [{b}, {h}, T, {nbytes}] and fp16 "
                         f"[{b}, {h}, T]), got {type(codes).__name__} and {type(norms).__name__}")
    if codes.dtype != torch.uint8 or codes.dim() != 4 or codes.shape[:2] != (b, h) or codes.shape[-1] != nbytes \
            or codes.stride(-1) != 1 or codes.stride(-2) != nbytes:
        raise ValueError(f"{name} codes must be uint8 [{b}, {h}, T, {nbytes}] with contiguous rows, got "
                         f"{codes.dtype} {list(codes.shape)} strides {codes.stride()}")
    if codes.data_ptr() % 16 or codes.stride(0) % 16 or codes.stride(1) % 16:
        raise ValueError(f"{name} code rows must start at 16-byte aligned addresses (planar storage)")
    if norms.dtype != torch.float16 or norms.shape != codes.shape[:3] or norms.stride(-1) != 1:
        raise ValueError(f"{name} norms must be fp16 {list(codes.shape[:3])} with unit token stride, got "
                         f"{norms.dtype} {list(norms.shape)}")


def _check_query(q, k_kind: PackedKind) -> tuple[int, int, int, int]:
    """(B, H, G, D) of a one-token step's query: 4-D float rows of the K kind's head_dim; ValueError otherwise."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4 or not q.dtype.is_floating_point:
        got = f"{q.dtype} {list(q.shape)}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q must be a float [B, H, G, D] tensor, got {got}")
    b, h, g, d = q.shape
    if d != k_kind.head_dim:
        raise ValueError(f"query head_dim {d} does not match {k_kind.head_dim}")
    return b, h, g, d


def _check_planes(q: torch.Tensor, k_codes, k_norms, v_codes, v_norms, lengths, k_kind: PackedKind,
                  v_kind: PackedKind) -> None:
    """Both operands' planes for `q` [B, H, G, D] (`_check_plane`, same norm strides) and the lengths (int32 [B] on
    the query's device); ValueError otherwise."""
    b, h, _, d = q.shape
    _check_plane("K", k_codes, k_norms, d * k_kind.bits // 8, b, h)
    _check_plane("V", v_codes, v_norms, d * v_kind.bits // 8, b, h)
    if v_norms.stride() != k_norms.stride():
        raise ValueError("K and V norm planes must have the same strides")
    _check_lengths(lengths, b, q.device)


def _check_lengths(lengths, b: int, device) -> None:
    """lengths: int32 [b] on `device` (tokens per batch row); ValueError otherwise."""
    if not isinstance(lengths, torch.Tensor) or lengths.dtype != torch.int32 or tuple(lengths.shape) != (b,) \
            or lengths.device != device:
        got = f"{lengths.dtype} {list(lengths.shape)}" if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"lengths must be int32 [{b}] on {device}, got {got}")


def launch_gluon(q: torch.Tensor, k_codes: torch.Tensor, k_norms: torch.Tensor, v_codes: torch.Tensor,
                 v_norms: torch.Tensor, lengths: torch.Tensor, k_kind: PackedKind, v_kind: PackedKind, *,
                 max_len: int, w: torch.Tensor | None = None, num_splits: int | None = None,
                 block_n: int = GLUON_BLOCK_N,
                 splits_per_sm: float = 16.0, min_split: int = GLUON_MIN_SPLIT, maxnreg: int | None = GLUON_MAXNREG,
                 prefetch: int | None = None, stages: int = GLUON_STAGES, lut: bool | None = None,
                 lut_warps: int = LUT_WARPS, lut_pipe: int = LUT_PIPE, lut_maxnreg: int = LUT_MAXNREG,
                 bias: torch.Tensor | None = None) -> SplitPartials:
    """Split partials of a one-token decode step (`decode.launch_splits`' contract for tq = 1, no causal mask).

    q: fp32 [B, H, G, D] mapped by the K rotation and scaled by softmax scale * log2 e; or, with `w` (fp32 [D, D]
    or [H, D, D], the map `decode.map_query` takes), the query rows as they come (fp16/bf16/fp32), which the table
    kernel maps in its prologue (`lut_query_map`; the other kernels after one `map_query` launch). k_codes / v_codes: uint8
    [B, H, T, D*bits/8] code planes (16-byte aligned rows), k_norms / v_norms: fp16 [B, H, T] (same token and
    head strides for K and V norms). lengths: int32 [B] tokens per batch row (<= max_len, all visible).
    prefetch: how code bytes are loaded, 0: V's after the softmax, 1: K's and V's at the tile's start, 2: a
    cp.async pipeline of `stages` tiles through shared memory (default: `gluon_prefetch(head_dim)`). lut: the
    table kernel instead (kernels_lut; turbo4 K and V at head_dim 64/128, turbo3 or turbo2 K and V at 128;
    `lut_warps` splits per program; default: `lut_default`); lut_pipe: its loads, 0 at the tile's start, 1 the
    next tile's code bytes copied into a shared stage during this one, 2 the next tile's code bytes and norms
    loaded into registers during this one, 3 (default) the two next tiles'; lut_maxnreg: its register cap per
    thread. bias (the table kernel only): None, or float32 [B, >= max_len] additive scores per token in log2 units
    (token stride 1, any batch stride; -inf masks the token: a static cache's recorded padding), added to every
    query row's score of the token.
    """
    from .kernels_gluon import decode_gluon_kernel
    b, h, g, d = _check_query(q, k_kind)
    if lut is None:
        lut = lut_default(k_kind, v_kind)
    why = (lut_unsupported(k_kind, v_kind) or _lut_call_unsupported(g, 1)) if lut \
        else gluon_unsupported(k_kind, v_kind, g)
    if why:
        raise ValueError(why)
    if bias is not None and not lut:
        raise ValueError("an additive bias needs the table kernel (lut=True): the one-warp Gluon kernel takes none")
    _check_planes(q, k_codes, k_norms, v_codes, v_norms, lengths, k_kind, v_kind)
    _check_bias(bias, b, max_len, q.device)
    if prefetch is None:
        prefetch = gluon_prefetch(d)
    if prefetch not in (0, 1, 2):
        raise ValueError(f"prefetch {prefetch}: takes 0 (V after the softmax), 1 (K and V at the tile's start) or 2 "
                         "(cp.async pipeline of `stages` tiles)")
    if prefetch == 2 and stages not in (2, 3, 4):
        raise ValueError(f"stages {stages}: the cp.async pipeline takes 2, 3 or 4")
    if lut:
        return _launch_lut(q, k_codes, k_norms, v_codes, v_norms, lengths, k_kind, v_kind, max_len=max_len,
                           num_splits=num_splits, block_n=block_n, warps=lut_warps, pipe=lut_pipe,
                           maxnreg=lut_maxnreg, w=w, bias=bias)
    if w is not None:
        q = map_query(q, w)
    if num_splits is None:
        # one-warp programs, up to 16 resident per multiprocessor at <= 128 registers
        num_splits = choose_splits(b * h, max_len, block_n, q.device, splits_per_sm, min_split, 8)
    q = q.contiguous()
    block_m = 16
    o = torch.empty(b * h * num_splits * block_m * d, dtype=torch.float32, device=q.device)
    ml = torch.empty(b * h * num_splits * 2 * block_m, dtype=torch.float32, device=q.device)
    decode_gluon_kernel[(num_splits, b * h)](
        q, k_codes, k_norms, v_codes, v_norms, lengths, o, ml, h, g, num_splits,
        k_codes.stride(0), k_codes.stride(1), v_codes.stride(0), v_codes.stride(1),
        k_norms.stride(0), k_norms.stride(1), **gluon_constants(k_kind, v_kind, block_n),
        PREFETCH=prefetch, STAGES=stages, num_warps=1, **({"maxnreg": maxnreg} if maxnreg else {}))
    return SplitPartials(o, ml, num_splits, block_m, g, 1, 1, 1)


_LUT_CHECKED: set = set()


def lut_smem(warps: int, head_dim: int, pipe: int, block_n: int = GLUON_BLOCK_N, bits: int = 4,
             fused: bool = False) -> int:
    """Shared memory of a table-kernel program: the table (64 KB; turbo3 8 KB), plus one K and one V stage with
    `pipe` 1 (`pipe` 4 and BULK_PIPES: 64 KB of K and 64 KB of V stages); fused (the step finished in the kernel):
    64 KB for every kind (the merge's staging reuses the table's rows; 16 warps with the bulk copies the K stages'
    too) and the 4 bytes after it where the compiler hands the group counter's old value to all threads."""
    table = LUT3_TABLE_BYTES if bits == 3 and not fused else LUT_TABLE_BYTES
    if pipe == 4 or pipe in BULK_PIPES:  # the table, 64 KB of K stages and 64 KB of V stages in one allocation
        return 3 * LUT_TABLE_BYTES + 4 * fused
    return table + (pipe == 1) * 2 * warps * block_n * head_dim // 2 + 4 * fused


def lut_clock_shape(batch: int, heads: int, num_splits: int, warps: int) -> tuple[int, int, int]:
    """The shape of a table-kernel launch's `clocks` tensor: (programs, phases, warps), programs = B x H x
    num_splits / warps (num_splits as the launcher rounds it: a multiple of warps)."""
    from .kernels_lut import CLOCK_PHASES
    return batch * heads * (num_splits // warps), CLOCK_PHASES, warps


def lut_programs_per_sm(warps: int, head_dim: int = 128, pipe: int = LUT_PIPE, maxnreg: int = LUT_MAXNREG,
                        bits: int = 4) -> int:
    """Resident programs per multiprocessor: by shared memory, and by registers (`maxnreg` per thread, 64K per
    SM, allocated in units of 8 per thread)."""
    regs = -(-maxnreg // 8) * 8
    return min(LUT_SMEM_PER_SM // (lut_smem(warps, head_dim, pipe, bits=bits) + 1024), 65536 // (warps * 32 * regs))


def lut_splits(bh: int, max_len: int, warps: int, device: torch.device, head_dim: int = 128, pipe: int = LUT_PIPE,
               maxnreg: int = LUT_MAXNREG, bits: int = 4) -> int:
    """Splits per (b, h) for the table kernel: as many programs as fill one wave of the card (a whole number of
    programs per multiprocessor; a partial second wave of 64 KB programs cost B=8 T=128K 614 vs 484 us), each
    warp's split at least LUT_MIN_WARP_TOKENS tokens."""
    slots = _sm_count(device) * lut_programs_per_sm(warps, head_dim, pipe, maxnreg, bits)
    per_bh = max(1, slots // max(bh, 1))
    need = max(1, -(-max(max_len, 1) // (LUT_MIN_WARP_TOKENS * warps)))
    return min(per_bh, need) * warps


def lut_config_error(bits: int, head_dim: int, warps: int, pipe: int, maxnreg: int,
                     block_n: int = GLUON_BLOCK_N) -> str | None:
    """Why the table kernel cannot be built with these options for `bits`-bit codes at `head_dim`, or None (what
    `launch_gluon`'s lut_warps / lut_pipe / lut_maxnreg take; scripts/sass_decode.py asks the same)."""
    if warps not in (4, 8, 16):
        return f"lut_warps {warps}: takes 4, 8 or 16"
    if block_n not in (16, 32, 64):
        return f"block_n {block_n}: the table kernel's tiles take 16, 32 or 64 tokens"
    if pipe not in (0, 1, 2, 3, 4) + BULK_PIPES:
        return (f"lut_pipe {pipe}: takes 0 (loads at the tile's start), 1 (cp.async stage), 2 (registers, one tile "
                "ahead), 3 (two tiles ahead), 4 (cp.async stages, several tiles ahead), 6 (bulk copies per warp "
                "into stages, several tiles ahead), 7 (as 6, each operand's copy issued once its stage is read) or 8 "
                "(as 7 for K, as 6 for V)")
    if pipe in BULK_PIPES and bits == 3:
        return (f"lut_pipe={pipe} (bulk copies of the planes' rows) takes turbo4 and turbo2 codes; turbo3 takes 2 "
                "or 3")
    if pipe in BULK_PIPES and (2 if bits == 4 else 3) * warps * block_n * head_dim * bits // 8 > LUT_TABLE_BYTES:
        return (f"lut_pipe={pipe} with {warps} warps and {block_n}-token tiles at head_dim {head_dim}: 64 KB must hold "
                f"{'two' if bits == 4 else 'three'} stages of a tile's codes per operand")
    if pipe == 4 and bits == 3:
        return "lut_pipe=4 (cp.async stages of words) takes turbo4 and turbo2 codes; turbo3 takes 2 or 3"
    if pipe == 4 and 2 * warps * block_n * head_dim * bits // 8 > LUT_TABLE_BYTES:
        return (f"lut_pipe=4 with {warps} warps and {block_n}-token tiles at head_dim {head_dim}: 64 KB must hold "
                "two stages of a tile's codes per operand")
    if pipe < 2 and bits != 4:  # (turbo3's keys straddle bytes, turbo2's pair two tokens' words)
        return (f"lut_pipe={pipe}: turbo{bits} codes are read as words only, lut_pipe "
                + ("2 or 3" if bits == 3 else "2, 3, 4, 6, 7 or 8"))
    if not 64 <= maxnreg <= 255:
        return f"lut_maxnreg {maxnreg}: takes 64 to 255 registers per thread"
    if lut_programs_per_sm(warps, head_dim, pipe, maxnreg, bits) < 1:
        return f"lut_maxnreg {maxnreg} with {warps} warps: a program needs more than a multiprocessor's 65536 registers"
    rows = lut_smem(warps, head_dim, pipe, block_n, bits) // 256
    if pipe == 1 and rows & (rows - 1):
        return (f"lut_pipe=1 with {warps} warps at head_dim {head_dim}: the table and its stages must make a "
                "power-of-two number of 256-byte rows (16 warps at head_dim 128)")
    return None


def lut_stage_layouts(pipe: int, kword, vword, tma: bool = False) -> tuple:
    """(KSTAGE, VSTAGE) shared layouts of one of the table kernel's cp.async stages at lut_pipe 4 (the kernel
    keeps as many stages of a tile's K or V words as fill 64 KB: 4 for turbo4 at 8 warps, 8 for turbo2); at
    the bulk copies' lut_pipe 6 - 8 (KSTAGE, None), KSTAGE the layout of each stage with token rows traded
    (`kernels_lut.bulk_stage_layout`: fewer bank conflicts on the V reads; rows of 32 or 64 bytes, the others
    read in the copies' order; tma: VSTAGE `kernels_lut.tma_stage_layout`, V's stages as the tensor copies swizzle
    them, 64-byte rows only); else (None, None). kword / vword: `kernels_lut.lut_layouts`'s."""
    if pipe != 4 and pipe not in BULK_PIPES:
        return None, None
    from .kernels_lut import bulk_stage_layout, lut_stage_layout, tma_stage_layout
    if pipe in BULK_PIPES:
        w, bn, nc = kword.shape
        if tma:
            return bulk_stage_layout(w, bn, nc), tma_stage_layout(w, bn, nc)
        return (bulk_stage_layout(w, bn, nc), None) if nc in (8, 16) else (None, None)
    return lut_stage_layout(kword), lut_stage_layout(vword)


def lut_key_dims(d: int, bits: int, device=None) -> torch.Tensor:
    """The dim each row of the table kernel's K product reads (int64 [D]): turbo4 and turbo3 (K in byte / key
    order, kernels_lut `_k_bytes3`) row k is dim qd(k) = D/4 ((k // 2) % 4) + 4 (k // 16) + 2 ((k // 8) % 2) + k %
    2 (a lane column's keys are consecutive, a key's two codes one register); turbo2 (K keyed by token pairs,
    `_pair_keys_k`) D/4 ((k // 2) % 4) + 16 (k // 64) + 4 ((k // 16) % 4) + 2 ((k // 8) % 2) + k % 2 (a lane
    column's bytes are consecutive, a key's two codes one register, the key byte (k // 16) % 4 of its word)."""
    k = torch.arange(d, device=device)
    if bits == 2:
        return (d // 4) * ((k // 2) % 4) + 16 * (k // 64) + 4 * ((k // 16) % 4) + 2 * ((k // 8) % 2) + k % 2
    return (d // 4) * ((k // 2) % 4) + 4 * (k // 16) + 2 * ((k // 8) % 2) + k % 2


def lut_query_map(w: torch.Tensor, bits: int) -> torch.Tensor:
    """w (fp32 [D, D] or [H, D, D], `decode.map_query`'s map) with its columns in the order the table kernel's
    K product reads the mapped query (QMAP): column k is dim `lut_key_dims`[k]. Kept per map tensor (a layer's map
    is made once)."""
    # made on the device: no host copy (allowed while a graph is captured)
    return _per_map(w, ("cols", bits), lambda: w.index_select(-1, lut_key_dims(w.shape[-1], bits, w.device))
                    .contiguous())


def lut_hadamard_maps(w: torch.Tensor, adj: torch.Tensor, bits: int,
                      warps: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The finishing table kernel's maps as Hadamard factors (`rotation.hadamard_factors`), or None where either
    map is not of that form or the kernel's layouts do not take head_dim D and `warps`: (the query map's fp32 [H or
    1, 2, D], one (pre, post) per head with their dims in the order the K product reads them (`lut_key_dims`), the V
    inverse map's fp32 [1, 2, D] in the natural order). The kernel then maps the query and the output with two small
    ±1 products each instead of reading two dense D x D maps (64 KB each at head_dim 128) in every program. Kept per
    map tensor; each is read on the host once (a sync), so a map first seen while a graph is captured takes the
    dense maps."""
    d = w.shape[-1]
    if d & (d - 1) or d < 64 or (d // HAD_D1) % warps:
        return None
    fq = _per_map(w, ("hadamard", bits), lambda: _hadamard_of(w, lut_key_dims(d, bits)))
    fa = _per_map(adj, ("hadamard", None), lambda: _hadamard_of(adj, None))
    if fq is None or fa is None or fq is _NOT_YET or fa is _NOT_YET or fa.shape[0] != 1:
        return None
    return fq, fa


def _hadamard_of(m: torch.Tensor, dims: torch.Tensor | None):
    """m's Hadamard factors as fp32 [-1, 2, D] on m's device, their dims reordered by `dims` (or not), None where m
    has none, _NOT_YET while a graph is captured (the host read would break it)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return _NOT_YET
    f = hadamard_factors(m)
    if f is None:
        return None
    f = f.reshape(-1, 2, m.shape[-1])
    return (f if dims is None else f.index_select(-1, dims)).float().to(m.device)


_NOT_YET = object()  # (`_hadamard_of` while a graph is captured: not kept, the next call looks again)


def _per_map(w: torch.Tensor, tag: tuple, make):
    """make() kept per (map tensor, tag): the entry goes when w does, and is made again if w changes in place or
    make returned _NOT_YET."""
    key = (id(w), tag)
    cached = _LUT_MAPS.get(key)
    if cached is not None and cached[0]() is w and cached[1] == _version(w):
        return cached[2]
    out = make()
    if out is _NOT_YET or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
        return out  # made by captured kernels: its values exist once the graph runs, so it is not kept
    if key not in _LUT_MAPS:  # the entry goes when w does (no device memory held for freed maps)
        weakref.finalize(w, _LUT_MAPS.pop, key, None)
    _LUT_MAPS[key] = (weakref.ref(w), _version(w), out)
    return out


def _version(w: torch.Tensor) -> int:
    """w's in-place version counter; 0 for an inference tensor (made under torch.inference_mode, as the engine's
    forward passes make a layer's query map), which has none: the layers never change their maps in place."""
    return 0 if w.is_inference() else w._version


_LUT_MAPS: dict = {}  # (id(w), tag) -> (weak reference to w, w's version, what `_per_map` made); entries leave with w


def lut_query_rows(g: int, head_dim: int, warps: int) -> int:
    """Query rows the table kernel's prologue map computes (QR): the group's g rounded up to a power of two, at
    least 4, and 8 where fewer rows would leave a thread less than one column (lanes are rows x column groups)."""
    qr = max(4, 1 << max(g - 1, 0).bit_length())
    return qr if head_dim // ((32 // qr) * warps) >= 1 else GLUON_ROWS


def _check_switch(name: str, value) -> None:
    """ValueError unless an option `name` of the table kernel is True, False or None (None: the default rule, the
    function of the same name)."""
    if value not in (None, True, False):
        raise ValueError(f"{name} {value!r}: takes True, False or None (the default rule, `{name}`)")


def _launch_lut(q, k_codes, k_norms, v_codes, v_norms, lengths, k_kind, v_kind, *, max_len, num_splits, block_n,
                warps, pipe, maxnreg=LUT_MAXNREG, w=None, fused=None, row_source=None,
                extras=None, clocks=None, hadamard=None, early=None,
                compact=None, tma=None, bias=None) -> SplitPartials | torch.Tensor:
    """The table kernel's launch; fused = (adj, counters, out): the kernel finishes the step (`attend_planes`)
    and the filled `out` is returned instead of split partials; row_source = (k_table, v_table, log2 of the chunk
    tokens): codec rows through chunk tables instead of the planes (`launch_rows`; the planes are then None);
    extras = (sink_k, sink_v, k_mean, qscale) merged by the finishing program (fused only; sinks as
    `decode._window_pair` gives them or None, k_mean fp32 [B*H, D] or None). clocks: None, or an int64 tensor of
    `lut_clock_shape(...)` that each warp's stamps fill (kernels_lut `_stamp`; a diagnostic:
    scripts/phase_clocks.py). hadamard (fused only): the query and V inverse maps' factors
    (`lut_hadamard_maps`) instead of the dense maps, or None. early: the first tiles' loads before the prologue
    (`lut_early_loads`; None: the kind's default in the finishing build, else not). compact: the softmax over query
    rows 0-3 only (True needs at most 4 query rows per KV head; None: `lut_compact`). tma: V's tiles through a tensor
    map with the 64-byte swizzle (True needs a bulk-copy lut_pipe and 64-byte V rows; None: `lut_tma`; a launch
    captured in a CUDA graph before its map was made copies without it, `tma.tensor_map`). bias: None, or float32
    [B, >= max_len] additive scores per token in log2 units, token stride 1 (`_check_bias`; not fused)."""
    from .kernels_lut import decode_lut_kernel, lut_asm, lut_asm_k, lut_layouts
    why = lut_unsupported(k_kind, v_kind) or lut_config_error(k_kind.bits, q.shape[-1], warps, pipe, maxnreg,
                                                              block_n)
    if why:
        raise ValueError(why)
    if bias is not None and fused is not None:
        raise ValueError("an additive bias runs on the split build (`launch_rows`), not the finishing one")
    bits = k_kind.bits
    early = lut_early_loads(bits, pipe, w is not None and hadamard is None, early, fused is not None)
    b, h, g, d = q.shape
    _check_switch("lut_compact", compact)
    if compact and g > 4:
        raise ValueError(f"lut_compact=True: the compact softmax takes at most 4 query rows per KV head, got {g}")
    compact = lut_compact(g, warps, bits, row_source is not None) if compact is None else compact
    rb = d * bits // 8
    _check_switch("lut_tma", tma)
    if tma and (pipe not in BULK_PIPES or rb != 64 or row_source is not None):
        raise ValueError(f"lut_tma=True: the tensor copies take planes of 64-byte rows (turbo4 at head_dim 128) on "
                         f"lut_pipe {' / '.join(map(str, BULK_PIPES))}, got {rb}-byte rows on lut_pipe {pipe}"
                         f"{' over codec rows' if row_source is not None else ''}")
    tma = lut_tma(pipe, rb, row_source is not None) if tma is None else tma
    if num_splits is None:
        num_splits = lut_splits(b * h, max_len, warps, q.device, d, pipe, maxnreg, bits)
    num_splits = -(-num_splits // warps) * warps
    if clocks is not None:
        want = lut_clock_shape(b, h, num_splits, warps)
        if not isinstance(clocks, torch.Tensor) or clocks.dtype != torch.int64 or tuple(clocks.shape) != want \
                or not clocks.is_contiguous() or clocks.device != q.device:
            raise ValueError(f"clocks must be a contiguous int64 tensor {list(want)} on {q.device} ([programs, "
                             f"phases, warps] for {num_splits} splits), got {getattr(clocks, 'dtype', type(clocks))} "
                             f"{list(getattr(clocks, 'shape', []))}")
    q = q.contiguous()
    if w is not None:
        check_query_map(q, w)
        wq = lut_query_map(w, bits) if hadamard is None else hadamard[0]
        w_hs = (d * d if hadamard is None else 2 * d) if w.dim() == 3 else 0
    block_m = 16
    rows = b * h * num_splits * block_m  # partial rows: 16 per split
    if fused is not None:  # one partial per program: [B*H, programs, NH, D] and [.., 2, NH] (+ the sinks' per group)
        adj, counters, out = fused
        if hadamard is not None:
            adj = hadamard[1]
        rows = b * h * (num_splits // warps + (extras is not None)) * GLUON_ROWS
    o = torch.empty(rows * d, dtype=torch.float32, device=q.device)
    ml = torch.empty(rows * 2, dtype=torch.float32, device=q.device)
    # the layouts count table keys per row: a byte (turbo4, turbo2) or a 6-bit pair of codes (turbo3)
    nb = d // 4 if bits == 2 else d // 2
    kload, vload, kword, vword = lut_layouts(warps, block_n, nb, words=True)
    if pipe in BULK_PIPES:
        _check_bulk(q, k_codes, v_codes, row_source)
    vmap = None
    if tma:
        from .tma import tensor_map
        vmap = tensor_map(v_codes, block_n)  # (None inside a capture before it was made: copied without it)
    kstage, vstage = lut_stage_layouts(pipe, kword, vword, vmap is not None)
    if row_source is not None:  # the planes' arguments point at the tables (never read), their strides 0
        k_tab, v_tab, shift = row_source
        k_codes = k_norms = k_tab
        v_codes = v_norms = v_tab
        strides = (0,) * 6
    else:
        k_tab, v_tab, shift = lengths, lengths, 0
        strides = (k_codes.stride(0), k_codes.stride(1), v_codes.stride(0), v_codes.stride(1), k_norms.stride(0),
                   k_norms.stride(1))
    sk, sv, kmean, qscale = extras if extras is not None else (None, None, None, 0.0)
    kernel = decode_lut_kernel[(num_splits // warps, b * h)](
        q, k_codes, k_norms, v_codes, v_norms, lengths, o, ml, lut_words(d, q.device, bits), h, g, num_splits,
        *strides, wq if w is not None else q,
        w_hs if w is not None else 0, counters if fused else lengths, adj if fused else q,
        out if fused else q, k_tab, v_tab, shift, q if sk is None else sk, q if sv is None else sv,
        0 if sk is None else sk.shape[-2], 0 if sk is None else sk.stride(0), 0 if sk is None else sk.stride(1),
        q if kmean is None else kmean, qscale, clocks, q if vmap is None else vmap, bias,
        0 if bias is None else bias.stride(0), D=d, ASM=lut_asm(pipe >= 2, bits),
        KASM=lut_asm_k(pipe >= 2, bits), W=warps, BN=block_n, NH=GLUON_ROWS, BLOCK_M=block_m, KLOAD=kload,
        VLOAD=vload, PIPE=pipe, KWORD=kword, VWORD=vword, BITS=bits, QMAP=w is not None,
        QR=lut_query_rows(g, d, warps), FUSED=fused is not None,
        CODEC_ROWS=row_source is not None, SINKS=sk is not None, KMEAN=kmean is not None, KSTAGE=kstage,
        VSTAGE=vstage, HAD=hadamard is not None, EARLY=early, COMPACT=compact, BIAS=bias is not None,
        num_warps=warps, maxnreg=maxnreg)
    key = (d, warps, block_n, pipe, maxnreg, bits, w is not None, fused is not None, row_source is not None,
           hadamard is not None, early, compact, vmap is not None, bias is not None)
    if key not in _LUT_CHECKED:  # the decoders address the table from the start of shared memory
        want = lut_smem(warps, d, pipe, block_n, bits, fused is not None)
        if kernel.metadata.shared != want:
            raise RuntimeError(f"the table kernel uses {kernel.metadata.shared} bytes of shared memory, not its "
                               f"one buffer's {want}: the table's address is unknown")
        _LUT_CHECKED.add(key)
    if fused is not None:
        return out
    return SplitPartials(o, ml, num_splits, block_m, g, 1, 1, 1)


@functools.lru_cache(maxsize=16)  # asked at every attend_planes call
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def bulk_unsupported(q, k_codes, v_codes) -> str | None:
    """Why the bulk copies of lut_pipe 6 - 8 (cp.async.bulk: sm_90 and later, 16-byte aligned rows) cannot read these
    planes, or None."""
    if q.is_cuda and _capability(q.device) < (9, 0):
        return (f"lut_pipe=6 / 7 / 8 (cp.async.bulk) needs compute capability 9.0 or later, "
                f"{torch.cuda.get_device_name(q.device)} has {'.'.join(map(str, _capability(q.device)))}")
    for name, x in (("K", k_codes), ("V", v_codes)):
        if x.data_ptr() % 16 or x.stride(-1) != 1 or any(st % 16 for st in x.stride()[:-1]):
            return (f"lut_pipe=6 / 7 / 8: the {name} code planes must start at a 16-byte boundary with rows, heads and "
                    f"batches 16-byte multiples apart, got address {x.data_ptr():#x} and strides {tuple(x.stride())}")
    return None


def _check_bulk(q, k_codes, v_codes, row_source) -> None:
    """lut_pipe 6 / 7 / 8 asked for where it cannot run: a ValueError that says why."""
    if row_source is not None:
        raise ValueError("lut_pipe=6 / 7 / 8 copy planes; codec rows (launch_rows) take lut_pipe 2 or 3")
    why = bulk_unsupported(q, k_codes, v_codes)
    if why:
        raise ValueError(why)


def lut_early_loads(bits: int, pipe: int, dense_map: bool, early: bool | None = None, fused: bool = True) -> bool:
    """Whether the table kernel issues its first tiles' loads before its prologue (its EARLY): `early` as given,
    None: in the finishing build (fused) of the kinds of LUT_EARLY_BITS where it can (lut_pipe 2 or 3, and no dense
    query map in the prologue), and in every finishing build on the bulk copies (lut_pipe 6, 7 or 8, no dense query
    map). ValueError for early=True where it cannot."""
    can = (pipe in (2, 3) or pipe in BULK_PIPES) and not dense_map
    if early is None:
        return can and fused and (bits in LUT_EARLY_BITS or pipe in BULK_PIPES)
    if early and not can:
        raise ValueError(f"lut_early=True: the first tiles load before the prologue with lut_pipe 2, 3, 6, 7 or 8 and "
                         f"the query map as Hadamard factors or none, got lut_pipe {pipe}"
                         + (" and a dense query map" if dense_map else ""))
    return bool(early)


def lut_fused_maxnreg(bits: int, pipe: int | None = None) -> int:
    """The finishing table kernel's register cap for `bits`-bit codes on lut_pipe `pipe` (None: the kind's default
    build, `lut_fused_build`), `attend_planes`' default lut_maxnreg."""
    if pipe is None:
        pipe = lut_fused_build(bits)[0]
    return LUT_FUSED_MAXNREGS.get((bits, pipe), LUT_FUSED_MAXNREG)


@functools.lru_cache(maxsize=1)
def _fused_tiles() -> dict:
    """LUT_FUSED_TILES with the entries of LUT_FUSED_TILES_SINCE that the installed triton release has reached (none
    for a development build whose version does not parse)."""
    from . import triton_release
    release = triton_release()
    tiles = dict(LUT_FUSED_TILES)
    for since, entries in sorted(LUT_FUSED_TILES_SINCE.items()):
        if release is not None and release >= since:
            tiles.update(entries)
    return tiles


def lut_compact(g: int, warps: int, bits: int = 4, rows: bool = False) -> bool:
    """Whether the table kernel's softmax runs compact by default: LUT_COMPACT, at most 4 query rows per KV head (g),
    at most 8 warps a program (the 16-warp option's loop, 128 registers, would spill one with it), and not turbo3
    over codec rows (`launch_rows`: 7-10% slower with it on the H200 although 37 fewer instructions a tile, session
    33; turbo4's rows 5-6% and turbo2's 16-18% faster)."""
    return LUT_COMPACT and g <= 4 and warps <= 8 and not (bits == 3 and rows)


def lut_tma(pipe: int, row_bytes: int, rows: bool = False) -> bool:
    """Whether the table kernel copies V through a tensor map by default: a lut_pipe of LUT_TMA_PIPES (where it was
    measured faster), planes (not codec rows) of 64-byte rows (turbo4 at head_dim 128: the one row width whose V
    reads meet bank conflicts after the stages' token trade, `kernels_lut.tma_stage_layout`). Any bulk-copy
    lut_pipe (BULK_PIPES) takes it when asked (`_launch_lut`'s tma=True)."""
    return pipe in LUT_TMA_PIPES and row_bytes == 64 and not rows


def lut_fused_build(bits: int, pipe: int | None = None, block_n: int | None = None,
                    bulk: bool = True) -> tuple[int, int]:
    """(lut_pipe, lut_block_n) of the finishing table kernel (`attend_planes`) for `bits`-bit codes: the ones
    given, else LUT_FUSED_TILES' for the kind (turbo4 and turbo2: 64-token tiles through per-warp bulk copies,
    turbo4 on lut_pipe 8, turbo2 on 7, or the kind's LUT_FUSED_FALLBACKS where `bulk` is False: `bulk_unsupported`;
    entries of LUT_FUSED_TILES_SINCE from their triton release on), else (LUT_PIPE, GLUON_BLOCK_N)."""
    dp, dn = _fused_tiles().get(bits, (LUT_PIPE, GLUON_BLOCK_N))
    if pipe is None and block_n is None:
        return LUT_FUSED_FALLBACKS[bits] if dp in BULK_PIPES and not bulk else (dp, dn)
    return (LUT_PIPE if pipe is None else pipe), (GLUON_BLOCK_N if block_n is None else block_n)


def fused_unsupported(k_kind: PackedKind, v_kind: PackedKind, rows: int, adj: torch.Tensor | None) -> str | None:
    """Why `attend_planes` cannot finish this one-token step in the table kernel, or None."""
    if not lut_default(k_kind, v_kind):
        return f"{k_kind.kind}/{v_kind.kind}: the finishing table kernel runs where the table kernel is the default"
    if adj is None or adj.dim() != 2:
        return "the finishing table kernel takes one dense V inverse map [D, D]"
    return _lut_call_unsupported(rows, 1)


def attend_planes(q: torch.Tensor, w: torch.Tensor, adj: torch.Tensor, k_codes: torch.Tensor, k_norms: torch.Tensor,
                  v_codes: torch.Tensor, v_norms: torch.Tensor, lengths: torch.Tensor, k_kind: PackedKind,
                  v_kind: PackedKind, *, max_len: int, counters: torch.Tensor, out_dtype: torch.dtype | None = None,
                  out: torch.Tensor | None = None, num_splits: int | None = None, lut_warps: int = LUT_WARPS,
                  lut_pipe: int | None = None,
                  lut_maxnreg: int | None = None, sinks: tuple[torch.Tensor, torch.Tensor] | None = None,
                  k_mean: torch.Tensor | None = None, qscale: float | None = None,
                  clocks: torch.Tensor | None = None, lut_block_n: int | None = None,
                  lut_hadamard: bool | None = None, lut_early: bool | None = None,
                  lut_compact: bool | None = None, lut_tma: bool | None = None) -> torch.Tensor:
    """A whole one-token decode step over code planes in one launch of the table kernel: the query map in its
    prologue, the splits merged per program, and the last program of each (b, kv head) group merging the group
    (with the fp16 sinks and the key mean when given), mapping it back through `adj` and writing the output (no
    recent window or mask: those steps take `launch_gluon` and `decode.finish_decode`).

    q: [B, H, G, D] query rows (fp16/bf16/fp32, unmapped); w: the query map (fp32 [D, D] or [H, D, D], softmax scale
    * log2 e folded in, as `decode.map_query` takes it); adj: fp32 [D, D] V inverse map on row vectors. counters:
    int32 [B*H] zeros, owned by the caller (a layer's), zero again after the launch. sinks: (sink_k, sink_v), each
    [B, H, n, D] fp16/bf16/fp32 in the original space, attended before the compressed tokens; k_mean: [B, H, 1, D]
    the mean subtracted from the compressed keys (their scores get q·mean back); both need qscale (softmax scale *
    log2 e, the factor of the unmapped query's scores). Returns [B, 1, H*G, D] in `out_dtype` (default q's dtype),
    written into `out` if given (contiguous, that shape). clocks: a diagnostic, int64 [`lut_clock_shape`] filled
    with each warp's timer stamps (`_launch_lut`; give num_splits to know its shape before the call). lut_pipe /
    lut_block_n (tokens per tile of a warp): None takes `lut_fused_build`'s for the codes' kind, lut_maxnreg None
    `lut_fused_maxnreg`'s. lut_hadamard: w and adj applied as Hadamard factors (`lut_hadamard_maps`: rotated segment
    maps, the query's rows scaled or not) where they are of that form (None), always (True: ValueError where they
    are not) or never (False: the dense maps). lut_early: the first tiles' loads before the kernel's prologue
    (True, False; None: where LUT_EARLY_BITS has the kind; `lut_early_loads`, ValueError where it cannot).
    lut_compact: the softmax over query rows 0-3 only (`_launch_lut`'s compact; None: `lut_compact`). lut_tma: V's
    tiles through a tensor map (`_launch_lut`'s tma; None: `lut_tma`)."""
    b, h, g, d = _check_query(q, k_kind)
    why = fused_unsupported(k_kind, v_kind, g, adj)
    if why:
        raise ValueError(why)
    extras = _fused_extras(sinks, k_mean, qscale, b, h, d, q.device)
    if adj.dtype != torch.float32 or tuple(adj.shape) != (d, d):
        raise ValueError(f"adj must be fp32 [{d}, {d}], got {adj.dtype} {list(adj.shape)}")
    if counters.dtype != torch.int32 or counters.numel() != b * h or counters.device != q.device \
            or not counters.is_contiguous():
        raise ValueError(f"counters must be contiguous int32 zeros [{b * h}] on {q.device}, got {counters.dtype} "
                         f"{list(counters.shape)} on {counters.device}")
    _check_planes(q, k_codes, k_norms, v_codes, v_norms, lengths, k_kind, v_kind)
    check_query_map(q, w)
    lut_pipe, lut_block_n = lut_fused_build(k_kind.bits, lut_pipe, lut_block_n,
                                            bulk_unsupported(q, k_codes, v_codes) is None)
    # the merge stages the W warps' accumulators, the output rows (and the sinks' share) and max / sum in the
    # table's 64 KB (16 warps with the bulk copies: in the table's and the K stages' 128 KB, `_finish_fused`)
    staging = (lut_warps + 1 + (extras is not None)) * GLUON_ROWS * d * 4 + 2 * lut_warps * GLUON_ROWS * 4
    room = LUT_TABLE_BYTES * (2 if lut_pipe in BULK_PIPES and lut_warps > 8 else 1)
    if staging > room:
        raise ValueError(f"lut_warps {lut_warps}: the finishing table kernel stages {staging} bytes in {room} of "
                         f"shared memory; it takes 4 or 8 warps at head_dim {d}, 16 with lut_pipe "
                         f"{' / '.join(map(str, BULK_PIPES))}")
    if lut_maxnreg is None:
        lut_maxnreg = lut_fused_maxnreg(k_kind.bits, lut_pipe)
    had = None if lut_hadamard is False else lut_hadamard_maps(w, adj, k_kind.bits, lut_warps)
    if lut_hadamard and had is None:
        raise ValueError("lut_hadamard=True: the query map and adj must each be diag(pre) H diag(post) (H the "
                         "Sylvester Hadamard matrix; a rotated segment map, rows scaled or not), head_dim a power "
                         f"of two >= 64 with head_dim / {HAD_D1} a multiple of lut_warps ({lut_warps})")
    if out is None:
        out = torch.empty(b, 1, h * g, d, dtype=out_dtype or q.dtype, device=q.device)
    elif tuple(out.shape) != (b, 1, h * g, d) or not out.is_contiguous() or out.device != q.device \
            or out.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"out must be a contiguous fp16/bf16/fp32 [{b}, 1, {h * g}, {d}] tensor on {q.device}, "
                         f"got {out.dtype} {list(out.shape)}")
    return _launch_lut(q, k_codes, k_norms, v_codes, v_norms, lengths, k_kind, v_kind, max_len=max_len,
                       num_splits=num_splits, block_n=lut_block_n, warps=lut_warps, pipe=lut_pipe,
                       maxnreg=lut_maxnreg, w=w, fused=(adj.contiguous(), counters, out), extras=extras,
                       clocks=clocks, hadamard=had, early=lut_early, compact=lut_compact,
                       tma=lut_tma)


def _fused_extras(sinks, k_mean, qscale, b: int, h: int, d: int, device) -> tuple | None:
    """attend_planes' sinks / key mean as `_launch_lut` passes them (None when neither), or ValueError."""
    sk, sv = sinks if sinks is not None else (None, None)
    if sk is None or sk.shape[-2] == 0:  # (a key mean alone shifts every score of a row alike: nothing to do)
        return None
    if qscale is None:
        raise ValueError("sinks need qscale (softmax scale * log2 e)")
    n = sk.shape[-2]
    for name, x in (("sink_k", sk), ("sink_v", sv)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (b, h, n, d) or x.device != device \
                or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name} must be a fp16/bf16/fp32 [{b}, {h}, {n}, {d}] tensor on {device}, got "
                             f"{getattr(x, 'dtype', type(x))} {list(getattr(x, 'shape', []))}")
    sk, sv = _window_pair(sk, sv.to(sk.dtype))  # rows of D contiguous values, one stride pair for both
    if k_mean is not None:
        if tuple(k_mean.shape) != (b, h, 1, d) or k_mean.device != device:
            raise ValueError(f"k_mean must be [{b}, {h}, 1, {d}] on {device}, got {list(k_mean.shape)} on "
                             f"{k_mean.device}")
        k_mean = k_mean.float().reshape(b * h, d).contiguous()
    return sk, sv, k_mean, float(qscale)


def rows_unsupported(k_kind: PackedKind, v_kind: PackedKind, rows: int, tq: int, chunk: int) -> str | None:
    """Why `launch_rows` cannot run this call over codec rows in chunks of `chunk` tokens, or None: K/V kinds and
    head_dim the table kernel decodes (`lut_unsupported`: turbo4 at head_dim 64 or 128, turbo3 and turbo2 at 128),
    one query token, chunks of a power of two >= 32 tokens."""
    why = lut_unsupported(k_kind, v_kind)
    if why:
        return why
    if k_kind.row_bytes % 4 != 2:
        return f"{k_kind.kind}: rows of {k_kind.row_bytes} bytes (the row reader takes 2 mod 4)"
    if chunk < GLUON_BLOCK_N or chunk & (chunk - 1):
        return f"chunks of {chunk} tokens: the table kernel reads rows in chunks of a power of two >= {GLUON_BLOCK_N}"
    return _lut_call_unsupported(rows, tq)


def _check_bias(bias, b: int, max_len: int, device) -> None:
    """The table kernel's additive bias: None, or float32 [B, >= max_len] with token stride 1 on the query's
    device (any batch stride)."""
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dtype != torch.float32 or bias.dim() != 2
                             or bias.shape[0] != b or bias.shape[1] < max_len or bias.device != device
                             or (bias.shape[1] > 1 and bias.stride(1) != 1)):
        got = f"{bias.dtype} {list(bias.shape)} on {bias.device}" if isinstance(bias, torch.Tensor) \
            else type(bias).__name__
        raise ValueError(f"bias must be float32 [{b}, >= {max_len}] (batch rows, tokens; token stride 1) on "
                         f"{device}, got {got}")


def launch_rows(q: torch.Tensor, k_table: torch.Tensor, v_table: torch.Tensor, lengths: torch.Tensor,
                k_kind: PackedKind, v_kind: PackedKind, *, chunk: int, max_len: int, w: torch.Tensor,
                num_splits: int | None = None, lut_warps: int = LUT_WARPS, lut_pipe: int = LUT_ROWS_PIPE,
                lut_maxnreg: int = LUT_ROWS_MAXNREG, bias: torch.Tensor | None = None) -> SplitPartials:
    """Split partials of a one-token decode step read from codec rows ([fp16 norm][codes]: the dynamic cache's
    chunks) by the table kernel, which maps the query in its prologue; `decode.finish_decode` merges them (with
    the fp16 windows, key mean and V inverse map).

    q: [B, H, G, D] query rows (fp16/bf16/fp32, unmapped); w: the query map (fp32 [D, D] or [H, D, D], softmax
    scale * log2 e folded in). k_table / v_table: `decode.chunk_table`s of chunks uint8 [B, H, c, row_bytes] at
    even addresses holding `chunk` tokens each (a power of two >= 32; the last may hold fewer; K and V chunked
    alike); lengths: int32 [B] tokens per batch row (<= max_len and <= the tokens stored). lut_pipe: 2 or 3 (rows
    are read as words). bias: None, or float32 [B, >= max_len] (token stride 1, any batch stride: 0 broadcasts one
    row) added to every query row's score of each token, in log2 units (a transformers mask over the compressed
    tokens times log2 e; -inf masks the token: a padded batch's left padding)."""
    b, h, g, d = _check_query(q, k_kind)
    why = rows_unsupported(k_kind, v_kind, g, 1, chunk)
    if why:
        raise ValueError(why)
    if lut_pipe not in (2, 3):
        raise ValueError(f"lut_pipe {lut_pipe}: rows are read into registers, lut_pipe 2 or 3")
    for name, tab in (("k_table", k_table), ("v_table", v_table)):
        if not isinstance(tab, torch.Tensor) or tab.dtype != torch.int64 or tab.dim() != 2 or tab.shape[1] != 3 \
                or tab.shape[0] < 1 or tab.device != q.device or not tab.is_contiguous():
            got = f"{tab.dtype} {list(tab.shape)}" if isinstance(tab, torch.Tensor) else type(tab).__name__
            raise ValueError(f"{name} must be a contiguous int64 [chunks >= 1, 3] chunk table on {q.device} "
                             f"(decode.chunk_table), got {got}")
    _check_lengths(lengths, b, q.device)
    _check_bias(bias, b, max_len, q.device)
    return _launch_lut(q, None, None, None, None, lengths, k_kind, v_kind, max_len=max_len, num_splits=num_splits,
                       block_n=GLUON_BLOCK_N, warps=lut_warps, pipe=lut_pipe, maxnreg=lut_maxnreg, w=w,
                       row_source=(k_table, v_table, chunk.bit_length() - 1), bias=bias)


def attend_gluon(q: torch.Tensor, k_codes: torch.Tensor, k_norms: torch.Tensor, v_codes: torch.Tensor,
                 v_norms: torch.Tensor, lengths: torch.Tensor, k_kind: PackedKind, v_kind: PackedKind, *,
                 out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
                 **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """`decode.attend_packed` for planar codes: `launch_gluon` (its keyword options) and the split merge.
    Returns (out fp32 [B, H, G, D] in the V rotation's space, lse fp32 [B, H, G])."""
    parts = launch_gluon(q, k_codes, k_norms, v_codes, v_norms, lengths, k_kind, v_kind, **kw)
    return merge_partials(parts, q.shape, q.device, out, lse)

