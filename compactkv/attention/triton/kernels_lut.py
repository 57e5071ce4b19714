"""Decode attention over planar turbo4, turbo3 or turbo2 codes with a shared-memory lookup table (Gluon), W warps
per program.

The Gluon kernel (kernels_gluon.py) is bound by the integer pipe: its prmt decoders take ~19 instructions per 4
code bytes (docs/kernels.md, session 9). Here a code byte is decoded by one table read instead: a 256-entry
table of half2 (c[low nibble], c[high nibble]), one copy per lane so that a warp's 32 reads hit 32 different
banks (entry e of lane l at byte e * 256 + 4 l: the address is one prmt that drops the code byte into byte 1 of
the lane's offset). Per code byte: that prmt, one shared load, and one prmt that pairs the halves of two bytes
the way the mma operand wants them (part p of a byte is code p, each part its own operand, as in the prmt
decoders). The table (64 KB, half of each 256-byte row used) is shared by the program's W warps, each of which
runs the one-warp Gluon kernel's loop over a split of its own: every tensor has a leading warp dimension (the
batched m16n8k16 products keep the warps apart), so no value crosses warps and the loop has no barrier.

turbo4 drops both pairing prmt (session 20). K runs its head_dim dot in byte order (`_k_bytes3`,
`gluon.lut_key_dims`): a byte's entry (c[dim 2 j], c[dim 2 j + 1]) is one A-operand register as read (one operand
over all D dims, the query map's columns permuted to match; `lut_asm_k`). V (lut_pipe >= 2) is keyed by token
pairs (`_value_keys`): one shift and one lop3 turn the same code word of tokens 2 t and 2 t + 1 into 4 keys (low
code of 2 t | low code of 2 t + 1 << 4) of the even dims and 4 of the odd dims, and the same table read of such a
key is the V operand's register (c[token 2 t], c[token 2 t + 1]) for one dim. The K product runs as two
independent mma chains (dims in halves) added, every kind.

Without a prefetch the loop waited on its own loads (ncu: long-scoreboard stalls 29% of warp cycles; session 10),
so by default (PIPE 3) the code bytes of the next two tiles and their norms are loaded into registers while this
tile is decoded. They travel as int32 words: a loop-carried uint8 tensor takes a register per byte. The decoder
then takes each byte from its word with a prmt selector (a constant per register) in the same prmt that forms
its table address, so the words cost no extra instruction.

turbo2 (BITS 2, words only): a byte holds 4 codes, so an entry is 8 bytes (c[bits 0-1], c[bits 2-3] | c[bits
4-5], c[bits 6-7]), read with one ld.shared.v2 (entry e of lane l at byte 256 e + 8 l: a warp's read is 256 bytes,
two conflict-free wavefronts). Since session 32 its keys pair two tokens, so that an entry is two registers of an
operand as read (no pairing prmt; `_pair_asm`): K keys (VKEY_ASM over tokens g and g + 8) hold a nibble (two dims)
of each, the entry rows g and g + 8 of the A operand for those dims (`_pair_keys_k`, K one operand over the D dims
as turbo4's); V keys (V2KEY_ASM over tokens 2 t and 2 t + 1) hold codes 0 and 2 (or 1 and 3) of a byte of each,
the entry the V operand's rows of those two dims for the token pair (`_pair_keys_v`): two V operands and
accumulators of D / 2 rows, as turbo4's.

turbo3 (BITS 3, words only): the codec packs code i at row bits [3 i, 3 i + 3), so the codes of dims 2 j, 2 j + 1
form the 6-bit key at bits [6 j, 6 j + 6), which plays the part of a turbo4 byte (same operands, query order and
output dims): one read of a 64-entry half2 table (128-byte rows of 32 lane copies, 8 KB) at an address made by one
funnel shift of the 64-bit window holding the key and one and/or. A K lane's 16 keys are 12 bytes (3 words), a V
lane's 8 keys 6 bytes starting at bit 0 or 16 of a word (`_keys3_k`, `_keys3_pairs`, `lut3_shift`). Since session
32 without pairing prmt, as turbo4: K in key order (`_k_bytes3` over its windows, a key's entry (c[dim 2 j], c[dim
2 j + 1]) one register), V keyed by token pairs (V3KEY_ASM: a shift and a lop3 per word give keys (code of token
2 t, code of token 2 t + 1) of one dim, whose entry is the V operand's register); `_lut3_asm_k` reads both.

The table must sit at the start of the program's shared memory (the decoder addresses it from `global_smem`):
the launcher checks that the compiled kernel uses exactly the table's bytes (no other shared buffer).
"""

from __future__ import annotations

import functools

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from .kernels_gluon import FLAT2, FLAT3, accumulate_pv, async_load, cta_barrier, scale_acc, smem_view, split_rule


