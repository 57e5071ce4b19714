"""Inline PTX that turns packed turboB code bytes into fp16 centroids (used by kernels_fast.py).

Pure Python (no Triton import): the strings are built from the codebook, and `emulate` runs them on the CPU with
a small interpreter of the few PTX instructions they use, so the bit tricks are tested without a GPU
(tests/test_fastasm.py). Conventions of `tl.inline_asm_elementwise(..., pack=4)`: outputs first, each fp16 output
as two 32-bit registers (elements 0,1 then 2,3; lower half first), then the inputs, each 4 uint8 elements in one
register (element k in byte k).

Table operands: each decoder also takes two int32 inputs (with pack=4 each is 4 operands, all equal), the words of
`table_words`, used as prmt's register source; the rest of each table is immediate. The kernel makes them once per
program, in ordinary registers (as immediates or uniform values, ptxas re-materialized them before every prmt).

Element and part layout (kernels_fast.py): an element is a code byte (4 bits: 2 codes, 2 bits: 4 codes, lowest
bits first); output p holds code p of each byte. The 4-bit decoder needs the fp16 codebook to be symmetric
(c[15-i] == -c[i], checked; true for every Lloyd-Max codebook here).
"""

from __future__ import annotations

import functools
import struct

import torch

from ...core.codebook import lloyd_max


def fp16_bits(head_dim: int, bits: int) -> list[int]:
    """The codebook's fp16 centroids as 16-bit patterns (ascending centroids)."""
    c = torch.tensor(lloyd_max(head_dim, bits).centroids, dtype=torch.float32).half()
    return [int(x) & 0xFFFF for x in c.view(torch.int16).tolist()]


def _bytes32(vals: list[int]) -> int:
    return sum((v & 0xFF) << (8 * i) for i, v in enumerate(vals))


def symmetric(head_dim: int, bits: int) -> bool:
    """c[n-1-i] == -c[i] in fp16 (needed by the 4-bit decoder)."""
    u = fp16_bits(head_dim, bits)
    n = len(u)
    return all(u[n - 1 - i] == (u[i] ^ 0x8000) for i in range(n))


def _asm4(u: list[int]) -> str:
    """Byte elements (2 codes), pack=4: input $4 (element k in byte k); part 0 (low nibbles) in $0, $1, part 1
    (high nibbles) in $2, $3. Uses c[i] = -c[15 - i]: 8-entry magnitude tables, index flipped for negative codes
    (i < 8), sign bit set from the code's top bit through prmt's sign-replicate mode. The first words of the low-
    and high-byte tables come in registers ($5 and $9, see `table_words`), the second words are immediates."""
    pos = u[8:]  # magnitudes: c[8 + j] for j = 0..7 (positive); c[i] = -c[15 - i] for i < 8
    ml1 = _bytes32(pos[4:])
    mh1 = _bytes32([x >> 8 for x in pos[4:]])
    return f"""{{
.reg .b32 nb, fl, j, jh, l0, l1, h0, h1, y, m0, m1;
not.b32 nb, $4;
and.b32 nb, nb, 0x88888888;
shr.u32 fl, nb, 3;
sub.u32 fl, nb, fl;
xor.b32 j, $4, fl;
and.b32 j, j, 0x77777777;
shr.u32 jh, j, 16;
prmt.b32 l0, $5, {ml1:#x}, j;
prmt.b32 h0, $9, {mh1:#x}, j;
prmt.b32 l1, $5, {ml1:#x}, jh;
prmt.b32 h1, $9, {mh1:#x}, jh;
shl.b32 y, nb, 4;
prmt.b32 m0, y, nb, 0xD9C8;
prmt.b32 m1, y, nb, 0xFBEA;
and.b32 m0, m0, 0x80808080;
and.b32 m1, m1, 0x80808080;
or.b32 h0, h0, m0;
or.b32 h1, h1, m1;
prmt.b32 $0, l0, h0, 0x6240;
prmt.b32 $2, l0, h0, 0x7351;
prmt.b32 $1, l1, h1, 0x6240;
prmt.b32 $3, l1, h1, 0x7351;
}}"""


def _asm2(u: list[int]) -> str:
    """Byte elements (4 codes), pack=4: input $8; part p in $2p, $2p+1. Low-byte table in a register ($9, see
    `table_words`), high-byte table immediate."""
    thi = _bytes32([x >> 8 for x in u])
    lines = ["{", ".reg .b32 y, s, sh;"]
    for p in range(4):
        if p:
            lines.append(f"shr.u32 y, $8, {2 * p};")
            lines.append("and.b32 y, y, 0x03030303;")
        else:
            lines.append("and.b32 y, $8, 0x03030303;")
        lines += ["mul.lo.u32 s, y, 17;", "add.u32 s, s, 0x40404040;", f"prmt.b32 ${2 * p}, $9, {thi:#x}, s;",
                  "shr.u32 sh, s, 16;", f"prmt.b32 ${2 * p + 1}, $9, {thi:#x}, sh;"]
    lines.append("}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def table_words(head_dim: int, bits: int) -> tuple[int, int]:
    """The table words a decoder takes in registers, as int32: 4 bits: the first words of the low- and high-byte
    magnitude tables ($5, $9); 2 bits: the low-byte table ($9) and 0 (unused)."""
    u = fp16_bits(head_dim, bits)
    if bits == 4:
        w = (_bytes32(u[8:12]), _bytes32([x >> 8 for x in u[8:12]]))
    else:
        w = (_bytes32(u), 0)
    return tuple(x - (1 << 32) if x >= 1 << 31 else x for x in w)


def parts(head_dim: int, bits: int) -> int:
    """Codes per byte = output tensors of one decoder; part p of byte e is dimension parts * e + p."""
    return 8 // bits


@functools.lru_cache(maxsize=None)
def decode_asm(head_dim: int, bits: int) -> str | None:
    """The PTX for `bits`-bit codes of `head_dim`, or None where the fast kernel cannot decode them."""
    u = fp16_bits(head_dim, bits)
    if bits == 4:
        return _asm4(u) if symmetric(head_dim, bits) else None
    if bits == 2:
        return _asm2(u)
    return None  # 3-bit codes straddle bytes: turbo3 stays on the split kernel


# --- a CPU interpreter for the instructions above (tests) -------------------------------------------------------

def _prmt(a: int, b: int, c: int) -> int:
    src = (a & 0xFFFFFFFF) | ((b & 0xFFFFFFFF) << 32)
    out = 0
    for k in range(4):
        sel = (c >> (4 * k)) & 0xF
        byte = (src >> (8 * (sel & 7))) & 0xFF
        if sel & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * k)
    return out