@functools.lru_cache(maxsize=16)  # asked at every launch
def lut_asm(words: bool = False, bits: int = 4) -> str | None:
    """turbo4's pack=4 decoder of a byte's 2 parts (its V at lut_pipe < 2): outputs first ($0, $1 = part 0 of
    elements 0,1 / 2,3; $2, $3 = part 1: part p holds code p of each byte, bits [4 p, 4 p + 4)), then inputs from
    $4: the 4 code bytes (words: the 4 int32 words holding them), then the lane's byte offset (4 x lane), with words
    the 4 prmt selectors that take each byte from its word. turbo4 entries are 4 bytes (c[part 0], c[part 1]), one
    ld.shared.b32 per byte. turbo3 and turbo2: None (their K and V keys go through `lut_asm_k`)."""
    if bits != 4:
        return None
    if words:
        addr = [f"${4 + k}, $8, ${12 + k}" for k in range(4)]
    else:
        addr = [f"$4, $5, {0x7604 + 16 * k:#x}" for k in range(4)]
    lines = ["{", ".reg .b32 b, a, l0, l1, l2, l3;", "mov.u32 b, global_smem;"]
    for k in range(4):
        lines += [f"prmt.b32 a, {addr[k]};", "add.u32 a, a, b;", f"ld.shared.b32 l{k}, [a];"]
    for x, y, half in ((0, 1, 0), (2, 3, 1)):  # elements x, y -> the half-th register of each part
        lines += [f"prmt.b32 ${half}, l{x}, l{y}, 0x5410;", f"prmt.b32 ${2 + half}, l{x}, l{y}, 0x7632;"]
    lines.append("}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=4)  # asked at every launch
def lut_asm_k(words: bool = False, bits: int = 4) -> str | None:
    """turbo4's K decoder in byte order (`_k_bytes3`), and V's for token-pair keys (`_value_keys`): a key byte's
    table entry (c[low code], c[high code]) is the A operand's register as it is read, so no pairing prmt (pack 4:
    outputs $0, $1 = the entries of elements 0 and 2; elements 1 and 3 repeat their bytes). Inputs as `lut_asm`'s,
    one per element (words: the 4 words, the 4 lane offsets, the 4 selectors; else the 4 code bytes in one
    register, then the lane offsets). turbo2 (words only): `_pair_asm`, its K and V keyed by token pairs (session
    32; in byte order, session 20 found, each 8-byte entry would feed registers k and k + 8, which one ld.shared.v2
    cannot fill without moves). turbo3 (words only): `_lut3_asm_k`, its K in key order and V keyed by token pairs
    (session 32)."""
    if bits == 2:
        return _pair_asm() if words else None
    if bits == 3:
        return _lut3_asm_k() if words else None
    lines = ["{", ".reg .b32 b, a;", "mov.u32 b, global_smem;"]
    for r, el in ((0, 0), (1, 2)):
        addr = f"${2 + el}, ${6 + el}, ${10 + el}" if words else f"$2, ${3 + el}, {0x7604 + 16 * el:#x}"
        lines += [f"prmt.b32 a, {addr};", "add.u32 a, a, b;", f"ld.shared.b32 ${r}, [a];"]
    lines.append("}")
    return "\n".join(lines)


def _pair_asm() -> str:
    """turbo2's decoder of token-pair keys (`_pair_keys_k`, `_pair_keys_v`; pack 4, the 4 elements of one key: the
    operand's registers of rows g and g + 8 for one k pair): one ld.shared.v2 of the key's 8-byte entry straight into
    the outputs $0, $1, no pairing prmt. Inputs as `lut_asm_k(words=True)`'s (the 4 key words, the 4 lane offsets,
    the 4 selectors; element 0's used)."""
    return "\n".join(["{", ".reg .b32 b, a;", "mov.u32 b, global_smem;", "prmt.b32 a, $2, $6, $10;",
                      "add.u32 a, a, b;", "ld.shared.v2.b32 {$0, $1}, [a];", "}"])


# turbo4 V keys of token pairs (`_value_keys`): $2, $3 = the same code word of tokens 2 t and 2 t + 1; byte k of $0
# = low code of $2's byte k | low code of $3's byte k << 4 (the table entry (c[even dim of 2 t], c[even dim of
# 2 t + 1]): the V operand's register for that dim and token pair), of $1 the same for the high codes (odd dims)
# (lop3 0xE4: (a & c) | (b & ~c), bits of a where the mask c is set, of b elsewhere)
VKEY_ASM = "\n".join([
    "{", ".reg .b32 t;",
    "shl.b32 t, $3, 4;", "lop3.b32 $0, $2, t, 0x0F0F0F0F, 0xE4;",
    "shr.b32 t, $2, 4;", "lop3.b32 $1, t, $3, 0x0F0F0F0F, 0xE4;", "}"])
_VKEY_ASM = gl.constexpr(VKEY_ASM)  # (the kernels' copy)

# turbo2 V keys of token pairs (`_pair_keys_v`): $2, $3 = the same code word of tokens 2 t and 2 t + 1; byte k of $0
# = codes 0 and 2 of $2's byte k at bits 0-1 and 4-5, of $3's at bits 2-3 and 6-7, so its table entry is (c[code 0
# of 2 t], c[code 0 of 2 t + 1] | c[code 2 of 2 t], c[code 2 of 2 t + 1]): the V operand's registers of two dims
# (rows g and g + 8) for that token pair; $1 the same for codes 1 and 3. (turbo2 K pairs tokens g and g + 8 with
# VKEY_ASM: byte k of $0 = the low nibble of token g's byte k | token g + 8's << 4, whose entry is (c[code 0],
# c[code 1] of g | the same of g + 8), the A operand's registers of rows g and g + 8 for two dims; $1 the high
# nibbles.)
V2KEY_ASM = "\n".join([
    "{", ".reg .b32 t;",
    "shl.b32 t, $3, 2;", "lop3.b32 $0, $2, t, 0x33333333, 0xE4;",
    "shr.b32 t, $2, 2;", "lop3.b32 $1, t, $3, 0x33333333, 0xE4;", "}"])
_V2KEY_ASM = gl.constexpr(V2KEY_ASM)  # (the kernels' copy)


# turbo3 V keys of token pairs (`_keys3_pairs`): $4, $5 and $6, $7 = the 48 bits (low word, high word: its bits 0..15)
# of a lane chunk's 16 codes (code i at bits [3 i, 3 i + 3)) of tokens 2 t and 2 t + 1; out ($0 low, $1 high) the
# even dims' keys, key j at bits [6 j, 6 j + 6) = code 2 j of 2 t | code 2 j of 2 t + 1 << 3, so its table entry is
# (c[token 2 t], c[token 2 t + 1]) of dim 2 j: the V operand's register for that dim and token pair; ($2, $3) the odd
# dims' (codes 2 j + 1). (lop3 0xE4 takes the mask's bits, [6 j, 6 j + 3), from its first operand.)
V3KEY_ASM = "\n".join([
    "{", ".reg .b32 t;",
    "shl.b32 t, $6, 3;", "lop3.b32 $0, $4, t, 0xC71C71C7, 0xE4;",
    "shf.l.clamp.b32 t, $6, $7, 3;", "lop3.b32 $1, $5, t, 0x1C71, 0xE4;",
    "shf.r.clamp.b32 t, $4, $5, 3;", "lop3.b32 $2, t, $6, 0xC71C71C7, 0xE4;",
    "shr.b32 t, $5, 3;", "lop3.b32 $3, t, $7, 0x1C71, 0xE4;", "}"])
_V3KEY_ASM = gl.constexpr(V3KEY_ASM)  # (the kernels' copy)


def _lut3_asm_k() -> str:
    """turbo3's K decoder in key order (`_k_bytes3` over its key windows, session 32): a key's entry (c[even dim],
    c[odd dim]) is the A operand's register as read, no pairing prmt (pack 4: outputs $0, $1 = the entries of
    elements 0 and 2; elements 1 and 3 repeat their keys). Inputs per element: $2.. the windows' low words, $6.. their
    high words, $10.. the lane offsets (4 x lane), $14.. the shifts (`lut3_shift`)."""
    lines = ["{", ".reg .b32 b, a;", "mov.u32 b, global_smem;"]
    for r, el in ((0, 0), (1, 2)):
        lines += [f"shf.r.clamp.b32 a, ${2 + el}, ${6 + el}, ${14 + el};", "and.b32 a, a, 0x1F80;",
                  f"or.b32 a, a, ${10 + el};", "add.u32 a, a, b;", f"ld.shared.b32 ${r}, [a];"]
    lines.append("}")
    return "\n".join(lines)


def lut3_shift(k: int) -> int:
    """The funnel shift of key k of a window (turbo3: key k = bits [6 k, 6 k + 6) of the window's words w_i, w_i+1
    with i = floor((6 k - 7) / 32), the window starting one word earlier for the first keys) that puts it at bit 7:
    (6 k + 25) mod 32."""
    return (6 * k + 25) % 32


@gluon.jit
def _lane_offset(like):
    """4 * lane id, shaped like `like` (int32)."""
    return gl.inline_asm_elementwise("{ .reg .b32 t; mov.u32 t, %laneid; shl.b32 $0, t, 2; }", "=r,r", [like],
                                     dtype=gl.int32, is_pure=True, pack=1)


# lut_pipe 6: each warp's tiles copied by the copy engine (cp.async.bulk, issued by lane 0) into S stages of its own
# behind the table, one mbarrier per warp and stage, waited on by the warp's lanes, which then read their words
# (Gluon loads of a view of the stages). Init, arrival, copy and wait are inline PTX, which Triton's barrier
# analysis does not see: no CTA barrier. The loads stay after the wait: LLVM keeps memory accesses in order around
# a side-effecting asm statement, and a load that depends on the tile index is not hoisted.
@triton.constexpr_function
def _bulk_barriers_asm(op, stages, step):
    """Lane 0 ($1 == 0) applies `op` to the warp's `stages` mbarriers at global_smem + $2 + s * step: "init"
    (arrival count 1; fenced for the copy engine, the warp then synchronised) or "inval" (the warp synchronised
    first; their memory is then reused)."""
    body = ([f"@p mbarrier.init.shared::cta.b64 [a+{s * step}], 1;" for s in range(stages)]
            + ["fence.mbarrier_init.release.cluster;", "fence.proxy.async.shared::cta;", "bar.warp.sync -1;"]
            if op == "init" else [f"@p mbarrier.inval.shared::cta.b64 [a+{s * step}];" for s in range(stages)])
    first = [] if op == "init" else ["bar.warp.sync -1;"]
    return "\n".join(["{", ".reg .pred p;", ".reg .b32 a;", *first, "setp.eq.u32 p, $1, 0;", "mov.u32 a, global_smem;",
                      "add.u32 a, a, $2;", *body, "mov.u32 $0, 0;", "}"])


@triton.constexpr_function
def _bulk_copy_asm(operands, arrive, fence, box=0):
    """lane 0's copies of `operands` (1 or 2) tiles into their stages, completing one stage mbarrier: $1 lane, $2
    the mbarrier, then per operand its stage (byte offset from global_smem) and source address, then the bytes of
    each operand (0: nothing to copy; the phase then completes at the arrival). `arrive`: lane 0 first arrives at
    the barrier expecting two operands' bytes. The warp's lanes synchronise first: they have read the stage's last
    words; `fence`: each lane first orders those reads before the copy engine's writes (the async proxy), for
    reads whose values may not be used yet. box (bytes, 0: none): V goes through the tensor-memory accelerator
    (`tma_stage_layout`): V's operands are then the global address of its tensor map ([B, H, T, row bytes]) and
    the coordinates token, head, batch instead of a source address, a whole box of `box` bytes lands (rows past
    the split are not read, rows past the plane come as zeros), and the arrival expects K's bytes plus the box.
    With one operand, V is the one that does not arrive."""
    tensor = bool(box) and (operands == 2 or not arrive)  # the last operand (V) through its tensor map
    n = f"${2 + 2 * operands + 3 * tensor + 1}"
    dst = [f"d{k}" for k in range(operands)]
    copies = [f"@q cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [{d}], [${4 + 2 * k}], {n}, [bar];"
              for k, d in enumerate(dst)]
    if tensor:
        k = operands - 1
        copies[k] = (f"@q cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [{dst[k]}], "
                     f"[${4 + 2 * k}, {{z, ${5 + 2 * k}, ${6 + 2 * k}, ${7 + 2 * k}}}], [bar];")
    expect = [f"shl.b32 tx, {n}, 1;"]  # both operands' bytes; with a box, K's plus the box (only where it arrives)
    if box:
        expect = [f"selp.b32 tx, {box}, 0, q;", f"add.u32 tx, tx, {n};"] if arrive else []
    return "\n".join([
        "{", ".reg .pred p, q;", f".reg .b32 s, bar, {', '.join(dst)}, tx{', z' if tensor else ''};",
        *(["fence.proxy.async.shared::cta;"] if fence else []), "bar.warp.sync -1;", "setp.eq.u32 p, $1, 0;",
        f"setp.ne.and.u32 q, {n}, 0, p;", "mov.u32 s, global_smem;", "add.u32 bar, s, $2;",
        *(["mov.u32 z, 0;"] if tensor else []),
        *[f"add.u32 {d}, s, ${3 + 2 * k};" for k, d in enumerate(dst)], *expect,
        *(["@p mbarrier.arrive.expect_tx.shared::cta.b64 _, [bar], tx;"] if arrive else []),
        *copies, "mov.u32 $0, 0;", "}"])


# lut_pipe 6: a tile's K and V rows in one go, after the warp has used both stages' words; lut_pipe 7 (`_bulk_op`):
# one operand at a time, each as soon as the warp has read that operand's words (K's at the tile's start, V's after
# the scores), K's arriving for both, so the phase completes when both have landed
_BULK_COPY_ASM = gl.constexpr(_bulk_copy_asm(2, True, False))


# every lane: wait until the mbarrier at global_smem + $1 has completed the phase of parity $2
_BULK_WAIT_ASM = gl.constexpr("\n".join([
    "{", ".reg .pred p;", ".reg .b32 a;", "mov.u32 a, global_smem;", "add.u32 a, a, $1;", "BULK_WAIT:",
    "mbarrier.try_wait.parity.shared::cta.b64 p, [a], $2;", "@!p bra BULK_WAIT;", "mov.u32 $0, 0;", "}"]))


@gluon.jit
def _bulk_barriers(OP: gl.constexpr, lane, bar, STAGES: gl.constexpr, STEP: gl.constexpr):
    gl.inline_asm_elementwise(_bulk_barriers_asm(OP, STAGES, STEP), "=r,r,r", [lane, bar], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _bulk_tile(lane, bar, kdst, vdst, kbase, vsrc, tok, hi, BN: gl.constexpr, RB: gl.constexpr, BOX: gl.constexpr = 0):
    """lut_pipe 6: the K and V code rows of the tile starting at token `tok` (per thread: its warp's), at most BN
    and none at or past `hi`, copied into the stages at kdst / vdst, completing the mbarrier at `bar`. vsrc: V's
    plane base, or with BOX (`_bulk_copy_asm`'s box) its (tensor map, head, batch)."""
    n = gl.minimum(gl.maximum(hi - tok, 0), BN)
    src = tok.to(gl.int64) * RB
    if BOX:
        z = tok * 0
        gl.inline_asm_elementwise(_bulk_copy_asm(2, True, False, BOX), "=r,r,r,r,l,r,l,r,r,r,r",
                                  [lane, bar, kdst, kbase + src, vdst, vsrc[0] + z, tok, vsrc[1] + z, vsrc[2] + z,
                                   n * RB], dtype=gl.int32, is_pure=False, pack=1)
    else:
        gl.inline_asm_elementwise(_BULK_COPY_ASM, "=r,r,r,r,l,r,l,r", [lane, bar, kdst, kbase + src, vdst,
                                                                       vsrc + src, n * RB], dtype=gl.int32,
                                  is_pure=False, pack=1)


@gluon.jit
def _bulk_op(ARRIVE: gl.constexpr, lane, bar, dst, base, tok, hi, BN: gl.constexpr, RB: gl.constexpr,
             FENCE: gl.constexpr = True, BOX: gl.constexpr = 0):
    """lut_pipe 7 / 8: one operand's code rows of the tile starting at `tok` (as `_bulk_tile`) copied into its stage
    at dst; ARRIVE (K, the first of the two) arrives at the mbarrier at `bar` expecting both operands' bytes. FENCE:
    the lanes' reads of the stage are fenced first (their values may not be used yet). BOX (`_bulk_copy_asm`'s
    box): K expects V's whole box; V's `base` is its (tensor map, head, batch)."""
    n = gl.minimum(gl.maximum(hi - tok, 0), BN)
    if BOX and not ARRIVE:
        z = tok * 0
        gl.inline_asm_elementwise(_bulk_copy_asm(1, False, FENCE, BOX), "=r,r,r,r,l,r,r,r,r",
                                  [lane, bar, dst, base[0] + z, tok, base[1] + z, base[2] + z, n * RB],
                                  dtype=gl.int32, is_pure=False, pack=1)
    else:
        src = base + tok.to(gl.int64) * RB
        gl.inline_asm_elementwise(_bulk_copy_asm(1, ARRIVE, FENCE, BOX), "=r,r,r,r,l,r", [lane, bar, dst, src, n * RB],
                                  dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _bulk_start(pid, split, L, kbase, vsrc, W: gl.constexpr, BN: gl.constexpr, RB: gl.constexpr,
                S6: gl.constexpr, SB6: gl.constexpr, BAR0: gl.constexpr, BSTEP: gl.constexpr, BOX: gl.constexpr = 0):
    """lut_pipe 6 - 8: each warp's S6 mbarriers (at BAR0 + (S6 w + s) BSTEP) initialised and its first S6 tiles'
    copies issued (K stages from 64 KB, V from 128 KB, SB6 bytes a stage of all warps; vsrc and BOX as
    `_bulk_tile`'s); (lane, mbarrier, split start and end, K stage offset) per thread for the loop."""
    T1: gl.constexpr = gl.BlockedLayout([1], [32], [W], [0])
    e6 = gl.arange(0, W * 32, layout=T1)
    lane6 = e6 % 32
    w6 = e6 // 32
    bar6 = BAR0 + w6 * (S6 * BSTEP)
    _bulk_barriers("init", lane6, bar6, S6, BSTEP)
    lo6 = (pid * W + w6) * split
    hi6 = gl.minimum(lo6 + split, L)
    dst6 = 65536 + w6 * (BN * RB)
    for j in gl.static_range(S6):
        _bulk_tile(lane6, bar6 + j * BSTEP, dst6 + j * SB6, dst6 + 65536 + j * SB6, kbase, vsrc, lo6 + j * BN,
                   hi6, BN, RB, BOX)
    return lane6, bar6, lo6, hi6, dst6


@gluon.jit
def _bulk_wait(bar, parity):
    gl.inline_asm_elementwise(_BULK_WAIT_ASM, "=r,r,r", [bar, bar * 0 + parity], dtype=gl.int32, is_pure=False,
                              pack=1)


@triton.constexpr_function
def trade_bit(nc):
    """The token bit k of `bulk_stage_layout`'s trade for rows of nc int32 words: 1 for 64-byte rows (turbo4 at
    head_dim 128), 2 for 32-byte rows (turbo2; turbo4 at head_dim 64). (Other widths keep the copies' order:
    `gluon.lut_stage_layouts`.)"""
    return {16: 1, 8: 2}[nc]


@gluon.jit
def _traded(tr, K: gl.constexpr):
    """Tile tokens tr [1, BN], each moved to the token whose row `bulk_stage_layout` puts at its place: j ^ ((j >>
    K) & 1) (the trade is its own inverse). Written on tr's low bits, which are a lane's and the same in all its
    registers, so the compiler keeps one per-lane offset (tr ^ ((tr >> 1) & 1) took a register per token and
    spilled)."""
    return tr + ((((tr >> K) & 1) ^ (tr & 1)) - (tr & 1))


@gluon.jit
def _keep(x):
    gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _decode_lut(codes, lofs, sel, ASM: gl.constexpr):
    """turbo4: (part 0, part 1) of the codes. codes: uint8 (4 per input register), or int32 (lut_asm(words=True)):
    each element the word holding its code byte, sel its prmt selector (0x7604 + 16 * the byte's place in the
    word)."""
    if codes.dtype == gl.int32:
        return gl.inline_asm_elementwise(ASM, "=r,=r,=r,=r" + ",r" * 12, [codes, lofs, sel],
                                         dtype=(gl.float16, gl.float16), is_pure=True, pack=4)
    return gl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,r,r,r,r,r", [codes, lofs],
                                     dtype=(gl.float16, gl.float16), is_pure=True, pack=4)


@gluon.jit
def _decode_k3(lo, hi, lofs, sh, KASM: gl.constexpr):
    """turbo3 K keys in key order (the windows lo, hi and shifts sh arranged by `_k_bytes3`) -> the fp16 A operand
    [W, BN, D], each register one table read (`_lut3_asm_k`)."""
    return gl.inline_asm_elementwise(KASM, "=r,=r" + ",r" * 16, [lo, hi, lofs, sh], dtype=gl.float16, is_pure=True,
                                     pack=4)


@gluon.jit
def _join8(x0, x1, x2, x3, x4, x5, x6, x7):
    """[..., 2, 2, 2] with element (a, b, c) = x(4 a + 2 b + c): reshaped, [..., 8] with element k = xk; gl.join(
    _join8(even elements), _join8(odd elements)) is the same for 16."""
    return gl.join(gl.join(gl.join(x0, x4), gl.join(x2, x6)), gl.join(gl.join(x1, x5), gl.join(x3, x7)))


@gluon.jit
def _keys3_k(kw, LAY: gl.constexpr):
    """turbo3 K words [W, BN, 4 C] (chunk c: the 3 words of its 16 keys, then a 0) -> the (lo, hi) windows of the
    keys [W, BN, 16 C] in LAY: key k of a chunk lies in (w_i+1 : w_i), i = floor((6 k - 7) / 32) (w_-1: w_0)."""
    W: gl.constexpr = kw.shape[0]
    BN: gl.constexpr = kw.shape[1]
    C: gl.constexpr = kw.shape[2] // 4
    a, b = gl.split(gl.reshape(kw, [W, BN, C, 2, 2]))
    w0, w2 = gl.split(a)
    w1, w3 = gl.split(b)
    # keys 0..15: lo = w0 x 7, w1 x 5, w2 x 4; hi = w0 x 2, w1 x 5, w2 x 5, w3 x 4 (even keys, then odd keys)
    lo = gl.join(_join8(w0, w0, w0, w0, w1, w1, w2, w2), _join8(w0, w0, w0, w1, w1, w1, w2, w2))
    hi = gl.join(_join8(w0, w1, w1, w1, w2, w2, w3, w3), _join8(w0, w1, w1, w2, w2, w2, w3, w3))
    lo = gl.convert_layout(gl.reshape(lo, [W, BN, 16 * C]), LAY, assert_trivial=True)
    hi = gl.convert_layout(gl.reshape(hi, [W, BN, 16 * C]), LAY, assert_trivial=True)
    return lo, hi


@gluon.jit
def _windows3(na, nb):
    """The (lo, hi) windows [W, N, 8 G] of 8 keys per chunk held in 48 bits (na low word, nb high word) [W, N, G]
    (`lut3_shift`'s windows: key k in (hi : lo) = (w_i+1 : w_i), i = floor((6 k - 7) / 32), w_-1 = w_0)."""
    W: gl.constexpr = na.shape[0]
    N: gl.constexpr = na.shape[1]
    G: gl.constexpr = na.shape[2]
    lo = gl.reshape(_join8(na, na, na, na, na, na, na, nb), [W, N, 8 * G])
    hi = gl.reshape(_join8(na, na, nb, nb, nb, nb, nb, nb), [W, N, 8 * G])
    return lo, hi


@gluon.jit
def _pair_tokens(x, LAY: gl.constexpr = None):
    """x [W, BN / 2, N] of token pairs -> [W, BN, N] in LAY (None: as the join leaves it), both tokens of a pair
    holding it (one register)."""
    W: gl.constexpr = x.shape[0]
    BN2: gl.constexpr = x.shape[1]
    N: gl.constexpr = x.shape[2]
    x = gl.reshape(gl.permute(gl.join(x, x), [0, 1, 3, 2]), [W, 2 * BN2, N])
    if LAY is not None:
        x = gl.convert_layout(x, LAY, assert_trivial=True)
    return x


@gluon.jit
def _keys3_pairs(vw, off, LAY: gl.constexpr):
    """turbo3 V words [W, BN, 2 G] (lane chunk g: the 2 words holding its 8 keys, from bit off = 0 or 16; tokens
    2 t and 2 t + 1 in one thread) -> the windows of their token-pair keys (V3KEY_ASM) in LAY, [W, BN, 8 G] each
    and both tokens of a pair the same: (lo, hi) of the even dims' keys, (lo, hi) of the odd dims'. `_v_arrange3`
    and the K decoder (`_lut3_asm_k`) then give each V operand register, (c[code of token 2 t], c[code of token
    2 t + 1]) for one dim, from one table read."""
    W: gl.constexpr = vw.shape[0]
    BN: gl.constexpr = vw.shape[1]
    G: gl.constexpr = vw.shape[2] // 2
    wa, wb = gl.split(gl.reshape(vw, [W, BN, G, 2]))
    na = _funnel(wa, wb, off)
    nb = gl.inline_asm_elementwise("shr.b32 $0, $1, $2;", "=r,r,r", [wb, off], dtype=gl.int32, is_pure=True,
                                   pack=1)
    na0, na1 = gl.split(gl.permute(gl.reshape(na, [W, BN // 2, 2, G]), [0, 1, 3, 2]))
    nb0, nb1 = gl.split(gl.permute(gl.reshape(nb, [W, BN // 2, 2, G]), [0, 1, 3, 2]))
    le, he, lo, ho = gl.inline_asm_elementwise(_V3KEY_ASM, "=r,=r,=r,=r,r,r,r,r", [na0, nb0, na1, nb1],
                                               dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True, pack=1)
    le, he = _windows3(le, he)
    lo, ho = _windows3(lo, ho)
    return (_pair_tokens(le, LAY), _pair_tokens(he, LAY), _pair_tokens(lo, LAY), _pair_tokens(ho, LAY))


@gluon.jit
def _expand3(x0, x2):
    """[W] (slice of dims 1, 2) and [N] (slice of dims 0, 1) -> broadcastable [W, 1, 1] and [1, 1, N]."""
    return gl.expand_dims(gl.expand_dims(x0, 1), 2), gl.expand_dims(gl.expand_dims(x2, 0), 1)


@gluon.jit
def _ptrs3(base, tok, col, NB: gl.constexpr):
    """Pointers [W, BN, NB] to the code bytes of tokens `tok` [W, BN, 1] (rows of NB bytes), bytes `col`."""
    return base + tok.to(gl.int64) * NB + col


@gluon.jit
def _copy_kv(kst, vst, kbase, vbase, ktok, vtok, khi, vhi, kc3, vc3, NB: gl.constexpr):
    """cp.async of the K and V code bytes (or, with int32 bases, words: NB per row) of tokens ktok / vtok into the
    stages, one commit group; tokens at or past each warp's end (khi / vhi) are not read (zero-filled)."""
    async_load(kst, _ptrs3(kbase, ktok, kc3, NB), mask=ktok < khi)
    async_load(vst, _ptrs3(vbase, vtok, vc3, NB), mask=vtok < vhi)
    async_copy.commit_group()


@gluon.jit
def _coords3(LAY: gl.constexpr, W: gl.constexpr, BN: gl.constexpr, NC: gl.constexpr):
    """Warp [W, 1, 1], token [1, BN, 1] and column [1, 1, NC] coordinates of a [W, BN, NC] tensor in layout LAY."""
    w3 = gl.expand_dims(gl.expand_dims(gl.arange(0, W, layout=gl.SliceLayout(1, gl.SliceLayout(2, LAY))), 1), 2)
    t3 = gl.expand_dims(gl.expand_dims(gl.arange(0, BN, layout=gl.SliceLayout(0, gl.SliceLayout(2, LAY))), 0), 2)
    c3 = gl.expand_dims(gl.expand_dims(gl.arange(0, NC, layout=gl.SliceLayout(0, gl.SliceLayout(1, LAY))), 0), 1)
    return w3, t3, c3


@gluon.jit
def _v_arrange3(vc, A_OP: gl.constexpr):
    """V codes [W, BN, NB] -> the transposed A operand [W, NB, BN] (decode_gluon_kernel._v_arrange)."""
    W: gl.constexpr = vc.shape[0]
    BN: gl.constexpr = vc.shape[1]
    NB: gl.constexpr = vc.shape[2]
    vc = gl.permute(vc, [0, 2, 1])
    vc = gl.reshape(vc, [W, 8, NB // 8, BN])
    vc = gl.permute(vc, [0, 2, 1, 3])
    return gl.convert_layout(gl.reshape(vc, [W, NB, BN]), A_OP, assert_trivial=True)


@gluon.jit
def _k_bytes3(kc, A_OP: gl.constexpr):
    """turbo4 K codes [W, BN, NB] (lane column c holding bytes NB / 4 c .. NB / 4 (c + 1), as the loads give them)
    -> the A operand [W, BN, D] in byte order: k-pair 8 s + 4 h + c (k-step s, half h) is byte NB / 4 c + 2 s + h,
    both elements of the pair holding it, so element (n, k) is the byte whose table entry holds key dim qd(k) of
    token n (`gluon.lut_key_dims`)."""
    W: gl.constexpr = kc.shape[0]
    BN: gl.constexpr = kc.shape[1]
    NB: gl.constexpr = kc.shape[2]
    x = gl.permute(gl.reshape(kc, [W, BN, 4, NB // 8, 2]), [0, 1, 3, 4, 2])  # (s, h, c)
    x = gl.reshape(x, [W, BN, NB])
    x = gl.reshape(gl.join(x, x), [W, BN, 2 * NB])  # (s, h, c, e)
    return gl.convert_layout(x, A_OP, assert_trivial=True)


@gluon.jit
def _pair_words(vw, ASM: gl.constexpr):
    """V code words [W, BN, NC] (tokens 2 t and 2 t + 1 in one thread) -> the two key words ASM makes of each token
    pair's words ([W, BN / 2, NC] each; VKEY_ASM, V2KEY_ASM)."""
    W: gl.constexpr = vw.shape[0]
    BN: gl.constexpr = vw.shape[1]
    NC: gl.constexpr = vw.shape[2]
    w0, w1 = gl.split(gl.permute(gl.reshape(vw, [W, BN // 2, 2, NC]), [0, 1, 3, 2]))
    return gl.inline_asm_elementwise(ASM, "=r,=r,r,r", [w0, w1], dtype=(gl.int32, gl.int32), is_pure=True, pack=1)


@gluon.jit
def _value_keys(vw, LAY: gl.constexpr):
    """turbo4 V code words [W, BN, NC] (tokens 2 t and 2 t + 1 in one thread) -> the table keys of token pairs
    (`VKEY_ASM`) of the even and the odd dims, each spread as `_spread` spreads words ([W, BN, 4 NC] in LAY, both
    tokens of a pair the same key word): `_v_arrange3` and the K decoder (lut_asm_k) then give each V operand
    register, (c[code of token 2 t], c[code of token 2 t + 1]) for one dim, from one table read."""
    x, y = _pair_words(vw, _VKEY_ASM)
    return _spread(_pair_tokens(x), LAY), _spread(_pair_tokens(y), LAY)


@gluon.jit
def _pair_keys_k(kw, A_OP: gl.constexpr):
    """turbo2 K code words [W, BN, NC] (KWORD: lane column c holds words NC / 4 c .. NC / 4 (c + 1) of tokens g and
    g + 8 of each 16) -> the keys of token pairs (g, g + 8) (VKEY_ASM) as the A operand [W, BN, D]: element (n, k)
    holds the key word of its token pair whose byte y = (k // 16) % 4 (the selector's) is the key of dims (k-pair
    order, `_key_dim`) 4 (4 (NC / 4 c + b) + y) + 2 nu + (0, 1), c = (k // 2) % 4, nu = (k // 8) % 2 (the
    nibble), b = k // 64; rows g and g + 8 of a k pair share it, so `_pair_asm` reads the 4 elements' registers as
    one entry."""
    W: gl.constexpr = kw.shape[0]
    BN: gl.constexpr = kw.shape[1]
    NC: gl.constexpr = kw.shape[2]
    lo, hi = gl.split(gl.permute(gl.reshape(kw, [W, BN // 16, 2, 8, NC]), [0, 1, 3, 4, 2]))  # tokens g, g + 8
    kx, ky = gl.inline_asm_elementwise(_VKEY_ASM, "=r,=r,r,r", [lo, hi], dtype=(gl.int32, gl.int32), is_pure=True,
                                       pack=1)
    z = gl.join(kx, ky)  # [W, BN / 16, 8 (g), NC, 2 (nu)]
    z = gl.join(z, z)  # the key word's byte y = 2 y1 + y0 is the selector's: copies (one register)
    z = gl.join(z, z)
    z = gl.join(z, z)  # the k pair's two elements
    z = gl.join(z, z)  # rows g and g + 8
    z = gl.reshape(z, [W, BN // 16, 8, 4, NC // 4, 2, 2, 2, 2, 2])  # (g, c, b, nu, y0, y1, e, t8)
    z = gl.permute(z, [0, 1, 9, 2, 4, 7, 6, 5, 3, 8])  # token (t8, g), k (b, y1, y0, nu, c, e)
    return gl.convert_layout(gl.reshape(z, [W, BN, 16 * NC]), A_OP, assert_trivial=True)


@gluon.jit
def _pair_rows(x, A_OP: gl.constexpr):
    """turbo2 V key words of token pairs [W, BN / 2, NC] (word g of pair t in lane row g) -> the V operand [W, 8 NC,
    BN] of their keys: row 16 m + 8 h + g, tokens 2 t and 2 t + 1 hold key byte m (the selector's) of pair t's word
    g, that is byte 4 g + m's codes 2 h (operand X) or 2 h + 1 (Y): dim 4 (4 g + m) + 2 h (+ 1)."""
    W: gl.constexpr = x.shape[0]
    BN2: gl.constexpr = x.shape[1]
    NC: gl.constexpr = x.shape[2]
    z = gl.join(x, x)  # byte m = 2 m1 + m0 (copies)
    z = gl.join(z, z)
    z = gl.join(z, z)  # rows g and g + 8 (h)
    z = gl.join(z, z)  # tokens 2 t, 2 t + 1 (e)
    z = gl.permute(z, [0, 4, 3, 5, 2, 1, 6])  # (m1, m0, h, g, t, e)
    return gl.convert_layout(gl.reshape(z, [W, 8 * NC, 2 * BN2]), A_OP, assert_trivial=True)


@gluon.jit
def _pair_keys_v(vw, A_OP: gl.constexpr):
    """turbo2 V code words [W, BN, NC] (VWORD: tokens 2 t and 2 t + 1 in one thread, lane row g holding word g) ->
    the V operands (X: codes 0 and 2 of each byte, Y: codes 1 and 3) of their token-pair keys (V2KEY_ASM), each
    [W, 8 NC, BN] as `_pair_rows` lays them out."""
    x, y = _pair_words(vw, _V2KEY_ASM)
    return _pair_rows(x, A_OP), _pair_rows(y, A_OP)


@gluon.jit
def _halves(x, axis: gl.constexpr, LAY: gl.constexpr = None):
    """x [W, M, N] split along dim `axis` (1 or 2) into its two halves, each in layout LAY (a register split; None:
    the split's own layout)."""
    W: gl.constexpr = x.shape[0]
    M: gl.constexpr = x.shape[1]
    N: gl.constexpr = x.shape[2]
    if axis == 1:
        y = gl.permute(gl.reshape(x, [W, 2, M // 2, N]), [0, 2, 3, 1])
    else:
        y = gl.permute(gl.reshape(x, [W, M, 2, N // 2]), [0, 1, 3, 2])
    lo, hi = gl.split(y)
    if LAY is not None:
        lo = gl.convert_layout(lo, LAY, assert_trivial=True)
        hi = gl.convert_layout(hi, LAY, assert_trivial=True)
    return lo, hi


@gluon.jit
def _decode_kbytes(codes, lofs, sel, KASM: gl.constexpr):
    """turbo4 K codes in byte order (`_k_bytes3`; uint8, or the int32 words holding them with their prmt selectors
    sel) -> the fp16 A operand [W, BN, D], each register one table read (`lut_asm_k`). Also reads V's token-pair
    key words (`_value_keys`, arranged by `_v_arrange3`) into a V part operand [W, NB, BN], and turbo2's key words
    (`_pair_keys_k`, `_pair_keys_v`: `_pair_asm`, one read a key, two registers)."""
    if codes.dtype == gl.int32:
        return gl.inline_asm_elementwise(KASM, "=r,=r" + ",r" * 12, [codes, lofs, sel], dtype=gl.float16,
                                         is_pure=True, pack=4)
    return gl.inline_asm_elementwise(KASM, "=r,=r" + ",r" * 5, [codes, lofs], dtype=gl.float16, is_pure=True,
                                     pack=4)


@gluon.jit
def _spread(words, LAY: gl.constexpr):
    """int32 words [W, BN, NC] -> [W, BN, 4 NC] in layout LAY, element 4 c + k = word c (the 4 copies are one
    register): the decoder's input for code bytes 4 c .. 4 c + 3, which it takes from the word itself."""
    x = gl.join(gl.join(words, words), gl.join(words, words))
    x = gl.reshape(x, [words.shape[0], words.shape[1], 4 * words.shape[2]])
    return gl.convert_layout(x, LAY, assert_trivial=True)


@gluon.jit
def _load_tile(kbase, vbase, knb, vnb, ktok, vtok, khi, vhi, kc3, vc3, tok, hi, NB: gl.constexpr):
    """K and V code bytes of a tile (tokens ktok / vtok [W, BN, 1] in the load layouts) and its K and V norms
    (tokens tok [W, BN]) as fp32; tokens at or past each warp's end are not read (codes 0, norms 0)."""
    kc = gl.load(_ptrs3(kbase, ktok, kc3, NB), mask=ktok < khi, other=0)
    vc = gl.load(_ptrs3(vbase, vtok, vc3, NB), mask=vtok < vhi, other=0)
    # (`_load_norms`' lines, written out: calling it moves the register allocation of the default finishing
    # build's epilogue in sm_90, the build timed in session 21)
    valid = tok < hi
    kn = gl.load(knb + tok, mask=valid, other=0.0).to(gl.float32)
    vn = gl.load(vnb + tok, mask=valid, other=0.0).to(gl.float32)
    return kc, vc, kn, vn


@gluon.jit
def _load_norms(knb, vnb, tok, hi):
    """The K and V norms of tokens tok [W, BN] as fp32, 0 at or past each warp's end hi."""
    valid = tok < hi
    kn = gl.load(knb + tok, mask=valid, other=0.0).to(gl.float32)
    vn = gl.load(vnb + tok, mask=valid, other=0.0).to(gl.float32)
    return kn, vn


@gluon.jit
def _row_base(tab, start, L, b, h, SHIFT):
    """(int64 address of the chunk holding token `start` [W, 1, 1] (tile starts) for (b, h), the token's row in
    it): codec rows found through a chunk table (int64 [n, 3]: address, batch stride, head stride;
    `decode.chunk_table`) of chunks of 2**SHIFT tokens, the tile inside one chunk. `start` is clamped to the L
    stored tokens, so a tile past the end reads no entry past the table's."""
    c = gl.maximum(gl.minimum(start, L - 1), 0) >> SHIFT
    base = gl.load(tab + 3 * c)
    base += b.to(gl.int64) * gl.load(tab + 3 * c + 1) + h.to(gl.int64) * gl.load(tab + 3 * c + 2)
    return base, start - (c << SHIFT)


@gluon.jit
def _funnel(lo, hi, sh):
    """(hi:lo) >> sh, the low 32 bits (sh in 0..32)."""
    return gl.inline_asm_elementwise("shf.r.clamp.b32 $0, $1, $2, $3;", "=r,r,r,r", [lo, hi, sh], dtype=gl.int32,
                                     is_pure=True, pack=1)


@gluon.jit
def _row_words(chunk, row, t3, c3, valid, LAY: gl.constexpr, ROWB: gl.constexpr, RUN: gl.constexpr,
               LAST: gl.constexpr = True):
    """int32 words c3 [1, 1, NC] of the codes of rows row + t3 [W, BN, 1] of the chunk at `chunk` [W, 1, 1] in
    layout LAY, whose lanes hold runs of RUN (1, 2 or 4) consecutive words of a row. Codec rows ([fp16 norm][codes],
    ROWB = 2 mod 4 bytes, at even addresses) start their codes 0 or 2 bytes past a word boundary, alternately:
    each run is read as the RUN aligned words at or before it and, where the row is misaligned, the word after
    them (an aligned row reads its last word again: never the bytes past its codes, which may lie past the
    chunk), funnel-shifted into place. LAST False (turbo3 K: 3 code words per run of 4, `valid` False for the
    4th): a run's 4th slot is read only where the row is misaligned (it then holds the third word's high bytes)
    and comes out as garbage, which the decoder ignores."""
    W: gl.constexpr = LAY.shape[0]
    BN: gl.constexpr = LAY.shape[1]
    NC: gl.constexpr = LAY.shape[2]
    a0 = chunk + row.to(gl.int64) * ROWB + 2  # the tile's first codes
    mh = ((a0 & 2) >> 1).to(gl.int32)  # 1: they start 2 bytes past a word boundary
    base = (a0 - 2 * mh).to(gl.pointer_type(gl.int32))
    par = t3 & 1  # row t3 of the tile: t3 ROWB = 4 q + 2 par bytes from the first row
    odd = par ^ mh  # [W, BN, 1]: 1 where the row's codes are 2 bytes past a word boundary
    p = base + ((t3 * ROWB) >> 2) + (par & mh) + c3  # [W, BN, NC] aligned words at or before the code words
    sh = odd * 16 + c3 * 0
    ok = valid & (c3 >= 0)
    if RUN == 4:
        pa, pb = gl.split(gl.reshape(p, [W, BN, NC // 4, 2, 2]))
        p0, p2 = gl.split(pa)
        p1, p3 = gl.split(pb)
        sa, _ = gl.split(gl.reshape(sh, [W, BN, NC // 4, 2, 2]))
        s0, _ = gl.split(sa)
        va, _ = gl.split(gl.reshape(ok, [W, BN, NC // 4, 2, 2]))
        v0, _ = gl.split(va)
        w0 = gl.load(p0, mask=v0, other=0)
        w1 = gl.load(p1, mask=v0, other=0)
        w2 = gl.load(p2, mask=v0, other=0)
        if LAST:
            w3 = gl.load(p3, mask=v0, other=0)
            f3 = _funnel(w3, gl.load(p3 + (s0 >> 4), mask=v0, other=0), s0)
        else:
            w3 = gl.load(p3, mask=v0 & (s0 != 0), other=0)
            f3 = w3
        out = gl.join(gl.join(_funnel(w0, w1, s0), _funnel(w2, w3, s0)), gl.join(_funnel(w1, w2, s0), f3))
    elif RUN == 2:
        p0, p1 = gl.split(gl.reshape(p, [W, BN, NC // 2, 2]))
        s0, _ = gl.split(gl.reshape(sh, [W, BN, NC // 2, 2]))
        v0, _ = gl.split(gl.reshape(ok, [W, BN, NC // 2, 2]))
        w0 = gl.load(p0, mask=v0, other=0)
        w1 = gl.load(p1, mask=v0, other=0)
        w2 = gl.load(p1 + (s0 >> 4), mask=v0, other=0)
        out = gl.join(_funnel(w0, w1, s0), _funnel(w1, w2, s0))
    else:
        out = _funnel(gl.load(p, mask=ok, other=0), gl.load(p + (sh >> 4), mask=ok, other=0), sh)
    return gl.convert_layout(gl.reshape(out, [W, BN, NC]), LAY, assert_trivial=True)


@gluon.jit
def _load_rows(k_tab, v_tab, b, h, SHIFT, L, kstart, vstart, kt3, vt3, khi, vhi, kc3, vc3, nstart, tn, hi,
               KWORD: gl.constexpr, VWORD: gl.constexpr, ROWB: gl.constexpr, BITS: gl.constexpr):
    """`_load_tile`'s words and norms (fp32) of the tiles starting at kstart / vstart [W, 1, 1] (word layouts) and
    nstart [W, 1] (norm layout), read from codec rows through the K and V chunk tables (`_row_base`, `_row_words`;
    K lanes hold runs of 4 words, V lanes of 2; 2 and 1 for rows of 32 code bytes). The tables chunk the tokens
    alike (the K row index serves both norm loads). Tokens at or past each warp's end are not read (codes 0, norms
    0)."""
    kch, krow = _row_base(k_tab, kstart, L, b, h, SHIFT)
    vch, vrow = _row_base(v_tab, vstart, L, b, h, SHIFT)
    RUN: gl.constexpr = 4 if KWORD.shape[2] >= 16 else 2  # K runs (V: half as long) in the word layouts
    kw = _row_words(kch, krow, kt3, kc3, kstart + kt3 < khi, KWORD, ROWB, RUN, BITS != 3)
    vw = _row_words(vch, vrow, vt3, vc3, vstart + vt3 < vhi, VWORD, ROWB, RUN // 2)
    NL: gl.constexpr = tn.type.layout
    WL: gl.constexpr = gl.SliceLayout(1, NL)
    # the K table entry's (warp-uniform) values in the norm layout: a register-only change
    kch = gl.expand_dims(gl.convert_layout(gl.reshape(kch, [kch.shape[0]]), WL, assert_trivial=True), 1)
    krow = gl.expand_dims(gl.convert_layout(gl.reshape(krow, [krow.shape[0]]), WL, assert_trivial=True), 1)
    vch = gl.expand_dims(gl.convert_layout(gl.reshape(vch, [vch.shape[0]]), WL, assert_trivial=True), 1)
    valid = nstart + tn < hi
    kn = gl.load((kch + (krow + tn).to(gl.int64) * ROWB).to(gl.pointer_type(gl.float16)), mask=valid,
                 other=0.0).to(gl.float32)
    vn = gl.load((vch + (krow + tn).to(gl.int64) * ROWB).to(gl.pointer_type(gl.float16)), mask=valid,
                 other=0.0).to(gl.float32)
    return kw, vw, kn, vn


@gluon.jit
def _first_tiles(k_tab, v_tab, b, h, SHIFT, L, kwb, vwb, knb, vnb, kwlo, vwlo, kwt3, vwt3, kwhi, vwhi, kwc3, vwc3,
                 lo_r, tr, hi_r, KWORD: gl.constexpr, VWORD: gl.constexpr, RB: gl.constexpr, BITS: gl.constexpr,
                 BN: gl.constexpr, PIPE: gl.constexpr, CODEC_ROWS: gl.constexpr):
    """The words and norms of a warp's first tile and (PIPE 3) the one after it (else the first one's again, not
    used) for the register pipelines (PIPE 2, 3): planes (`_load_tile`) or codec rows (`_load_rows`, L and SHIFT
    as it takes them), in a branch (L > 0; else nothing is read): the compiler issues the loads above it first."""
    if L > 0:
        return _tiles01(k_tab, v_tab, b, h, SHIFT, L, kwb, vwb, knb, vnb, kwlo, vwlo, kwt3, vwt3, kwhi, vwhi, kwc3,
                        vwc3, lo_r, tr, hi_r, KWORD, VWORD, RB, BITS, BN, PIPE, CODEC_ROWS)
    else:
        # (the same loads, every mask off: zeros instead would cost turbo4's sm_90 loop 7 register moves)
        return _tiles01(k_tab, v_tab, b, h, SHIFT, L, kwb, vwb, knb, vnb, kwlo, vwlo, kwt3, vwt3, kwhi * 0,
                        vwhi * 0, kwc3, vwc3, lo_r, tr, hi_r * 0, KWORD, VWORD, RB, BITS, BN, PIPE, CODEC_ROWS)


@gluon.jit
def _tiles01(k_tab, v_tab, b, h, SHIFT, L, kwb, vwb, knb, vnb, kwlo, vwlo, kwt3, vwt3, kwhi, vwhi, kwc3, vwc3,
             lo_r, tr, hi_r, KWORD: gl.constexpr, VWORD: gl.constexpr, RB: gl.constexpr, BITS: gl.constexpr,
             BN: gl.constexpr, PIPE: gl.constexpr, CODEC_ROWS: gl.constexpr):
    """`_first_tiles`' loads."""
    t0 = _tile_at(0, k_tab, v_tab, b, h, SHIFT, L, kwb, vwb, knb, vnb, kwlo, vwlo, kwt3, vwt3, kwhi, vwhi, kwc3, vwc3,
                  lo_r, tr, hi_r, KWORD, VWORD, RB, BITS, CODEC_ROWS)
    t1 = t0
    if PIPE == 3:
        t1 = _tile_at(BN, k_tab, v_tab, b, h, SHIFT, L, kwb, vwb, knb, vnb, kwlo, vwlo, kwt3, vwt3, kwhi, vwhi, kwc3,
                      vwc3, lo_r, tr, hi_r, KWORD, VWORD, RB, BITS, CODEC_ROWS)
    return t0[0], t0[1], t0[2], t0[3], t1[0], t1[1], t1[2], t1[3]


@gluon.jit
def _tile_at(off, k_tab, v_tab, b, h, SHIFT, L, kwb, vwb, knb, vnb, kwlo, vwlo, kwt3, vwt3, kwhi, vwhi, kwc3, vwc3,
             lo_r, tr, hi_r, KWORD: gl.constexpr, VWORD: gl.constexpr, RB: gl.constexpr, BITS: gl.constexpr,
             CODEC_ROWS: gl.constexpr):
    """The words and norms of the tile `off` tokens into each warp's split (the register pipelines' loads): codec
    rows (`_load_rows`) or planes (`_load_tile`)."""
    if CODEC_ROWS:
        return _load_rows(k_tab, v_tab, b, h, SHIFT, L, kwlo + off, vwlo + off, kwt3, vwt3, kwhi, vwhi, kwc3, vwc3,
                          lo_r + off, tr, hi_r, KWORD, VWORD, RB + 2, BITS)
    else:
        return _load_tile(kwb, vwb, knb, vnb, kwlo + off + kwt3, vwlo + off + vwt3, kwhi, vwhi, kwc3, vwc3,
                          lo_r + off + tr, hi_r, RB // 4)


@gluon.jit
def _unpack_words(kw, vw, voff, KLOAD: gl.constexpr, VLOAD: gl.constexpr, BITS: gl.constexpr, VB: gl.constexpr,
                  A_OP: gl.constexpr):
    """A register-pipelined tile's code words (PIPE >= 2) as the decoders take them: (kc, kc_hi, vc, vc_hi, vx,
    vy): turbo3's K key windows (kc, kc_hi: their low and high words) and V token-pair key windows (vc, vc_hi of
    the even dims, vx, vy of the odd dims; voff its V bit offsets: `_keys3_pairs`), turbo4's V as token-pair keys
    (VB: vx, vy), turbo2's K and V as token-pair keys already in their operands (kc: `_pair_keys_k`, vx, vy:
    `_pair_keys_v`), else the words spread; what a kind does not use repeats kc."""
    if BITS == 2:
        vx, vy = _pair_keys_v(vw, A_OP)
        kc = _pair_keys_k(kw, A_OP)
        return kc, kc, kc, kc, vx, vy
    elif BITS == 3:  # (V: the even dims' key windows in vc, vc_hi, the odd dims' in vx, vy)
        kc, kc_hi = _keys3_k(kw, KLOAD)
        vc, vc_hi, vx, vy = _keys3_pairs(vw, voff, VLOAD)
        return kc, kc_hi, vc, vc_hi, vx, vy
    else:
        kc = _spread(kw, KLOAD)
        if VB:
            vx, vy = _value_keys(vw, VLOAD)
            return kc, kc, kc, kc, vx, vy
        else:
            vc = _spread(vw, VLOAD)
            return kc, kc, vc, vc, kc, kc


@gluon.jit
def _tile_scores(kc, kc_hi, klofs, ksel, qk_lo, qk_hi, KASM: gl.constexpr, BITS: gl.constexpr, W: gl.constexpr,
                 BN: gl.constexpr, NH: gl.constexpr, A_OP: gl.constexpr, MMA: gl.constexpr):
    """A tile's scores [W, BN, NH] (not yet times the K norms), K one operand over the D dims decoded through KASM:
    turbo4 in byte order, turbo3 in key order (kc, kc_hi its keys' windows, ksel their shifts), turbo2 keyed by
    token pairs (kc already the operand's keys: `_pair_keys_k`); qk_lo / qk_hi the query's halves."""
    if BITS == 3:
        k = _decode_k3(_k_bytes3(kc, A_OP), _k_bytes3(kc_hi, A_OP), klofs, ksel, KASM)
    elif BITS == 4:
        k = _decode_kbytes(_k_bytes3(kc, A_OP), klofs, ksel, KASM)
    else:
        k = _decode_kbytes(kc, klofs, ksel, KASM)
    # two independent accumulations (dims in halves), added: chains of D / 32 dependent mma, not D / 16
    k_lo, k_hi = _halves(k, 2, A_OP)
    return mma_v2(k_lo, qk_lo, gl.zeros([W, BN, NH], gl.float32, MMA)) \
        + mma_v2(k_hi, qk_hi, gl.zeros([W, BN, NH], gl.float32, MMA))


@triton.constexpr_function
def compact_layout(w, bn):
    """[W, BN, 4]: a tile's scores of query rows 0-3 (G * Tq <= 4 of the 8 an m16n8k16 product gives), one value per
    lane and register: the m16n8 result's lane (g, c) keeps rows g + 8 j and columns 2 (c % 2) + {0, 1}, and its
    lanes c >= 2 (whose columns 4-7 are padding) take the tile's upper half of tokens (`_compact`)."""
    reg = [[0, 0, 1]] + [[0, 8 << i, 0] for i in range(bn.bit_length() - 5)]
    lanes = [[0, 0, 2], [0, bn // 2, 0], [0, 1, 0], [0, 2, 0], [0, 4, 0]]
    warps = [[1 << i, 0, 0] for i in range(w.bit_length() - 1)]
    return gl.DistributedLinearLayout(reg_bases=reg, lane_bases=lanes, warp_bases=warps, block_bases=[],
                                      shape=[w, bn, 4])


@triton.constexpr_function
def compact_split_layout(w, bn):
    """`compact_layout` [W, BN, 4] with a trailing dim of 2 in registers (query row bit 2: rows 4-7)."""
    y = compact_layout(w, bn)
    return gl.DistributedLinearLayout(reg_bases=[[0, 0, 0, 1]] + [[*x, 0] for x in y.reg_bases],
                                      lane_bases=[[*x, 0] for x in y.lane_bases],
                                      warp_bases=[[*x, 0] for x in y.warp_bases], block_bases=[],
                                      shape=[w, bn, 4, 2])


@triton.constexpr_function
def pick_asm(n):
    """PTX of `_compact`'s exchange for n values a lane: outputs $0 .. $n-1; lanes with lane bit 1 set take the
    value of their partner lane ^ 2 in the upper half ($2n ..), the others keep their own lower half ($n ..)."""
    ops = [f"shfl.sync.bfly.b32 t, ${2 * n + i}, 2, 0x1f, 0xffffffff; selp.b32 ${i}, t, ${n + i}, p;"
           for i in range(n)]
    return "\n".join(["{", ".reg .pred p;", ".reg .b32 l, t;", "mov.u32 l, %laneid;", "and.b32 l, l, 2;",
                      "setp.ne.u32 p, l, 0;", *ops, "}"])


@triton.constexpr_function
def asm_constraints(n_out, n_in):
    return ",".join(["=r"] * n_out + ["r"] * n_in)


@gluon.jit
def _compact(s):
    """s [W, BN, 8] (the mma result) -> its query rows 0-3 [W, BN, 4] in `compact_layout`: lanes c >= 2 (columns
    4-7, padding) take their partner's (lane ^ 2) values of the upper tokens, one shuffle and one select a value."""
    W: gl.constexpr = s.shape[0]
    BN: gl.constexpr = s.shape[1]
    lo, hi = _halves(s, 1)  # tokens [0, BN / 2), [BN / 2, BN): a register bit of the mma layout
    lo = lo.to(gl.int32, bitcast=True)
    hi = hi.to(gl.int32, bitcast=True)
    N: gl.constexpr = lo.numel // (32 * W)
    y = gl.inline_asm_elementwise(pick_asm(N), asm_constraints(N, 2 * N), [lo, hi], dtype=gl.int32, is_pure=True,
                                  pack=N).to(gl.float32, bitcast=True)
    # [W, BN / 2, 8] whose columns 4-7 are the upper tokens' columns 0-3: token = BN / 2 * (column // 4) + t
    y = gl.reshape(gl.permute(gl.reshape(y, [W, BN // 2, 2, 4]), [0, 2, 1, 3]), [W, BN, 4])
    return gl.convert_layout(y, compact_layout(W, BN), assert_trivial=True)


@gluon.jit
def _uncompact(p, MMA: gl.constexpr):
    """p [W, BN, 4] fp16 (`compact_layout`) -> [W, BN, 8] in MMA, columns 4-7 arbitrary (finite): lanes c < 2 take
    the upper tokens from their partner lane ^ 2 (one shuffle a register of two values)."""
    W: gl.constexpr = p.shape[0]
    BN: gl.constexpr = p.shape[1]
    z = gl.reshape(gl.permute(gl.reshape(p, [W, 2, BN // 2, 4]), [0, 2, 1, 3]), [W, BN // 2, 8])
    zh = gl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 2, 0x1f, 0xffffffff;", "=r,r", [z],
                                   dtype=gl.float16, is_pure=True, pack=2)
    full = gl.reshape(gl.permute(gl.join(z, zh), [0, 3, 1, 2]), [W, BN, 8])
    return gl.convert_layout(full, MMA, assert_trivial=True)


@gluon.jit
def _dup(x, LAY: gl.constexpr):
    """x [W, 4] (a compact layout's query rows) -> [W, 8] in LAY, rows 4-7 copies of rows 0-3."""
    z = gl.reshape(gl.permute(gl.join(x, x), [0, 2, 1]), [x.shape[0], 8])
    return gl.convert_layout(z, LAY)


@gluon.jit
def _tile_values(s, valid, kn, vn, a0, a1, m_i, l_i, vc, vc_hi, vx, vy, vlofs, vsel, ASM: gl.constexpr,
                 KASM: gl.constexpr, BITS: gl.constexpr, VB: gl.constexpr, A_OP: gl.constexpr, B_OP: gl.constexpr,
                 COMPACT: gl.constexpr = False, MMA: gl.constexpr = None, bz=None):
    """One tile's online-softmax step (base 2; a row that has seen no key keeps max -inf, sum 0) and its values
    accumulated: (a0, a1, m_i, l_i) updated (the two V operands' accumulators: turbo4 / turbo3 parts 0 and 1,
    turbo2 codes 0, 2 and 1, 3 of a byte, `_pair_keys_v`). s: the tile's scores, valid [W, BN] its live tokens, kn /
    vn their K / V norms. COMPACT (at most 4 query rows): the softmax on `_compact`'s [W, BN, 4] (valid, kn, vn and
    m_i in its slices), l_i each lane's own running sums [W, BN, 4] (summed after the loop), P back through
    `_uncompact`. bz: None, or the tiles' tokens' additive bias (log2 units, valid's layout), added to every query
    row's score of that token."""
    if COMPACT:  # query rows 0-3 only, each lane's values half as many (valid, kn, vn, m_i, l_i in its layout)
        s = _compact(s)
    if bz is None:
        s = gl.where(gl.expand_dims(valid, 2), s * gl.expand_dims(kn, 2), float("-inf"))
    else:
        s = gl.where(gl.expand_dims(valid, 2), s * gl.expand_dims(kn, 2) + gl.expand_dims(bz, 2), float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1))
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_use)
    p = gl.exp2(s - gl.expand_dims(m_use, 1))
    if COMPACT:  # l_i [W, BN, 4]: each lane's own sums, reduced once after the loop; the accumulators' columns 4-7
        # (padding) take rows 0-3's factors
        l_i = l_i * gl.expand_dims(alpha, 1) + p
        alpha = _dup(alpha, gl.SliceLayout(1, MMA))
    else:
        l_i = l_i * alpha + gl.sum(p, axis=1)
    a0, a1, _a2, _a3 = scale_acc(a0, a1, a0, a1, gl.expand_dims(alpha, 1), False)
    m_i = m_new
    if COMPACT:
        pv = gl.convert_layout(_uncompact((p * gl.expand_dims(vn, 2)).to(gl.float16), MMA), B_OP)
    else:
        pv = gl.convert_layout((p * gl.expand_dims(vn, 2)).to(gl.float16), B_OP)

    if BITS == 2:  # token-pair keys in their operands already
        v0 = _decode_kbytes(vx, vlofs, vsel, KASM)
        v1 = _decode_kbytes(vy, vlofs, vsel, KASM)
    elif BITS == 3:  # token-pair keys' windows (`_keys3_pairs`): even dims, odd dims
        v0 = _decode_k3(_v_arrange3(vc, A_OP), _v_arrange3(vc_hi, A_OP), vlofs, vsel, KASM)
        v1 = _decode_k3(_v_arrange3(vx, A_OP), _v_arrange3(vy, A_OP), vlofs, vsel, KASM)
    elif VB:
        v0 = _decode_kbytes(_v_arrange3(vx, A_OP), vlofs, vsel, KASM)
        v1 = _decode_kbytes(_v_arrange3(vy, A_OP), vlofs, vsel, KASM)
    else:  # turbo4 at lut_pipe < 2: its bytes' parts
        v0, v1 = _decode_lut(_v_arrange3(vc, A_OP), vlofs, vsel, ASM)
    a0, a1, _a2, _a3 = accumulate_pv(v0, v1, v0, v1, pv, a0, a1, a0, a1, False)
    return a0, a1, m_i, l_i


@gluon.jit
def _map_query(q_ptr, w_ptr, row0, MQ, D: gl.constexpr, QR: gl.constexpr, W: gl.constexpr,
               FROM_SMEM: gl.constexpr = False):
    """The query rows row0 .. row0 + MQ of q_ptr (any float dtype, D contiguous values each; rows MQ .. QR are 0)
    times w_ptr (fp32 [D, D]) in fp32 FMA products: [QR, D], lanes (row, column group) and the warps on the
    columns, so each warp reads its own columns of w once; the reduction is in each thread. FROM_SMEM: q_ptr is a
    shared-memory fp32 [>= QR, D] stage instead, its rows 0 .. QR the input (row0, MQ unused)."""
    CT: gl.constexpr = D // ((32 // QR) * W)  # columns per thread
    KC: gl.constexpr = 64 // CT if CT > 4 else 16
    QM3: gl.constexpr = gl.BlockedLayout([1, KC, CT], [QR, 1, 32 // QR], [1, 1, W], [2, 1, 0])
    QC: gl.constexpr = gl.SliceLayout(2, QM3)
    WC: gl.constexpr = gl.SliceLayout(0, QM3)
    rq = gl.arange(0, QR, layout=gl.SliceLayout(1, QC))
    kq = gl.arange(0, KC, layout=gl.SliceLayout(0, QC))
    kw = gl.arange(0, KC, layout=gl.SliceLayout(1, WC))
    cw = gl.arange(0, D, layout=gl.SliceLayout(0, WC))
    qrow = q_ptr
    qmask = gl.expand_dims(rq < QR, 1)
    if not FROM_SMEM:
        qrow = q_ptr + gl.expand_dims((row0 + rq).to(gl.int64) * D, 1) + gl.expand_dims(kq, 0)
        qmask = gl.expand_dims(rq < MQ, 1)
    wcol = w_ptr + gl.expand_dims(kw * D, 1) + gl.expand_dims(cw, 0)
    acc = gl.zeros([QR, D], gl.float32, gl.SliceLayout(1, QM3))
    for k0 in gl.static_range(0, D, KC):
        if FROM_SMEM:
            qc = q_ptr.slice(0, QR, dim=0).slice(k0, KC, dim=1).load(QC)
        else:
            qc = gl.load(qrow + k0, mask=qmask, other=0.0).to(gl.float32)
        wc = gl.load(wcol + k0 * D)
        acc += gl.sum(gl.expand_dims(qc, 2) * gl.expand_dims(wc, 0), axis=1)
    return acc


@triton.constexpr_function
def had_layout(qr, d, w, step):
    """`_hadamard_map`'s product layouts: step 1 over [QR, D1, D2 (i2), D2 (j2)] (i2 in each thread, j2 over the
    warps), step 2 over [QR, D1 (i1), D1 (j1), D2 (j2)] (i1 over the lanes); lanes are (row, i1) either way, so
    step 1's result is step 2's operand where it was made. D1 = 8, D2 = D / 8."""
    d1, d2, li = 8, d // 8, 32 // qr
    inner = d2 if step == 1 else d1
    return gl.BlockedLayout([1, d1 // li, inner, d2 // w], [qr, li, 1, 1], [1, 1, 1, w], [3, 2, 1, 0])


@gluon.jit
def _hadamard_sign(i, j):
    """H[i, j] of the Sylvester Hadamard matrix: +1.0 where i & j has an even number of bits set, else -1.0."""
    c = gl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [i & j], dtype=gl.int32, is_pure=True, pack=1)
    return 1.0 - 2.0 * (c & 1).to(gl.float32)


@gluon.jit
def _had_index(QR: gl.constexpr, D: gl.constexpr, W: gl.constexpr, OUT: gl.constexpr):
    """(rows [QR, 1, 1], dims [1, 8, D / 8]) of `_hadamard_map`'s input (dim m = D2 i1 + i2) or, OUT, its output
    (dim k = D2 j1 + j2), in its layout."""
    if OUT:
        LAY: gl.constexpr = gl.SliceLayout(1, had_layout(QR, D, W, 2))
    else:
        LAY: gl.constexpr = gl.SliceLayout(3, had_layout(QR, D, W, 1))
    r = gl.arange(0, QR, layout=gl.SliceLayout(1, gl.SliceLayout(2, LAY)))
    a = gl.arange(0, 8, layout=gl.SliceLayout(1, gl.SliceLayout(0, LAY)))
    c = gl.arange(0, D // 8, layout=gl.SliceLayout(0, gl.SliceLayout(0, LAY)))
    dims = gl.expand_dims(gl.expand_dims(a, 1) * (D // 8) + gl.expand_dims(c, 0), 0)
    return gl.expand_dims(gl.expand_dims(r, 1), 2), dims


@gluon.jit
def _hadamard_factors(f_ptr, QR: gl.constexpr, D: gl.constexpr, W: gl.constexpr):
    """pre and post of f_ptr (fp32 [2, D], `gluon.lut_hadamard_maps`) in `_hadamard_map`'s input and output
    layouts."""
    _, m = _had_index(QR, D, W, False)
    _, k = _had_index(QR, D, W, True)
    return gl.load(f_ptr + m), gl.load(f_ptr + D + k)


@gluon.jit
def _query_rows(q_ptr, f_ptr, bh, MQ, D: gl.constexpr, QR: gl.constexpr, W: gl.constexpr, BITS: gl.constexpr):
    """The group's query rows (q_ptr row bh * MQ + r, fp32; rows MQ .. QR zero), dims in the K product's order
    (`_key_dim`), in `_hadamard_map`'s input layout, and its map's factors (f_ptr, `_hadamard_factors`)."""
    rq3, mq3 = _had_index(QR, D, W, False)
    xq = gl.load(q_ptr + (bh * MQ + rq3).to(gl.int64) * D + _key_dim(mq3, D, BITS), mask=rq3 < MQ,
                 other=0.0).to(gl.float32)
    pre, post = _hadamard_factors(f_ptr, QR, D, W)
    return xq, pre, post


@gluon.jit
def _hadamard_map(x, pre, post, QR: gl.constexpr, D: gl.constexpr, W: gl.constexpr):
    """((x * pre) @ H) * post for QR rows x [QR, 8, D / 8] (dim m = D2 i1 + i2, layout `_had_index`'s input one),
    pre / post from `_hadamard_factors`: H = H_8 (x) H_D2 (D2 = D / 8) as two ±1 products,
    over i2 in each thread (32 products a thread at D = 128, 8 warps), then over i1 across the lanes (16 and a
    shuffle sum). Returns [QR, 8, D2] (dim k = D2 j1 + j2) in `_had_index`'s output layout. The dense fp32 [D, D]
    map (`_map_query`) takes QR D D / (32 W) products a thread (256 at QR 4, D 128, 8 warps) and D D 4 bytes of
    loads per program."""
    D2: gl.constexpr = D // 8
    L1: gl.constexpr = had_layout(QR, D, W, 1)
    L2: gl.constexpr = had_layout(QR, D, W, 2)
    x = x * pre
    H2L: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(0, L1))  # [i2, j2]
    i2 = gl.arange(0, D2, layout=gl.SliceLayout(1, H2L))
    j2 = gl.arange(0, D2, layout=gl.SliceLayout(0, H2L))
    h2 = _hadamard_sign(gl.expand_dims(i2, 1), gl.expand_dims(j2, 0))
    z = gl.sum(gl.expand_dims(x, 3) * gl.expand_dims(gl.expand_dims(h2, 0), 0), axis=2)  # [QR, i1, j2]
    z = gl.convert_layout(z, gl.SliceLayout(2, L2))  # (the same threads and registers)
    H1L: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(3, L2))  # [i1, j1]
    i1 = gl.arange(0, 8, layout=gl.SliceLayout(1, H1L))
    j1 = gl.arange(0, 8, layout=gl.SliceLayout(0, H1L))
    h1 = _hadamard_sign(gl.expand_dims(i1, 1), gl.expand_dims(j1, 0))
    y = gl.sum(gl.expand_dims(z, 2) * gl.expand_dims(gl.expand_dims(h1, 0), 3), axis=1)  # [QR, j1, j2]
    return y * post


@gluon.jit
def _key_dim(k, D: gl.constexpr, BITS: gl.constexpr):
    """The dim that row k of the K product reads (`gluon.lut_key_dims`)."""
    if BITS != 2:  # turbo4's bytes and turbo3's keys (dims 2 j, 2 j + 1) in the same order
        return (D // 4) * ((k // 2) % 4) + 4 * (k // 16) + 2 * ((k // 8) % 2) + k % 2
    else:  # turbo2 (`_pair_keys_k`): code 2 nu + k % 2 of byte 4 (D / 64 c + b) + y
        return (D // 4) * ((k // 2) % 4) + 16 * (k // 64) + 4 * ((k // 16) % 4) + 2 * ((k // 8) % 2) + k % 2


CLOCK_PHASES = 10  # decode_lut_kernel's clk_ptr: int64 [programs, CLOCK_PHASES, W] (`_stamp`; 6: the SM's id; 7-9:
# inside the finishing tail, `_finish_fused`)
_CLOCK_PHASES = gl.constexpr(CLOCK_PHASES)  # (the kernels' copy)


@gluon.jit
def _stamp(clk_ptr, phase: gl.constexpr, W: gl.constexpr, TIMER: gl.constexpr = False, SMID: gl.constexpr = False):
    """Lane 0 of each warp writes %clock64 (SM cycles; TIMER: %globaltimer, ns; SMID: %smid, the multiprocessor's
    id) at clk_ptr [program, phase, warp]
    (int64 [programs, CLOCK_PHASES, W], program = program_id(1) * num_programs(0) + program_id(0)). A diagnostic: where a
    step's time goes inside the kernel (`scripts/phase_clocks.py`); without clk_ptr nothing of it is compiled."""
    L2: gl.constexpr = gl.BlockedLayout([1, 1], [1, 32], [W, 1], [1, 0])
    wi = gl.expand_dims(gl.arange(0, W, layout=gl.SliceLayout(1, L2)), 1)
    li = gl.expand_dims(gl.arange(0, 32, layout=gl.SliceLayout(0, L2)), 0)
    if SMID:
        t = gl.inline_asm_elementwise("{ .reg .u32 s; mov.u32 s, %smid; cvt.u64.u32 $0, s; }", "=l,r",
                                      [wi * 32 + li], dtype=gl.int64, is_pure=False, pack=1)
    elif TIMER:
        t = gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [wi * 32 + li], dtype=gl.int64,
                                      is_pure=False, pack=1)
    else:
        t = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [wi * 32 + li], dtype=gl.int64,
                                      is_pure=False, pack=1)
    prog = gl.program_id(1) * gl.num_programs(0) + gl.program_id(0)
    gl.store(clk_ptr + (prog.to(gl.int64) * _CLOCK_PHASES + phase) * W + wi + li * 0, t, mask=li == 0)


@gluon.jit
def _fence_gpu(x):
    """fence.acq_rel.gpu in every thread (x: any int32 tensor, returned)."""
    return gl.inline_asm_elementwise("fence.acq_rel.gpu;\nmov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32,
                                     is_pure=False, pack=1)


@gluon.jit
def _sink_partial(q_ptr, sk_ptr, sv_ptr, n_sink, s_sb, s_sh, kmean_ptr, qscale, o_ptr, ml_ptr, slot, bh, b, h, MQ,
                  D: gl.constexpr, NH: gl.constexpr, W: gl.constexpr, KMEAN: gl.constexpr):
    """The group's fp16 sinks attended by its query rows (q_ptr row bh * MQ + g, unmapped, times qscale = softmax
    scale * log2 e): unnormalised values (original space), max and sum (log2 units) stored at partial `slot` of
    o_ptr / ml_ptr ([NH, D] and [2, NH]) for the finishing program (`_finish_fused`). KMEAN: the compressed keys
    are stored less kmean_ptr's mean (fp32 [B*H, D]); instead of adding q·mean to their scores, the sinks' max is
    lowered by it (the same softmax). A row per warp (or two), D across its lanes: warp-local sums."""
    SK: gl.constexpr = gl.BlockedLayout([1, D // 32], [1, 32], [W, 1], [1, 0])
    R: gl.constexpr = gl.SliceLayout(1, SK)
    rn = gl.arange(0, NH, layout=R)
    rd = gl.arange(0, D, layout=gl.SliceLayout(0, SK))
    q = gl.load(q_ptr + gl.expand_dims((bh * MQ + rn).to(gl.int64) * D, 1) + gl.expand_dims(rd, 0),
                mask=gl.expand_dims(rn < MQ, 1), other=0.0).to(gl.float32) * qscale
    m_w = gl.full([NH], float("-inf"), gl.float32, R)
    l_w = gl.zeros([NH], gl.float32, R)
    a_w = gl.zeros([NH, D], gl.float32, SK)
    kb = sk_ptr + b.to(gl.int64) * s_sb + h.to(gl.int64) * s_sh + rd
    vb = sv_ptr + b.to(gl.int64) * s_sb + h.to(gl.int64) * s_sh + rd
    for j in range(n_sink):
        s_j = gl.sum(q * gl.expand_dims(gl.load(kb + j * D).to(gl.float32), 0), axis=1)
        m_new = gl.maximum(m_w, s_j)
        alpha = gl.exp2(m_w - m_new)
        p_j = gl.exp2(s_j - m_new)
        l_w = l_w * alpha + p_j
        v_j = gl.load(vb + j * D).to(gl.float32)
        a_w = a_w * gl.expand_dims(alpha, 1) + gl.expand_dims(p_j, 1) * gl.expand_dims(v_j, 0)
        m_w = m_new
    if KMEAN:
        m_w = m_w - gl.sum(q * gl.expand_dims(gl.load(kmean_ptr + bh.to(gl.int64) * D + rd), 0), axis=1)
    gl.store(o_ptr + (slot.to(gl.int64) * NH + gl.expand_dims(rn, 1)) * D + gl.expand_dims(rd, 0), a_w)
    gl.store(ml_ptr + slot.to(gl.int64) * 2 * NH + rn, m_w)
    gl.store(ml_ptr + slot.to(gl.int64) * 2 * NH + NH + rn, l_w)


@gluon.jit
def _finish_fused(lut, rest, acc, m_i, l_i, o_ptr, ml_ptr, cnt_ptr, adj_ptr, out_ptr, bh, b, h, pid, n_prog, H, MQ,
                  n_groups, D: gl.constexpr, W: gl.constexpr, NH: gl.constexpr, QR: gl.constexpr,
                  ROWB: gl.constexpr, SINKS: gl.constexpr, HAD: gl.constexpr = False, clk_ptr=None,
                  SEP: gl.constexpr = False):
    """The program's W splits merged (through the table's shared memory `lut`, free once every warp is past the loop:
    the accumulators from its start, the rest after them in `rest`, the same buffer; SEP: `rest` another buffer of
    the table's size, from its start: 16 warps' accumulators fill the table, and with the bulk copies the K stages
    follow it),
    stored as the program's partial; the last program of the (b, h) group to get there (a counter per group) merges
    the group's partials, maps the result back through adj_ptr (fp32 [D, D], the V inverse map on row vectors; HAD:
    its Hadamard factors, fp32 [2, D], `_hadamard_map`) and
    writes the normalised rows g < MQ at out_ptr [B, 1, H * MQ, D] (the query's dtype), then zeroes the counter
    for the next launch. acc: [W, NH, D] accumulators (V segment space), m_i / l_i: [W, NH] running max and sum
    (log2 units).

    SINKS: the group's fp16 sinks are merged too, by log-sum-exp as decode_finish_kernel merges its windows: their
    partial (`_sink_partial`, original space, max shifted by the key mean) is at slot n_groups * n_prog + bh of
    o_ptr / ml_ptr, and its values are added after the inverse map. clk_ptr: the kernel's stamps (None: none), here
    SM clocks after the first barrier (phase 7: every warp of the program past its loop), once the group's counter
    is known (8) and, in the group's last program, after the partials' merge, before the V map (9)."""
    # staging regions in table rows, each at a multiple of its length: accumulators, output rows, max, sum
    A_ROWS: gl.constexpr = W * NH * D * 4 // ROWB
    O_ROWS: gl.constexpr = NH * D * 4 // ROWB
    M_ROWS: gl.constexpr = W * NH * 4 // ROWB if W * NH * 4 >= ROWB else 1
    # (each a block of the whole buffer seen as a stack of such blocks: `smem_view`)
    LR: gl.constexpr = lut.shape[0]
    RR: gl.constexpr = rest.shape[0]
    R0: gl.constexpr = 0 if SEP else A_ROWS  # the rest's first row
    MB: gl.constexpr = W * NH * 4  # bytes of the max / sum blocks
    st_a = smem_view(lut, gl.float32, [LR // A_ROWS, W, NH, D], FLAT3).index(0)
    st_o = smem_view(rest, gl.float32, [RR // O_ROWS, NH, D], FLAT2).index(R0 // O_ROWS)
    st_m = smem_view(rest, gl.float32, [RR * ROWB // MB, W, NH], FLAT2).index((R0 + O_ROWS) * ROWB // MB)
    st_l = smem_view(rest, gl.float32, [RR * ROWB // MB, W, NH], FLAT2).index((R0 + O_ROWS + M_ROWS) * ROWB // MB)
    st_w = smem_view(rest, gl.float32, [RR // O_ROWS, NH, D], FLAT2).index((R0 + 2 * O_ROWS) // O_ROWS)  # (SINKS)
    cta_barrier()  # every warp is past the loop: nobody reads the table any more
    if clk_ptr is not None:
        _stamp(clk_ptr, 7, W)
    st_a.store(acc)
    st_m.store(m_i)
    st_l.store(l_i)
    cta_barrier()

    # lanes (row, dim group), all W splits of an element in one thread: the merges below are in-thread
    CT: gl.constexpr = D // ((32 // NH) * W)
    MRG: gl.constexpr = gl.BlockedLayout([W, 1, CT], [1, NH, 32 // NH], [1, 1, W], [2, 1, 0])
    ML: gl.constexpr = gl.SliceLayout(2, MRG)
    a3 = st_a.load(MRG)
    m3 = st_m.load(ML)
    l3 = st_l.load(ML)
    mx = gl.max(m3, axis=0)
    mu = gl.where(mx == float("-inf"), 0.0, mx)
    sw = gl.exp2(m3 - gl.expand_dims(mu, 0))
    lp = gl.sum(l3 * sw, axis=0)
    ap = gl.sum(a3 * gl.expand_dims(sw, 2), axis=0)  # [NH, D]

    # the program's partial, then the group's counter (stores fenced before it: the last program reads them)
    AL: gl.constexpr = gl.SliceLayout(0, MRG)
    RL: gl.constexpr = gl.SliceLayout(0, ML)
    rn = gl.arange(0, NH, layout=gl.SliceLayout(1, AL))
    rd = gl.arange(0, D, layout=gl.SliceLayout(0, AL))
    rn1 = gl.arange(0, NH, layout=RL)
    slot = bh * n_prog + pid
    # (rows QR .. NH hold no query: not stored, read back as 0)
    gl.store(o_ptr + (slot.to(gl.int64) * NH + gl.expand_dims(rn, 1)) * D + gl.expand_dims(rd, 0), ap,
             mask=gl.expand_dims(rn < QR, 1))
    gl.store(ml_ptr + slot.to(gl.int64) * 2 * NH + rn1, mx)
    gl.store(ml_ptr + slot.to(gl.int64) * 2 * NH + NH + rn1, lp)
    if HAD:  # the V inverse map's factors, loaded before the counter (off the last program's path)
        a_pre, a_post = _hadamard_factors(adj_ptr, QR, D, W)
    _fence_gpu(rn1)
    cta_barrier()
    done = gl.atomic_add(cnt_ptr + bh, 1, sem="acq_rel", scope="gpu")
    if clk_ptr is not None:
        _stamp(clk_ptr, 8, W)
    if done == n_prog - 1:  # the group's other programs have stored their partials
        _fence_gpu(rn1)
        PB: gl.constexpr = 16  # programs' partials per load (all in one thread's registers)
        FIN: gl.constexpr = gl.BlockedLayout([PB, 1, CT], [1, NH, 32 // NH], [1, 1, W], [2, 1, 0])
        FL: gl.constexpr = gl.SliceLayout(2, FIN)
        fp = gl.arange(0, PB, layout=gl.SliceLayout(1, FL))
        fn = gl.arange(0, NH, layout=gl.SliceLayout(0, FL))
        fd = gl.arange(0, D, layout=gl.SliceLayout(0, gl.SliceLayout(1, FIN)))
        m_r = gl.full([NH], float("-inf"), gl.float32, gl.SliceLayout(0, FL))
        l_r = gl.zeros([NH], gl.float32, gl.SliceLayout(0, FL))
        a_r = gl.zeros([NH, D], gl.float32, gl.SliceLayout(0, FIN))
        for c0 in range(0, n_prog, PB):
            live = gl.expand_dims(c0 + fp < n_prog, 1)  # [PB, 1]
            srow = (bh * n_prog + c0 + gl.expand_dims(fp, 1)).to(gl.int64)  # [PB, 1]
            mc = gl.load(ml_ptr + srow * 2 * NH + gl.expand_dims(fn, 0), mask=live, other=float("-inf"),
                         cache_modifier=".cg")
            lc = gl.load(ml_ptr + srow * 2 * NH + NH + gl.expand_dims(fn, 0), mask=live, other=0.0,
                         cache_modifier=".cg")
            ac = gl.load(o_ptr + (gl.expand_dims(srow * NH + gl.expand_dims(fn, 0), 2)) * D
                         + gl.expand_dims(gl.expand_dims(fd, 0), 1),
                         mask=gl.expand_dims(live & gl.expand_dims(fn < QR, 0), 2), other=0.0, cache_modifier=".cg")
            m_new = gl.maximum(m_r, gl.max(mc, axis=0))
            m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
            wc = gl.exp2(mc - gl.expand_dims(m_use, 0))
            alpha = gl.exp2(m_r - m_use)
            l_r = l_r * alpha + gl.sum(lc * wc, axis=0)
            a_r = a_r * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, gl.SliceLayout(0, FIN))), 1) \
                + gl.sum(ac * gl.expand_dims(wc, 2), axis=0)
            m_r = m_new
        FA: gl.constexpr = gl.SliceLayout(0, FIN)  # [NH, D]
        FR: gl.constexpr = gl.SliceLayout(1, FA)  # [NH]
        if SINKS:  # the sinks' partial, made by the group's last program in its prologue (`_sink_partial`)
            sslot = (n_groups * n_prog + bh).to(gl.int64)
            wn = gl.arange(0, NH, layout=FR)
            wd = gl.arange(0, D, layout=gl.SliceLayout(0, FA))
            m_w = gl.load(ml_ptr + sslot * 2 * NH + wn, cache_modifier=".cg")
            l_w = gl.load(ml_ptr + sslot * 2 * NH + NH + wn, cache_modifier=".cg")
            a_w = gl.load(o_ptr + (sslot * NH + gl.expand_dims(wn, 1)) * D + gl.expand_dims(wd, 0),
                          cache_modifier=".cg")
            m_c = gl.convert_layout(m_r, FR)
            m_t = gl.maximum(m_c, m_w)
            m_u = gl.where(m_t == float("-inf"), 0.0, m_t)
            wc = gl.exp2(m_c - m_u)
            ww = gl.exp2(m_w - m_u)
            tot = gl.convert_layout(l_r, FR) * wc + l_w * ww
            inv = gl.where(tot > 0, 1.0 / gl.where(tot > 0, tot, 1.0), 0.0)
            res = a_r * gl.expand_dims(wc * inv, 1)
            st_w.store(a_w * gl.expand_dims(ww * inv, 1))  # the sinks' share, original space
        else:
            inv = gl.where(l_r > 0, 1.0 / gl.where(l_r > 0, l_r, 1.0), 0.0)
            res = a_r * gl.expand_dims(gl.convert_layout(inv, FR), 1)
        if clk_ptr is not None:
            _stamp(clk_ptr, 9, W)
        # the inverse V map: rows through shared memory to the threads that own w's columns
        st_o.store(res)
        cta_barrier()
        if HAD:  # adj_ptr: its Hadamard factors (fp32 [2, D])
            xo = smem_view(rest, gl.float32, [RR // O_ROWS, NH, 8, D // 8], FLAT3).index(R0 // O_ROWS).slice(
                0, QR, dim=0)
            out = _hadamard_map(xo.load(gl.SliceLayout(3, had_layout(QR, D, W, 1))), a_pre, a_post, QR, D, W)
            if SINKS:
                sw3 = smem_view(rest, gl.float32, [RR // O_ROWS, NH, 8, D // 8], FLAT3).index(
                    (R0 + 2 * O_ROWS) // O_ROWS)
                out = out + sw3.slice(0, QR, dim=0).load(out.type.layout)
            on, od = _had_index(QR, D, W, True)
        else:
            out = _map_query(st_o, adj_ptr, 0, 0, D, QR, W, True)  # [QR, D]
            OQ: gl.constexpr = out.type.layout
            if SINKS:
                out = out + st_w.slice(0, QR, dim=0).load(OQ)
            on = gl.expand_dims(gl.arange(0, QR, layout=gl.SliceLayout(1, OQ)), 1)
            od = gl.expand_dims(gl.arange(0, D, layout=gl.SliceLayout(0, OQ)), 0)
        dst = out_ptr + ((b.to(gl.int64) * H + h) * MQ + on) * D + od
        gl.store(dst, out.to(out_ptr.dtype.element_ty), mask=on < MQ)
        gl.store(cnt_ptr + bh, 0)


@gluon.jit
def decode_lut_kernel(q_ptr, kc_ptr, kn_ptr, vc_ptr, vn_ptr, len_ptr, o_ptr, ml_ptr, lut_ptr,
                      H, MQ, num_splits, kcsb, kcsh, vcsb, vcsh, nsb, nsh, w_ptr, w_hs, cnt_ptr, adj_ptr,
                      out_ptr, k_tab, v_tab, CHUNK_SHIFT, sk_ptr, sv_ptr, n_sink, s_sb, s_sh, kmean_ptr, qscale,
                      clk_ptr, vmap_ptr, bias_ptr, s_bb, D: gl.constexpr, ASM: gl.constexpr, KASM: gl.constexpr,
                      W: gl.constexpr, BN: gl.constexpr, NH: gl.constexpr, BLOCK_M: gl.constexpr, KLOAD: gl.constexpr,
                      VLOAD: gl.constexpr, PIPE: gl.constexpr = 0,
                      KWORD: gl.constexpr = None, VWORD: gl.constexpr = None, BITS: gl.constexpr = 4,
                      QMAP: gl.constexpr = False, QR: gl.constexpr = 8, FUSED: gl.constexpr = False,
                      CODEC_ROWS: gl.constexpr = False, SINKS: gl.constexpr = False, KMEAN: gl.constexpr = False,
                      KSTAGE: gl.constexpr = None, VSTAGE: gl.constexpr = None, HAD: gl.constexpr = False,
                      EARLY: gl.constexpr = False, COMPACT: gl.constexpr = False, BIAS: gl.constexpr = False):
    """Splits W * program_id(0) + w (warp w) of (b, h) = divmod(program_id(1), H): partial O, running max and sum
    of the MQ = G query rows, as decode_gluon_kernel (same arguments, turbo4 K and V; lut_ptr: int32 [256] table
    words). PIPE: 1 = the next tile's code bytes are copied (cp.async) into a shared stage behind the table while
    this tile is computed; 2 = the next tile's code bytes (int32 words in layouts KWORD / VWORD, `lut_layouts`)
    and norms loaded into registers during this one; 3 = as 2, two tiles ahead; 0 = loaded from global memory at
    the tile's start; 4 = the code words of the next S - 1 tiles copied (cp.async) into S shared stages per
    operand behind the table (KSTAGE / VSTAGE: `lut_stage_layout`, each lane's words at its own offsets, so the
    lane that copies a word is the one that reads it and no barrier is needed), the norms two tiles ahead in
    registers; 6 = each warp's tiles copied by the copy engine (cp.async.bulk from lane 0, `_bulk_tile`) into
    stages of its own behind the table (as 4's, but in the planes' byte order), one mbarrier per warp and stage,
    the next S - 1 tiles in flight, each lane reading its words back with ld.shared (K at the tile's start, V after
    the scores), the norms one tile ahead in registers (turbo4 and turbo2 planes, sm_90); 7 = as 6, but each
    operand's copy of tile i + S is issued as soon as the warp has read that operand's words of tile i (K's before
    the scores, V's before the values: `_bulk_op`) instead of after both are used, so a tile's copies have two
    tiles' compute to land instead of one; 8 = K's copy as 7's, V's as 6's (after the values). BITS: 4 (turbo4
    K and V, lut_ptr int32 [256]), 3 (turbo3, lut_ptr int32 [64], PIPE 2 or 3:
    6-bit keys of two codes) or 2 (turbo2, lut_ptr int32 [512]: entry e's two words at 2 e, 2 e + 1; PIPE >= 2,
    keys of token pairs). QMAP: q_ptr holds the query rows as they come (fp16/bf16/fp32,
    not mapped) and each program multiplies its group's rows by w_ptr + h * w_hs (fp32 [D, D], the query map with
    its columns in the operands' order, `gluon.lut_query_map`) in its prologue, through the table's shared memory
    before the table is written (QR: rows computed, a power of two >= MQ, `gluon.lut_query_rows`); without it q_ptr
    is the mapped query, fp32 (`decode.map_query`). FUSED: the step finishes here (`_finish_fused`: no recent
    window, no mask; fp16 sinks with SINKS below): o_ptr / ml_ptr hold one partial per program
    ([B*H, programs, NH, D], its rows QR .. NH not written, and [.., 2, NH]), cnt_ptr int32 [B*H] zeros (zero
    again after the launch), adj_ptr the V inverse map, out_ptr the [B, 1, H*MQ, D] output. CODEC_ROWS (PIPE 2
    or 3): the codes and norms are codec rows ([fp16 norm][codes], 2 + RB bytes: the dynamic cache's chunks)
    found through the chunk tables k_tab / v_tab (`decode.chunk_table`) of chunks of 2**CHUNK_SHIFT tokens (a
    multiple of BN; the last may hold fewer); the plane arguments are then unused. SINKS (FUSED and QMAP): the
    group's fp16 sink tokens (sk_ptr, sv_ptr: [B, H, n_sink, D], batch and head strides s_sb, s_sh) are attended
    by its last program (`_sink_partial`; KMEAN: kmean_ptr, the compressed keys' mean) into one more partial per
    group (after the programs' ones) and merged by the finishing program. clk_ptr: None, or int64 [programs,
    CLOCK_PHASES, W] where lane 0 of each warp records (`_stamp`) the global timer at its start, then SM clocks at
    its start, after the prologue (query, table), after the loop and at its exit, then the global timer at its exit
    and the id of the SM it ran on, and three stamps inside the finishing tail (`_finish_fused`).
    KASM: the K (and token-pair V) decoder (`lut_asm_k`: turbo4's bytes, turbo3's key windows, turbo2's token-pair
    keys); ASM: turbo4's part decoder for its V at PIPE < 2 (`lut_asm`), None for the others. HAD (QMAP, FUSED):
    w_ptr holds the query map's Hadamard factors (fp32 [2, D] per head, w_hs apart, dims in the K product's order)
    and adj_ptr the V inverse map's ([2, D]; `gluon.lut_hadamard_maps`), applied by `_hadamard_map` instead of the
    dense maps. EARLY (PIPE 2 / 3, 6 - 8; QMAP only with HAD; `gluon.lut_early_loads`):
    the first tile(s)' loads (PIPE 6 - 8: the mbarriers' init and the first stages' copies) issued before the
    prologue (query map, table fill) instead of after it. COMPACT (MQ <= 4; `gluon.lut_compact`): the softmax over
    query rows 0-3 only, in `compact_layout` (`_tile_values`); the norms and the valid mask loaded in its layout.
    BIAS (not FUSED): bias_ptr holds float32 [B, >= L] additive scores per batch row and token (log2 units, -inf
    masks the token; batch stride s_bb, token stride 1: an attention mask over the compressed tokens, e.g. a padded
    batch's), added to every query row's score of its token; each tile's values loaded at its start."""
    if clk_ptr is not None:
        _stamp(clk_ptr, 0, W, True)
        _stamp(clk_ptr, 1, W)
        _stamp(clk_ptr, 6, W, SMID=True)
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[W, 1, 1], instr_shape=[1, 16, 8])
    A_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_OP: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    ROWS: gl.constexpr = gl.SliceLayout(2, MMA)  # [W, BN] tokens
    COLS: gl.constexpr = gl.SliceLayout(1, MMA)  # [W, NH] query rows
    P: gl.constexpr = 8 // BITS  # codes (parts) per table key: a byte (turbo4, turbo2) or 6 bits (turbo3)
    # K is one operand over the D dims, decoded through KASM: turbo4 in byte order (`_k_bytes3`), turbo3 in key
    # order (the same arrangement of its key windows), turbo2 keyed by token pairs (`_pair_keys_k`; its V too)
    VB: gl.constexpr = BITS == 4 and PIPE >= 2  # turbo4's V read by token-pair keys (`_value_keys`), through KASM too
    NB: gl.constexpr = D // P  # table keys per row (the load layouts' extent)
    NA: gl.constexpr = D // 2  # rows of each of the two V operands and their accumulators
    RB: gl.constexpr = D * BITS // 8  # code bytes per row (= NB but for turbo3)
    WV: gl.constexpr = NA // 8

    # the table: row e holds entry e for lanes 0..31 (its first 128 bytes); with PIPE, the K and V stages follow
    # it in the same allocation (256-byte rows), so the table is at the start of shared memory either way
    FILL: gl.constexpr = gl.BlockedLayout([1, 2], [1, 32], [W, 1], [1, 0])
    SROWS: gl.constexpr = W * BN * RB // 256  # rows of one stage (K or V)
    if BITS == 3:  # 64 entries x 128-byte rows: lane l's copy in column l
        FILL3: gl.constexpr = gl.BlockedLayout([1, 1], [1, 32], [W, 1], [1, 0])
        e3 = gl.arange(0, 64, layout=gl.SliceLayout(1, FILL3))
        j3 = gl.arange(0, 32, layout=gl.SliceLayout(0, FILL3))
        words = gl.load(lut_ptr + gl.expand_dims(e3, 1) + gl.expand_dims(j3 * 0, 0))
        lut = gl.allocate_shared_memory(gl.int32, [512 if FUSED else 64, 32], FLAT2)  # (FUSED: its staging)
        QROWS: gl.constexpr = NH * D * 4 // 128  # the mapped query's bytes in table rows (QMAP)
    else:
        # HALF (turbo4 with the bulk copies started before the prologue): the rows' second halves hold mbarriers
        # already, so only the first halves are written
        HALF: gl.constexpr = P == 2 and PIPE >= 6 and EARLY
        FILLW: gl.constexpr = gl.BlockedLayout([1, 1], [1, 32], [W, 1], [1, 0]) if HALF else FILL
        e = gl.arange(0, 256, layout=gl.SliceLayout(1, FILLW))
        j = gl.arange(0, 32 if HALF else 64, layout=gl.SliceLayout(0, FILLW))
        if P == 2:  # 4-byte entries: lane l's copy in column l (the first 128 bytes of the row)
            words = gl.load(lut_ptr + gl.expand_dims(e, 1) + gl.expand_dims(j * 0, 0))
        else:  # 8-byte entries: lane l's copy in columns 2 l, 2 l + 1 (the whole row)
            words = gl.load(lut_ptr + gl.expand_dims(2 * e, 1) + gl.expand_dims(j % 2, 0))
        if PIPE == 4 or PIPE >= 6:  # the table, then 64 KB of K stages, then 64 KB of V stages
            stages = gl.allocate_shared_memory(gl.int32, [3, 256, 64], FLAT2)
            lut = stages.index(0)
        else:
            lut = gl.allocate_shared_memory(gl.int32, [256 + 2 * SROWS, 64] if PIPE == 1 else [256, 64], FLAT2)
        QROWS: gl.constexpr = NH * D * 4 // 256

    pid = gl.program_id(0)
    bh, b, h, L, split = split_rule(len_ptr, H, num_splits, BN)
    n_iter = split // BN
    # EARLY: the first tile(s)' loads before the prologue (query map, table fill), in a branch of their own
    # (`_first_tiles`) so that the table's, the query's and its factors' loads above it are issued first
    # (`gluon.LUT_EARLY_BITS` says where and why)
    if QMAP and HAD and EARLY:
        xq, q_pre, q_post = _query_rows(q_ptr, w_ptr + h.to(gl.int64) * w_hs, bh, MQ, D, QR, W, BITS)
    # per-warp split ranges, in the layouts that use them
    if COMPACT:  # the scores' layout after `_compact`
        NR: gl.constexpr = gl.SliceLayout(2, compact_layout(W, BN))
        MR: gl.constexpr = gl.SliceLayout(1, compact_layout(W, BN))
        NM: gl.constexpr = 4
    else:
        NR: gl.constexpr = ROWS
        MR: gl.constexpr = COLS
        NM: gl.constexpr = NH
    wr = gl.arange(0, W, layout=gl.SliceLayout(1, NR))
    lo_r = gl.expand_dims((pid * W + wr) * split, 1)  # [W, 1] (NR)
    hi_r = gl.minimum(lo_r + split, L)
    tr = gl.expand_dims(gl.arange(0, BN, layout=gl.SliceLayout(0, NR)), 0)  # [1, BN]
    kbase = kc_ptr + b.to(gl.int64) * kcsb + h.to(gl.int64) * kcsh
    vbase = vc_ptr + b.to(gl.int64) * vcsb + h.to(gl.int64) * vcsh
    knb = kn_ptr + b.to(gl.int64) * nsb + h.to(gl.int64) * nsh
    vnb = vn_ptr + b.to(gl.int64) * nsb + h.to(gl.int64) * nsh
    # load coordinates [W, BN, NB] of the K and V code bytes (KLOAD / VLOAD: gluon_layouts with a warp dimension)
    kw3, kc3 = _expand3(gl.arange(0, W, layout=gl.SliceLayout(1, gl.SliceLayout(2, KLOAD))),
                        gl.arange(0, NB, layout=gl.SliceLayout(0, gl.SliceLayout(1, KLOAD))))
    kt3 = gl.expand_dims(gl.expand_dims(gl.arange(0, BN, layout=gl.SliceLayout(0, gl.SliceLayout(2, KLOAD))), 0), 2)
    vw3, vc3 = _expand3(gl.arange(0, W, layout=gl.SliceLayout(1, gl.SliceLayout(2, VLOAD))),
                        gl.arange(0, NB, layout=gl.SliceLayout(0, gl.SliceLayout(1, VLOAD))))
    vt3 = gl.expand_dims(gl.expand_dims(gl.arange(0, BN, layout=gl.SliceLayout(0, gl.SliceLayout(2, VLOAD))), 0), 2)
    klo = (pid * W + kw3) * split
    khi = gl.minimum(klo + split, L)
    vlo = (pid * W + vw3) * split
    vhi = gl.minimum(vlo + split, L)
    if PIPE >= 6:  # the bulk copies: S6 stages of SB6 bytes per operand, one mbarrier per warp and stage
        SB6: gl.constexpr = W * BN * RB  # bytes of one stage of every warp (K or V)
        S6: gl.constexpr = 65536 // SB6 if BITS == 4 else 65536 // SB6 - 1
        # VSTAGE (`tma_stage_layout`): V's tiles through its tensor map vmap_ptr, whole boxes of BOX bytes
        BOX: gl.constexpr = BN * RB if VSTAGE is not None else 0
        if VSTAGE is not None:
            vsrc = (vmap_ptr, h, b)
        else:
            vsrc = vbase
        # mbarrier k = S6 w + s: turbo4 in the unused second half of table row k (EARLY: of row QROWS + k, past the
        # query map's staging), else after the K stages
        BSTEP: gl.constexpr = 256 if BITS == 4 else 8
        BAR0: gl.constexpr = (QROWS * 256 + 128 if EARLY else 128) if BITS == 4 else 65536 + S6 * SB6
        if EARLY:  # each warp's mbarriers and its first S6 tiles' copies before the prologue (the copy engine's
            # traffic does not queue the prologue's loads and shared stores behind it as the register loads did)
            lane6, bar6, lo6, hi6, dst6 = _bulk_start(pid, split, L, kbase, vsrc, W, BN, RB, S6, SB6, BAR0, BSTEP, BOX)

    voff = 0  # (turbo3's V word offsets below)
    if PIPE >= 2:
        # the codes as int32 words (4 bytes of a lane's load), which a loop-carried tensor keeps in one register
        # each (a uint8 tensor would take a register per byte)
        kwb = kbase.to(gl.pointer_type(gl.int32))
        vwb = vbase.to(gl.pointer_type(gl.int32))
        kwlo, kwt3, kwc3 = _coords3(KWORD, W, BN, NB // 4)
        vwlo, vwt3, vwc3 = _coords3(VWORD, W, BN, NB // 4)
        kwlo = (pid * W + kwlo) * split
        vwlo = (pid * W + vwlo) * split
        kwhi = gl.minimum(kwlo + split, L)
        vwhi = gl.minimum(vwlo + split, L)
        if BITS == 3:
            # turbo3 rows: 12 words; K lane chunk c (keys 16 c ..) = words 3 c .. 3 c + 2 (a 4th slot kept 0);
            # V lane chunk g (keys 8 g ..) within words floor(3 g / 2) and the next, from bit 16 (g % 2)
            voff = 16 * ((vwc3 // 2) % 2) + gl.zeros([W, BN, NB // 4], gl.int32, VWORD)
            voff, _ = gl.split(gl.reshape(voff, [W, BN, NB // 8, 2]))
            kwhi = gl.where(kwc3 % 4 < 3, kwhi, 0)
            kwc3 = 3 * (kwc3 // 4) + kwc3 % 4
            vwc3 = (3 * (vwc3 // 2)) // 2 + vwc3 % 2
        if (PIPE == 2 or PIPE == 3) and EARLY:
            kw_n, vw_n, kn_n, vn_n, kw_m, vw_m, kn_m, vn_m = _first_tiles(
                k_tab, v_tab, b, h, CHUNK_SHIFT, L, kwb, vwb, knb, vnb, kwlo, vwlo, kwt3, vwt3, kwhi, vwhi, kwc3, vwc3,
                lo_r, tr, hi_r, KWORD, VWORD, RB, BITS, BN, PIPE, CODEC_ROWS)

    if SINKS:  # the group's last program (the least loaded: the splits' remainder, empty at short contexts)
        if pid == gl.num_programs(0) - 1:  # attends its fp16 sinks first, the others in their loops meanwhile
            _sink_partial(q_ptr, sk_ptr, sv_ptr, n_sink, s_sb, s_sh, kmean_ptr, qscale, o_ptr, ml_ptr,
                          gl.num_programs(1) * gl.num_programs(0) + bh, bh, b, h, MQ, D, NH, W, KMEAN)

    # the query (same for every warp) in the K operand's dim order: operand row k is dim qd(k) (`lut_key_dims`)
    QL: gl.constexpr = gl.SliceLayout(0, B_OP)
    nq = gl.arange(0, NH, layout=gl.SliceLayout(0, QL))
    if QMAP:
        # q @ w here (w's columns in the operands' order, `gluon.lut_query_map`), handed from the threads that
        # made it to the ones that use it through the first rows of the table's memory, before the table is
        # written there
        stage = smem_view(lut, gl.float32, [lut.shape[0] // QROWS, NH, D], FLAT2).index(0)
        if HAD:  # w_ptr: the map's Hadamard factors, the query's dims gathered in the K product's order (xq)
            if not EARLY:
                xq, q_pre, q_post = _query_rows(q_ptr, w_ptr + h.to(gl.int64) * w_hs, bh, MQ, D, QR, W, BITS)
            qm = _hadamard_map(xq, q_pre, q_post, QR, D, W)
            smem_view(lut, gl.float32, [lut.shape[0] // QROWS, NH, 8, D // 8], FLAT3).index(0).slice(
                0, QR, dim=0).store(qm)
        else:
            qm = _map_query(q_ptr, w_ptr + h.to(gl.int64) * w_hs, bh * MQ, MQ, D, QR, W)
            stage.slice(0, QR, dim=0).store(qm)
        cta_barrier()
        qt = stage.permute([1, 0])  # [D, NH]: row r = operand row r
        live = gl.expand_dims(nq < MQ, 0)  # (rows >= QR: not written)
        qk = gl.where(live, qt.load(QL), 0.0).to(gl.float16)
        cta_barrier()  # every thread holds its query values: the table may overwrite them
    else:
        qrow = q_ptr + gl.expand_dims((bh * MQ + nq).to(gl.int64) * D, 0)
        qmask = gl.expand_dims(nq < MQ, 0)
        kq = gl.arange(0, D, layout=gl.SliceLayout(1, QL))
        qk = gl.load(qrow + gl.expand_dims(_key_dim(kq, D, BITS), 1), mask=qmask, other=0.0).to(gl.float16)
    zero_w = gl.expand_dims(gl.expand_dims(gl.arange(0, W, layout=gl.SliceLayout(1, gl.SliceLayout(2, B_OP))), 1),
                            2) * 0
    qk_lo, qk_hi = _halves(gl.expand_dims(qk, 0) + zero_w.to(gl.float16), 1, B_OP)

    # the table: its rows at the start of shared memory (with PIPE 1 the K and V stages after them)
    if BITS == 3:
        lut.slice(0, 64, dim=0).store(words)
        cta_barrier()
        _keep(lut.slice(0, W, dim=0).load(FILL3))
    else:
        if PIPE == 1:
            lut.slice(0, 256, dim=0).store(words)
        elif HALF:
            lut.slice(0, 32, dim=1).store(words)
        else:
            lut.store(words)
        cta_barrier()
        # the decoders read the table through inline PTX only: one side-effecting use keeps the allocation
        _keep(lut.slice(0, W, dim=0).load(FILL))
    if PIPE >= 6 and not EARLY:  # each warp's mbarriers, then its first S6 tiles on their way (lane 0 of each warp)
        lane6, bar6, lo6, hi6, dst6 = _bulk_start(pid, split, L, kbase, vsrc, W, BN, RB, S6, SB6, BAR0, BSTEP, BOX)

    if clk_ptr is not None:
        _stamp(clk_ptr, 2, W)

    a0 = gl.zeros([W, NA, NH], gl.float32, MMA)
    a1 = gl.zeros([W, NA, NH], gl.float32, MMA)
    m_i = gl.full([W, NM], float("-inf"), gl.float32, MR)
    if COMPACT:
        l_i = gl.zeros([W, BN, 4], gl.float32, compact_layout(W, BN))
    else:
        l_i = gl.zeros([W, NH], gl.float32, COLS)

    klofs = _lane_offset(gl.zeros([W, BN, D], gl.int32, A_OP))
    vlofs = _lane_offset(gl.zeros([W, NA, BN], gl.int32, A_OP))
    if P == 4:  # 8-byte entries
        klofs = klofs * 2
        vlofs = vlofs * 2
    # PIPE >= 2: the prmt selector that puts byte (column % 4) of a code's word into byte 1 of its table address
    ksel = _k_bytes3(0x7604 + 16 * (kc3 % 4) + gl.zeros([W, BN, NB], gl.int32, KLOAD), A_OP)
    vsel = _v_arrange3(0x7604 + 16 * (vc3 % 4) + gl.zeros([W, BN, NB], gl.int32, VLOAD), A_OP)
    if BITS == 2:  # turbo2's token-pair keys: byte (k // 16) % 4 of K's key words (`_pair_keys_k`), byte (row // 16)
        # % 4 of V's (`_pair_rows`)
        kk = gl.arange(0, D, layout=gl.SliceLayout(0, gl.SliceLayout(1, A_OP)))
        ksel = 0x7604 + 16 * gl.expand_dims(gl.expand_dims((kk // 16) % 4, 0), 1) + gl.zeros([W, BN, D], gl.int32,
                                                                                             A_OP)
        vr = gl.arange(0, NA, layout=gl.SliceLayout(0, gl.SliceLayout(2, A_OP)))
        vsel = 0x7604 + 16 * gl.expand_dims(gl.expand_dims((vr // 16) % 4, 0), 2) + gl.zeros([W, NA, BN], gl.int32,
                                                                                             A_OP)
    if BITS == 3:  # turbo3: the funnel shift of each key's window instead (`lut3_shift`; K chunks of 16 keys, V of 8)
        ksel = _k_bytes3((6 * (kc3 % 16) + 25) % 32 + gl.zeros([W, BN, NB], gl.int32, KLOAD), A_OP)
        vsel = _v_arrange3((6 * (vc3 % 8) + 25) % 32 + gl.zeros([W, BN, NB], gl.int32, VLOAD), A_OP)

    if PIPE == 1:
        kst = smem_view(lut, gl.uint8, [lut.shape[0] // SROWS, W, BN, RB], FLAT3).index(256 // SROWS)
        vst = smem_view(lut, gl.uint8, [lut.shape[0] // SROWS, W, BN, RB], FLAT3).index(256 // SROWS + 1)
        _copy_kv(kst, vst, kbase, vbase, klo + kt3, vlo + vt3, khi, vhi, kc3, vc3, RB)
    if PIPE == 4:  # the words of tiles 0 .. S - 2 into their stages, one commit group per tile
        NC: gl.constexpr = NB // 4
        S: gl.constexpr = 65536 // (W * BN * NC * 4)
        ks = smem_view(stages.index(1), gl.int32, [S, W, BN, NC], KSTAGE)
        vs = smem_view(stages.index(2), gl.int32, [S, W, BN, NC], VSTAGE)
        for j in gl.static_range(S - 1):
            _copy_kv(ks.index(j), vs.index(j), kwb, vwb, kwlo + j * BN + kwt3, vwlo + j * BN + vwt3, kwhi, vwhi,
                     kwc3, vwc3, RB // 4)
        kn_n, vn_n = _load_norms(knb, vnb, lo_r + tr, hi_r)
        kn_m, vn_m = _load_norms(knb, vnb, lo_r + BN + tr, hi_r)
    if PIPE >= 6:  # the stages as [slots, W, BN, NC] words (the copies' byte order); the norms one tile ahead
        NC6: gl.constexpr = RB // 4
        SLOTS6: gl.constexpr = 65536 // SB6
        if KSTAGE is None:
            st6 = smem_view(stages, gl.int32, [3 * SLOTS6, W, BN, NC6], FLAT3)
        else:  # `bulk_stage_layout`: pairs of tokens in each other's rows, so every token index trades too
            st6 = smem_view(stages, gl.int32, [3 * SLOTS6, W, BN, NC6], KSTAGE)
            tr = _traded(tr, trade_bit(NC6))
        sv6 = st6
        if VSTAGE is not None:  # V's stages as the tensor copies swizzle them (`tma_stage_layout`)
            sv6 = smem_view(stages, gl.int32, [3 * SLOTS6, W, BN, NC6], VSTAGE)
        kn_n, vn_n = _load_norms(knb, vnb, lo_r + tr, hi_r)
    if (PIPE == 2 or PIPE == 3) and not EARLY:
        kw_n, vw_n, kn_n, vn_n, kw_m, vw_m, kn_m, vn_m = _tiles01(
            k_tab, v_tab, b, h, CHUNK_SHIFT, L, kwb, vwb, knb, vnb, kwlo, vwlo, kwt3, vwt3, kwhi, vwhi, kwc3, vwc3,
            lo_r, tr, hi_r, KWORD, VWORD, RB, BITS, BN, PIPE, CODEC_ROWS)

    for i in range(n_iter):
        t = i * BN
        tok = lo_r + t + tr
        valid = tok < hi_r
        bz = None
        if BIAS:  # in flight while the tile's K is decoded and scored
            bz = gl.load(bias_ptr + b.to(gl.int64) * s_bb + tok, mask=valid, other=0.0)
        if PIPE == 1:
            kn = gl.load(knb + tok, mask=valid, other=0.0).to(gl.float32)  # in flight during the wait
            vn = gl.load(vnb + tok, mask=valid, other=0.0).to(gl.float32)
            async_copy.wait_group(0)
            cta_barrier()  # tile i's bytes (every lane's copies) are in the stages
            kc = kst.load(KLOAD)
            vc = vst.load(VLOAD)
            cta_barrier()  # every lane has read the stages: tile i + 1 may overwrite them
            kc_hi, vc_hi, vx, vy = kc, vc, vc, vc
        elif PIPE >= 2:  # this tile's words were loaded earlier; load the tile PIPE - 1 ahead now
            if PIPE == 4:  # tile i's copies are done (S - 2 later ones may be in flight); the lane reads its own
                async_copy.wait_group(S - 2)
                kw_n = ks.index(i % S).load(KWORD)
                vw_n = vs.index(i % S).load(VWORD)
                # tile i + S - 1 into the stage tile i - 1 left (this lane read it last iteration)
                _copy_kv(ks.index((i + S - 1) % S), vs.index((i + S - 1) % S), kwb, vwb,
                         kwlo + t + (S - 1) * BN + kwt3, vwlo + t + (S - 1) * BN + vwt3, kwhi, vwhi, kwc3, vwc3,
                         RB // 4)
            if PIPE >= 6:  # tile i's copies have landed in its stages (the warp's mbarrier); each lane reads its K
                # words now, its V words after the scores (fewer live registers)
                s6 = i % S6
                _bulk_wait(bar6 + s6 * BSTEP, (i // S6) & 1)
                kw_n = st6.index(SLOTS6 + s6).load(KWORD)
                if PIPE >= 7:  # tile i + S6's K rows into the stage the warp has just read
                    _bulk_op(True, lane6, bar6 + s6 * BSTEP, dst6 + s6 * SB6, kbase, lo6 + t + S6 * BN, hi6, BN, RB,
                             True, BOX)
                kc = _pair_keys_k(kw_n, A_OP) if BITS == 2 else _spread(kw_n, KLOAD)
                kc_hi = kc
            else:
                kc, kc_hi, vc, vc_hi, vx, vy = _unpack_words(kw_n, vw_n, voff, KLOAD, VLOAD, BITS, VB, A_OP)
            kn, vn = kn_n, vn_n
            ahead: gl.constexpr = (PIPE - 1) * BN
            if PIPE == 4:  # the norms two tiles ahead
                kn_n, vn_n = kn_m, vn_m
                kn_m, vn_m = _load_norms(knb, vnb, tok + 2 * BN, hi_r)
            elif PIPE >= 6:  # the norms one tile ahead
                kn_n, vn_n = _load_norms(knb, vnb, tok + BN, hi_r)
            elif CODEC_ROWS:  # (`_tile_at`'s loads, written out: its sums of offsets change every build's sm_90 loop)
                nxt = _load_rows(k_tab, v_tab, b, h, CHUNK_SHIFT, L, kwlo + t + ahead, vwlo + t + ahead, kwt3, vwt3,
                                 kwhi, vwhi, kwc3, vwc3, lo_r + t + ahead, tr, hi_r, KWORD, VWORD, RB + 2, BITS)
            else:
                nxt = _load_tile(kwb, vwb, knb, vnb, kwlo + t + ahead + kwt3, vwlo + t + ahead + vwt3, kwhi, vwhi,
                                 kwc3, vwc3, tok + ahead, hi_r, RB // 4)
            if PIPE == 3:
                kw_n, vw_n, kn_n, vn_n = kw_m, vw_m, kn_m, vn_m
                kw_m, vw_m, kn_m, vn_m = nxt
            elif PIPE == 2:
                kw_n, vw_n, kn_n, vn_n = nxt
        else:
            kc, vc, kn, vn = _load_tile(kbase, vbase, knb, vnb, klo + t + kt3, vlo + t + vt3, khi, vhi, kc3, vc3,
                                        tok, hi_r, RB)
            kc_hi, vc_hi, vx, vy = kc, vc, vc, vc
        s = _tile_scores(kc, kc_hi, klofs, ksel, qk_lo, qk_hi, KASM, BITS, W, BN, NH, A_OP, MMA)
        if PIPE >= 6:
            vw_n = sv6.index(2 * SLOTS6 + s6).load(VWORD)
            if PIPE == 7:  # and its V rows
                _bulk_op(False, lane6, bar6 + s6 * BSTEP, dst6 + 65536 + s6 * SB6, vsrc, lo6 + t + S6 * BN, hi6, BN,
                         RB, True, BOX)
            _k0, _k1, vc, vc_hi, vx, vy = _unpack_words(kw_n, vw_n, voff, KLOAD, VLOAD, BITS, VB, A_OP)
        if PIPE == 1:  # the next tile's copies, issued once this tile's K bytes are dead (fewer live registers)
            _copy_kv(kst, vst, kbase, vbase, klo + t + BN + kt3, vlo + t + BN + vt3, khi, vhi, kc3, vc3, RB)
        a0, a1, m_i, l_i = _tile_values(s, valid, kn, vn, a0, a1, m_i, l_i, vc, vc_hi, vx, vy, vlofs, vsel, ASM, KASM,
                                        BITS, VB, A_OP, B_OP, COMPACT, MMA, bz)
        if PIPE == 6:  # tile i + S6 into the stages tile i leaves (its words are used above)
            _bulk_tile(lane6, bar6 + s6 * BSTEP, dst6 + s6 * SB6, dst6 + 65536 + s6 * SB6, kbase, vsrc,
                       lo6 + t + S6 * BN, hi6, BN, RB, BOX)
        if PIPE == 8:  # (K's went out at the tile's start) V's, its words used above
            _bulk_op(False, lane6, bar6 + s6 * BSTEP, dst6 + 65536 + s6 * SB6, vsrc, lo6 + t + S6 * BN, hi6, BN,
                     RB, False, BOX)
    if PIPE >= 6:  # no copy is in flight (the tiles past each split copied nothing): the barriers' memory is free
        _bulk_barriers("inval", lane6, bar6, S6, BSTEP)
    if clk_ptr is not None:
        _stamp(clk_ptr, 3, W)
    # partials: split W * pid + w, rows >= MQ never read (not stored). Thread (g, c) of the accumulators holds rows
    # mo = g + 8 k (k < WV) of both, i.e. dims 2 (g WV + k) + p for accumulator p (turbo2: row 16 m + 8 h + g of
    # accumulator p is code 2 h + p of byte 4 g + m, dim 4 (4 g + m) + 2 h + p, the same with k = 2 m + h): D/8
    # consecutive dims of each of its query rows, stored as one run (vector stores) after a register-only reorder
    # (ncu, B=8 T=4K: the scattered 4-byte stores were 29% of the warps' stall samples)
    if COMPACT:
        m_i = _dup(m_i, COLS)
        l_i = _dup(gl.sum(l_i, axis=1), COLS)
    acc = gl.join(a0, a1)  # [W, NA, NH, 2]
    acc = gl.reshape(gl.permute(acc, [0, 2, 1, 3]), [W, NH, WV, 8, 2])  # mo = 8 k + g
    acc = gl.reshape(gl.permute(acc, [0, 1, 3, 2, 4]), [W, NH, D])  # dim = 2 (g WV + k) + p
    if FUSED:
        ROWB: gl.constexpr = 128 if BITS == 3 else 256
        # 16 warps' accumulators fill the table: with the bulk copies the rest of the merge is staged in the K stages
        # (every copy landed and read)
        SEP: gl.constexpr = PIPE >= 6 and W > 8
        if SEP:
            rest = stages.index(1)
        else:
            rest = lut
        _finish_fused(lut, rest, acc, m_i, l_i, o_ptr, ml_ptr, cnt_ptr, adj_ptr, out_ptr, bh, b, h, pid,
                      gl.num_programs(0), H, MQ, gl.num_programs(1), D, W, NH, QR, ROWB, SINKS, HAD, clk_ptr, SEP)
    else:
        OL: gl.constexpr = acc.type.layout
        ow = gl.arange(0, W, layout=gl.SliceLayout(1, gl.SliceLayout(2, OL)))
        on = gl.arange(0, NH, layout=gl.SliceLayout(0, gl.SliceLayout(2, OL)))
        od = gl.arange(0, D, layout=gl.SliceLayout(0, gl.SliceLayout(1, OL)))
        orow = (gl.expand_dims(bh * num_splits + pid * W + ow, 1) * BLOCK_M + gl.expand_dims(on, 0)).to(gl.int64)
        gl.store(o_ptr + gl.expand_dims(orow, 2) * D + gl.expand_dims(gl.expand_dims(od, 0), 1), acc,
                 mask=gl.expand_dims(gl.expand_dims(on < MQ, 0), 2))
        base = bh * num_splits + pid * W + gl.arange(0, W, layout=gl.SliceLayout(1, COLS))
        no = gl.arange(0, NH, layout=gl.SliceLayout(0, COLS))
        mlp = ml_ptr + gl.expand_dims(base, 1) * (2 * BLOCK_M) + gl.expand_dims(no, 0)
        gl.store(mlp, m_i)
        gl.store(mlp + BLOCK_M, l_i)
    if clk_ptr is not None:
        _stamp(clk_ptr, 4, W)
        _stamp(clk_ptr, 5, W, True)


@functools.lru_cache(maxsize=32)  # asked at every launch
def lut_layouts(w: int, bn: int, nb: int, words: bool = False) -> tuple[gl.DistributedLinearLayout, ...]:
    """(KLOAD, VLOAD) of kernels_gluon.gluon_layouts with a leading warp dimension [W, BN, NB]; words: also
    (KWORD, VWORD), the same loads as int32 words [W, BN, NB/4] (each lane's 4 consecutive bytes one word)."""
    from .kernels_gluon import gluon_layouts
    k2, v2 = gluon_layouts(bn, nb, nb)
    warps = [[1 << i, 0, 0] for i in range(w.bit_length() - 1)]

    def lift(lay):
        return gl.DistributedLinearLayout(reg_bases=[[0, *x] for x in lay.reg_bases],
                                          lane_bases=[[0, *x] for x in lay.lane_bases], warp_bases=warps,
                                          block_bases=[], shape=[w, bn, nb])
    k3, v3 = lift(k2), lift(v2)
    if not words:
        return k3, v3

    def word(lay):
        assert lay.reg_bases[:2] == [[0, 0, 1], [0, 0, 2]], lay  # 4 consecutive bytes in a lane's registers
        def div(x):
            assert x[2] % 4 == 0 or x[2] == 0
            return [x[0], x[1], x[2] // 4]
        return gl.DistributedLinearLayout(reg_bases=[div(x) for x in lay.reg_bases[2:]],
                                          lane_bases=[div(x) for x in lay.lane_bases], warp_bases=lay.warp_bases,
                                          block_bases=[], shape=[w, bn, nb // 4])
    return k3, v3, word(k3), word(v3)


def lut_stage_layout(word: gl.DistributedLinearLayout) -> gl.SharedLinearLayout:
    """Shared layout of one stage [W, BN, NC] of a word tile in register layout `word` (`lut_layouts`) whose
    offsets follow the threads' registers: a lane's consecutive words (its vector) first, then the lanes, its
    other registers, the warps (a [S, W, BN, NC] buffer of stages takes it for its trailing dims). A warp's copy or
    read of one vector per lane is one contiguous run (no bank conflict), and each word is copied in and read back
    by the same lane (no barrier between)."""
    regs = [list(x) for x in word.reg_bases]
    vec = 0
    while vec < len(regs) and regs[vec] == [0, 0, 1 << vec]:
        vec += 1
    bases = regs[:vec] + [list(x) for x in word.lane_bases] + regs[vec:] + [list(x) for x in word.warp_bases]
    return gl.SharedLinearLayout(offset_bases=bases, alignment=16)


@functools.lru_cache(maxsize=16)  # asked at every lut_pipe 6 launch (`gluon.lut_stage_layouts`)
def bulk_stage_layout(w: int, bn: int, nc: int) -> gl.SharedLinearLayout:
    """Shared layout of one of lut_pipe 6's stages [W, BN, NC] of int32 words (a stack of them views the kernel's
    one buffer): the copies' byte order (row t of a warp's stage = token t of its tile, NC words), except that
    tokens whose bit k (`trade_bit`) is set trade rows in pairs: token j sits in row j ^ ((j >> k) & 1).

    Why: a V word read (`lut_layouts`' VWORD) gives a phase of lanes the same bytes of tokens t, t + 2, t + 4,
    t + 6 (bits 1 and 2 of the token from the lane). A 128-byte bank cycle holds 2 rows of 64 bytes (turbo4) or
    4 of 32 bytes (turbo2), so in the copies' order those tokens' bytes sit in the same banks: 4-way (turbo4) or
    2-way (turbo2) conflicts. With the trade the row's low bits (which pick the banks) become token bits that
    differ within the phase: turbo4 (k = 1) halves its V reads' wavefronts (2 rows per cycle cannot hold 4
    tokens apart), turbo2 (k = 2) reads V without conflict; K's reads (consecutive tokens per phase) keep
    their bytes' minimum (`shared_wavefronts` counts both). The kernel reads every token-indexed thing (norms,
    the valid mask) at the traded index too, so scores and values stay paired."""
    def bits_of(n):
        return n.bit_length() - 1
    k = trade_bit(nc)
    bases = [[0, 0, 1 << i] for i in range(bits_of(nc))]
    bases += [[0, (1 << i) + (i == k), 0] for i in range(bits_of(bn))]  # row 2^k holds token 2^k + 1
    bases += [[1 << i, 0, 0] for i in range(bits_of(w))]
    return gl.SharedLinearLayout(offset_bases=bases, alignment=16)


@functools.lru_cache(maxsize=16)  # asked at every lut_pipe 6 - 8 launch with the tensor maps
def tma_stage_layout(w: int, bn: int, nc: int) -> gl.SharedLinearLayout:
    """Shared layout of a V stage [W, BN, NC] (NC = 16 int32 words: 64-byte rows, turbo4 at head_dim 128) as the
    tensor-memory accelerator writes it with the 64-byte swizzle (CU_TENSOR_MAP_SWIZZLE_64B: byte address bits 4-5,
    the 16-byte chunk of a row, xor-ed with bits 7-8, the row's bits 1-2), over `bulk_stage_layout`'s traded rows.
    Why: with the trade alone a V read phase still asks two rows of one 128-byte bank cycle for the same 32-byte
    half (2x its bytes' wavefronts); the swizzle moves rows 2 apart to other chunks, so every phase reads at its
    bytes' minimum (`shared_wavefronts`: 32 instead of 64 wavefronts per warp and 64-token tile), K keeps the
    linear copies (its reads are at their minimum already)."""
    if nc != 16:
        raise ValueError(f"the 64-byte swizzle of the V stages takes rows of 16 words (64 bytes), got {nc}")
    bases = [list(x) for x in bulk_stage_layout(w, bn, nc).offset_bases]
    for bit in (1, 2):  # offset bit 4 + row bit: the row's own token (traded), its chunk xor-ed by the swizzle
        bases[4 + bit][2] ^= 4 << (bit - 1)
    return gl.SharedLinearLayout(offset_bases=bases, alignment=16)


def shared_wavefronts(word: gl.DistributedLinearLayout, offset_bases: list) -> int:
    """Shared-memory wavefronts of one warp reading a [1, BN, NC] word tile in register layout `word` (its
    first registers a lane's contiguous vector) from a buffer whose word offset bit i holds coordinate
    offset_bases[i] ([W, BN, NC]): the hardware splits a read of v-byte vectors into
    phases of 128 / v lanes, and a phase costs as many wavefronts as the most distinct words it asks of one of
    the 32 banks (lanes reading the same word share it)."""
    def xor(bases, n):
        out = [0] * len(bases[0]) if bases else []
        for i, base in enumerate(bases):
            if n >> i & 1:
                out = [a ^ b for a, b in zip(out, base)]
        return out
    rank = len(word.reg_bases[0])
    where = {}
    for off in range(1 << len(offset_bases)):
        c = xor(offset_bases, off)
        where[tuple(c)] = off
    regs = word.reg_bases
    vec = 0
    while vec < len(regs) and regs[vec] == [0] * (rank - 1) + [1 << vec]:
        vec += 1
    width = 4 << vec
    per_phase = max(1, 128 // width)
    total = 0
    for r in range(1 << (len(regs) - vec)):
        lead = xor(regs[vec:], r)
        offs = [where[tuple(a ^ b for a, b in zip(lead, xor(word.lane_bases, lane)))] for lane in range(32)]
        for p in range(0, 32, per_phase):
            banks: dict[int, set] = {}
            for off in offs[p:p + per_phase]:
                for k in range(1 << vec):
                    banks.setdefault((off + k) % 32, set()).add(off + k)
            total += max(len(x) for x in banks.values())
    return total