def run_asm(asm: str, regs: dict[str, int], shared: dict[int, int] | None = None,
            smem_base: int = 0) -> dict[str, int]:
    """Execute the PTX subset used here on 32-bit values; regs maps '$0'.. and names to ints. shared: 32-bit words
    by byte address, read by ld.shared (the table decoder of kernels_lut), where `global_smem` is smem_base."""
    r = dict(regs)
    M = 0xFFFFFFFF

    def val(x: str) -> int:
        x = x.strip()
        if x in r:
            return r[x]
        if x == "global_smem":
            return smem_base
        return int(x, 0) & M

    def addr(x: str) -> int:  # [reg], [reg+imm]
        base, _, off = x.strip(" ,[]").partition("+")
        return (val(base) + (int(off, 0) if off else 0)) & M

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        if op == "ld.shared.v2.b32":  # {lo, hi}, [addr]: two consecutive words
            dst, addr_s = rest.split("}")
            lo, hi = (x.strip() for x in dst.strip("{ ").split(","))
            a = addr(addr_s)
            r[lo], r[hi] = shared[a] & M, shared[a + 4] & M
            continue
        args = [a.strip() for a in rest.split(",")]
        d = args[0]
        if op == "ld.shared.b32":
            r[d] = shared[addr(args[1])] & M
            continue
        s = [val(a) for a in args[1:]]
        if op in ("mov.b32", "mov.u32"):
            v = s[0]
        elif op == "not.b32":
            v = ~s[0]
        elif op == "and.b32":
            v = s[0] & s[1]
        elif op == "or.b32":
            v = s[0] | s[1]
        elif op == "lop3.b32":  # a, b, c, immLut: bit i of the result = immLut bit (a_i b_i c_i as 3 bits)
            a, b, c, lut = s
            v = 0
            for i in range(32):
                v |= ((lut >> (4 * ((a >> i) & 1) + 2 * ((b >> i) & 1) + ((c >> i) & 1))) & 1) << i
        elif op == "xor.b32":
            v = s[0] ^ s[1]
        elif op == "shr.u32":
            v = s[0] >> s[1]
        elif op == "shl.b32":
            v = s[0] << s[1]
        elif op == "shr.b32":  # logical right shift (.b32)
            v = s[0] >> min(s[1], 32)
        elif op == "shf.r.clamp.b32":  # funnel shift right of (s[1]:s[0]), amount clamped to 32
            v = ((s[1] << 32) | s[0]) >> min(s[2], 32)
        elif op == "shf.l.clamp.b32":  # funnel shift left of (s[1]:s[0]), the high word, amount clamped to 32
            v = (((s[1] << 32) | s[0]) << min(s[2], 32)) >> 32
        elif op == "sub.u32":
            v = s[0] - s[1]
        elif op == "add.u32":
            v = s[0] + s[1]
        elif op == "mul.lo.u32":
            v = s[0] * s[1]
        elif op == "prmt.b32":
            v = _prmt(*s)
        else:
            raise ValueError(f"unknown instruction {op}")
        r[d] = v & M
    return r


def _half(x: int) -> float:
    return struct.unpack("<e", struct.pack("<H", x & 0xFFFF))[0]


def emulate(head_dim: int, bits: int, inputs: list[bytes]) -> list[list[float]]:
    """Run the decoder on one pack of 4 code bytes (inputs: one 4-byte string, byte k = element k).
    Returns outputs[p][k] = value of code p of byte k."""
    asm = decode_asm(head_dim, bits)
    n_out = parts(head_dim, bits)
    regs = {f"${2 * n_out + i}": int.from_bytes(x, "little") for i, x in enumerate(inputs)}
    w0, w1 = (w & 0xFFFFFFFF for w in table_words(head_dim, bits))  # the kernel's two table operands
    regs.update({"$5": w0, "$9": w1} if bits == 4 else {"$9": w0})
    r = run_asm(asm, regs)
    outs = []
    for p in range(n_out):
        w = [r[f"${2 * p}"], r[f"${2 * p + 1}"]]
        outs.append([_half(w[0]), _half(w[0] >> 16), _half(w[1]), _half(w[1] >> 16)])
    return outs
