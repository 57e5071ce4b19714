"""The table kernel (kernels_lut): its decoder emulated on the CPU for every code byte and lane, its sm_90 build,
and (CUDA) its outputs against a float64 dense reference."""

from __future__ import annotations

import struct

import pytest
import torch

from compactkv.core.codec import Codec

triton = pytest.importorskip("triton", reason="triton is not installed")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


BULK_SPILLS = 17  # spill loads + stores of the bulk-copy finishing builds (lut_pipe 6 at 255 registers, sm_90, triton
# 3.6: turbo4 17, turbo2 10; none in their loops)


def _sass_decode():
    """scripts/sass_decode.py (sm_90 builds on any machine), or the test skipped where it cannot run."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    sass_decode = pytest.importorskip("sass_decode")
    if not Path(sass_decode.NVDISASM).exists():
        pytest.skip("Triton's bundled nvdisasm is missing")
    return sass_decode


def _half(x: int) -> float:
    return struct.unpack("<e", struct.pack("<H", x & 0xFFFF))[0]


@pytest.mark.parametrize("d,bits", [(64, 4), (128, 4)])
def test_table_decoder_emulated(d, bits):
    """Every code byte through the inline PTX (addresses, shared reads, half pairing) at every lane and a table base
    away from 0: part p of element k = centroid of code p of byte k, for the lane's own copy; the same with the
    bytes taken from words (lut_pipe >= 2) at random places."""
    from compactkv.attention.triton.fastasm import fp16_bits, run_asm
    from compactkv.attention.triton.gluon import lut_words
    from compactkv.attention.triton.kernels_lut import lut_asm
    parts = 8 // bits
    entry = 4 * parts // 2  # bytes per table entry: 4 (turbo4), 8 (turbo2)
    u = fp16_bits(d, bits)
    words = [w & 0xFFFFFFFF for w in lut_words(d, torch.device("cpu"), bits).tolist()]
    base = 1 << 16
    i0 = 2 * parts  # first input operand after the outputs
    gen = torch.Generator().manual_seed(0)
    for lane in (0, 1, 17, 31):
        # each lane's copy only: a read of another lane's column would find a wrong value
        shared = {base + e * 256 + entry * lane + 4 * i: words[e * (entry // 4) + i]
                  for e in range(256) for i in range(entry // 4)}
        for e0 in range(0, 256, 4):
            codes = [e0, (e0 + 1) % 256, (e0 + 2) % 256, (e0 + 3) % 256]
            codes = [int(x) for x in torch.randperm(256, generator=gen)[:4]] if e0 % 16 else codes
            regs = {f"${i0}": int.from_bytes(bytes(codes), "little"),
                    **{f"${i0 + 1 + i}": entry * lane for i in range(4)}}
            outs = [run_asm(lut_asm(bits=bits), regs, shared, smem_base=base)]
            # words (lut_pipe >= 2): byte k in place pk of word k among random bytes, selector 0x7604 + 16 pk
            wregs = {f"${i0 + 4 + i}": entry * lane for i in range(4)}
            for k, c in enumerate(codes):
                word = bytearray(torch.randint(0, 256, (4,), generator=gen).tolist())
                pk = int(torch.randint(0, 4, (1,), generator=gen))
                word[pk] = c
                wregs[f"${i0 + k}"], wregs[f"${i0 + 8 + k}"] = int.from_bytes(word, "little"), 0x7604 + 16 * pk
            outs.append(run_asm(lut_asm(words=True, bits=bits), wregs, shared, smem_base=base))
            for out in outs:
                for p in range(parts):
                    got = [out[f"${2 * p}"] & 0xFFFF, out[f"${2 * p}"] >> 16, out[f"${2 * p + 1}"] & 0xFFFF,
                           out[f"${2 * p + 1}"] >> 16]
                    want = [u[(c >> (bits * p)) & ((1 << bits) - 1)] for c in codes]
                    assert got == want, (lane, codes, p)
    assert _half(u[0]) < 0 < _half(u[-1])


@pytest.mark.parametrize("d", [64, 128])
def test_key_decoder_in_byte_order_emulated(d):
    """turbo4's K decoder (lut_asm_k) at every code byte, several lanes and a table base away from 0: each byte's
    entry (the centroids of its low and high code) as one register, $0 for element 0's byte and $1 for element 2's,
    with the bytes packed four to a register or taken from words at random places by their prmt selectors."""
    from compactkv.attention.triton.fastasm import fp16_bits, run_asm
    from compactkv.attention.triton.gluon import lut_words
    from compactkv.attention.triton.kernels_lut import lut_asm_k
    assert lut_asm_k(bits=3) is None and lut_asm_k(False, 2) is None  # (turbo3, turbo2: words only)
    u = fp16_bits(d, 4)
    words = [w & 0xFFFFFFFF for w in lut_words(d, torch.device("cpu"), 4).tolist()]
    base = 1 << 16
    gen = torch.Generator().manual_seed(1)
    for lane in (0, 3, 18, 31):
        shared = {base + e * 256 + 4 * lane: words[e] for e in range(256)}
        for e0 in range(256):
            pair = [e0, int(torch.randint(0, 256, (1,), generator=gen))]  # the bytes of elements 0 and 2
            el = [pair[0], pair[0], pair[1], pair[1]]  # elements 1 and 3 repeat them
            regs = {"$2": int.from_bytes(bytes(el), "little"), **{f"${3 + i}": 4 * lane for i in range(4)}}
            outs = [run_asm(lut_asm_k(bits=4), regs, shared, smem_base=base)]
            wregs = {f"${6 + i}": 4 * lane for i in range(4)}
            for i, c in enumerate(el):
                word = bytearray(torch.randint(0, 256, (4,), generator=gen).tolist())
                pk = int(torch.randint(0, 4, (1,), generator=gen))
                word[pk] = c
                wregs[f"${2 + i}"], wregs[f"${10 + i}"] = int.from_bytes(word, "little"), 0x7604 + 16 * pk
            outs.append(run_asm(lut_asm_k(words=True, bits=4), wregs, shared, smem_base=base))
            for out in outs:
                for r, c in enumerate(pair):
                    got = out[f"${r}"]
                    assert [got & 0xFFFF, got >> 16] == [u[c & 15], u[c >> 4]], (lane, pair, r)


@pytest.mark.parametrize("d", [64, 128])
def test_value_pair_keys_emulated(d):
    """turbo4 V (lut_pipe >= 2): real rows of two tokens (Codec.encode) taken as words, keyed by VKEY_ASM, then read
    by the K decoder (lut_asm_k) at each byte's selector and several lanes: one register per dim and token pair,
    (centroid of token 2 t's code, centroid of token 2 t + 1's code), even dims from the first key word, odd dims
    from the second."""
    from compactkv.attention.triton.fastasm import fp16_bits, run_asm
    from compactkv.attention.triton.gluon import lut_words
    from compactkv.attention.triton.kernels_lut import VKEY_ASM, lut_asm_k
    from compactkv.core.packing import unpack_bits
    codec = Codec("turbo4", d)
    u = fp16_bits(d, 4)
    table = [w & 0xFFFFFFFF for w in lut_words(d, torch.device("cpu"), 4).tolist()]
    rows = codec.encode(torch.randn(6, d, generator=torch.Generator().manual_seed(5)))[:, 2:]  # [6, D/2] bytes
    base = 1 << 15
    asm = lut_asm_k(words=True, bits=4)
    for t0 in range(0, 6, 2):
        codes = [unpack_bits(rows[t0 + i], 4, d).tolist() for i in range(2)]
        for wi in range(d // 8):
            w0, w1 = (int.from_bytes(bytes(rows[t0 + i, 4 * wi:4 * wi + 4].tolist()), "little") for i in range(2))
            keys = run_asm(VKEY_ASM, {"$2": w0, "$3": w1})
            for lane in (0, 7, 30):
                shared = {base + e * 256 + 4 * lane: table[e] for e in range(256)}
                for part, key in ((0, keys["$0"]), (1, keys["$1"])):
                    for k0 in (0, 2):  # bytes k0 and k0 + 1 of the key word as elements 0 and 2
                        regs = {**{f"${2 + i}": key for i in range(4)}, **{f"${6 + i}": 4 * lane for i in range(4)},
                                **{f"${10 + i}": 0x7604 + 16 * (k0 + i // 2) for i in range(4)}}
                        out = run_asm(asm, regs, shared, smem_base=base)
                        for r in range(2):
                            dim = 2 * (4 * wi + k0 + r) + part
                            got = out[f"${r}"]
                            assert [got & 0xFFFF, got >> 16] == [u[codes[0][dim]], u[codes[1][dim]]], (t0, dim, lane)


def test_turbo2_pair_keys_emulated():
    """turbo2 (lut_pipe >= 2): real rows (Codec.encode) taken as words, K keyed over tokens g and g + 8 (VKEY_ASM), V
    over tokens 2 t and 2 t + 1 (V2KEY_ASM), each key byte read by `lut_asm_k(bits=2)` (one ld.shared.v2 of its
    8-byte entry) at its selector and several lanes: K's $0 = (centroids of dims 4 b + 2 nu, + 1 of token g), $1
    the same of token g + 8 (byte b, nibble nu); V's $0 = (dim 4 b + p of token 2 t, of 2 t + 1), $1 the same of dim
    4 b + p + 2 (p = 0 from the first key word, 1 from the second)."""
    from compactkv.attention.triton.fastasm import fp16_bits, run_asm
    from compactkv.attention.triton.gluon import lut_words
    from compactkv.attention.triton.kernels_lut import V2KEY_ASM, VKEY_ASM, lut_asm_k
    from compactkv.core.packing import unpack_bits
    d = 128
    codec = Codec("turbo2", d)
    u = fp16_bits(d, 2)
    table = [w & 0xFFFFFFFF for w in lut_words(d, torch.device("cpu"), 2).tolist()]
    rows = codec.encode(torch.randn(4, d, generator=torch.Generator().manual_seed(6)))[:, 2:]  # [4, 32] bytes
    assert rows.shape == (4, d // 4)
    codes = [unpack_bits(r, 2, d).tolist() for r in rows]
    base = 1 << 15
    asm = lut_asm_k(words=True, bits=2)
    c = lambda x: [x & 0xFFFF, x >> 16]  # noqa: E731
    for lane in (0, 9, 31):
        shared = {base + e * 256 + 8 * lane + 4 * i: table[2 * e + i] for e in range(256) for i in range(2)}
        for t0, t1 in ((0, 1), (2, 3), (3, 0)):
            for wi in range(d // 16):
                w0, w1 = (int.from_bytes(bytes(rows[t, 4 * wi:4 * wi + 4].tolist()), "little") for t in (t0, t1))
                kk, vk = run_asm(VKEY_ASM, {"$2": w0, "$3": w1}), run_asm(V2KEY_ASM, {"$2": w0, "$3": w1})
                for y in range(4):
                    b = 4 * wi + y
                    regs = {**{f"${6 + i}": 8 * lane for i in range(4)}, **{f"${10 + i}": 0x7604 + 16 * y
                                                                            for i in range(4)}}
                    for nu in range(2):  # K: tokens t0 (as g) and t1 (as g + 8)
                        out = run_asm(asm, {**regs, **{f"${2 + i}": kk[f"${nu}"] for i in range(4)}}, shared,
                                      smem_base=base)
                        dm = 4 * b + 2 * nu
                        assert c(out["$0"]) == [u[codes[t0][dm]], u[codes[t0][dm + 1]]], (lane, t0, dm)
                        assert c(out["$1"]) == [u[codes[t1][dm]], u[codes[t1][dm + 1]]], (lane, t1, dm)
                    for p in range(2):  # V: tokens t0 (as 2 t) and t1 (as 2 t + 1)
                        out = run_asm(asm, {**regs, **{f"${2 + i}": vk[f"${p}"] for i in range(4)}}, shared,
                                      smem_base=base)
                        for r, dm in ((0, 4 * b + p), (1, 4 * b + p + 2)):
                            assert c(out[f"${r}"]) == [u[codes[t0][dm]], u[codes[t1][dm]]], (lane, t0, dm)


def test_turbo3_table_decoder_emulated():
    """turbo3: the keys of real rows (Codec.encode's 48-byte rows at head_dim 128) taken as the kernel takes them
    (K lane chunk c: words 3 c .. 3 c + 2 and a 0; V lane chunk g: the two words from floor(3 g / 2), shifted down
    by 16 (g % 2) bits, two tokens' keyed by V3KEY_ASM; key k's window (w_i+1 : w_i), i = floor((6 k - 7) / 32), at
    shift lut3_shift(k)) through the K decoder in key order (lut_asm_k: elements 0 and 2's keys, one register each)
    at several lanes and a table base away from 0: a K key's entry is (c[dim 2 j], c[dim 2 j + 1]) of its token, a V
    key's (c[token 2 t], c[token 2 t + 1]) of its dim."""
    from compactkv.attention.triton.fastasm import fp16_bits, run_asm
    from compactkv.attention.triton.gluon import lut_words
    from compactkv.attention.triton.kernels_lut import V3KEY_ASM, lut3_shift, lut_asm, lut_asm_k
    from compactkv.core.packing import unpack_bits
    assert lut_asm(True, 3) is None and lut_asm_k(False, 3) is None  # (turbo3: key windows of words only)
    codec = Codec("turbo3", 128)
    u = fp16_bits(128, 3)
    table = [w & 0xFFFFFFFF for w in lut_words(128, torch.device("cpu"), 3).tolist()]
    assert len(table) == 64 and all(table[e] == u[e & 7] | (u[e >> 3] << 16) for e in range(64))
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(3))
    rows = codec.encode(x)[:, 2:]  # [4, 48] code bytes
    assert rows.shape == (4, 48)
    base = 1 << 15
    kasm = lut_asm_k(words=True, bits=3)
    words, codes = [], []
    for row in rows:
        words.append([int.from_bytes(bytes(row[4 * i:4 * i + 4].tolist()), "little") for i in range(12)] + [0])
        bits384 = int.from_bytes(bytes(row.tolist()), "little")
        codes.append([(bits384 >> (3 * i)) & 7 for i in range(128)])  # code i at row bits [3 i, 3 i + 3)
        assert codes[-1] == unpack_bits(row, 3, 128).tolist()

    def windows(lo, hi):  # the 8 keys of 48 bits (hi: its low 16 bits)
        w = [lo, hi]
        return [((w[max(i, 0)], w[min(i + 1, 1)]), lut3_shift(k)) for k in range(8) for i in [(6 * k - 7) // 32]]

    cases = []  # (window and shift, want: the register's two halves)
    for t, w in enumerate(words):  # K: 16 keys per lane chunk
        for c in range(4):
            ww = w[3 * c:3 * c + 3] + [0]
            for k in range(16):
                i, j = (6 * k - 7) // 32, 16 * c + k
                want = [u[codes[t][2 * j]], u[codes[t][2 * j + 1]]]
                cases.append((((ww[max(i, 0)], ww[i + 1]), lut3_shift(k)), want))
    for ta, tb in ((0, 1), (2, 3), (3, 0)):  # V: tokens ta (as 2 t) and tb (as 2 t + 1), 8 keys per lane chunk
        for g in range(8):
            norm = []
            for t in (ta, tb):
                wa, wb, off = words[t][3 * g // 2], words[t][3 * g // 2 + 1], 16 * (g % 2)
                norm += [(((wb << 32) | wa) >> off) & 0xFFFFFFFF, wb >> off]
            keys = run_asm(V3KEY_ASM, {f"${4 + i}": v for i, v in enumerate(norm)})
            for p, (lo, hi) in enumerate(((keys["$0"], keys["$1"]), (keys["$2"], keys["$3"]))):
                for k, win in enumerate(windows(lo, hi)):
                    dim = 16 * g + 2 * k + p
                    cases.append((win, [u[codes[ta][dim]], u[codes[tb][dim]]]))
    for lane in (0, 5, 31):
        shared = {base + e * 128 + 4 * lane: table[e] for e in range(64)}
        for n in range(0, len(cases), 2):  # two keys as elements 0 and 2 (1 and 3 repeating them)
            regs = {}
            for e, ((lo, hi), sh) in enumerate([cases[n][0]] * 2 + [cases[n + 1][0]] * 2):
                regs.update({f"${2 + e}": lo, f"${6 + e}": hi, f"${10 + e}": 4 * lane, f"${14 + e}": sh})
            out = run_asm(kasm, regs, shared, smem_base=base)
            for r in range(2):
                got = out[f"${r}"]
                assert [got & 0xFFFF, got >> 16] == cases[n + r][1], (lane, n + r)


def test_lut_unsupported_reasons():
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import lut_unsupported
    t4, t2 = packed_kind(Codec("turbo4", 128)), packed_kind(Codec("turbo2", 128))
    assert lut_unsupported(t4, t4) is None and lut_unsupported(t2, t2) is None
    assert "turbo4" in lut_unsupported(t4, t2)
    t3 = packed_kind(Codec("turbo3", 128))
    assert lut_unsupported(t3, t3) is None and "same kind" in lut_unsupported(t3, t4)
    t3_64 = packed_kind(Codec("turbo3", 64))
    assert "128 for turbo3" in lut_unsupported(t3_64, t3_64)
    t4_256 = packed_kind(Codec("turbo4", 256))
    assert "head_dim" in lut_unsupported(t4_256, t4_256)
    t2_64 = packed_kind(Codec("turbo2", 64))
    assert "128 for turbo2" in lut_unsupported(t2_64, t2_64)


@pytest.mark.parametrize("kind,d,warps,pipe,maxnreg", [
    ("turbo4", 64, 4, 0, 128), ("turbo4", 64, 8, 0, 128), ("turbo4", 128, 4, 0, 128), ("turbo4", 128, 8, 0, 128),
    ("turbo4", 128, 16, 0, 128), ("turbo4", 128, 16, 1, 128), ("turbo4", 64, 4, 2, 168), ("turbo4", 128, 4, 2, 168),
    ("turbo4", 128, 8, 2, 168), ("turbo4", 128, 8, 3, 200), ("turbo4", 128, 8, 3, 232), ("turbo4", 64, 8, 3, 232),
    ("turbo2", 128, 8, 3, 232), ("turbo2", 128, 4, 3, 200)])
@pytest.mark.parametrize("qmap,fused", [(False, False), (True, False), (True, True)])
def test_table_kernel_compiles_for_sm90(kind, d, warps, pipe, maxnreg, qmap, fused):
    """sm_90 build: no spill traffic in the loop, the table is the only shared buffer (the decoders address it from
    its start), one shared read per code byte in the loop, per code byte one prmt for its address and one per pair
    of parts (turbo4: 2 for V at pipe < 2, else 1: its K is decoded in byte order, its V at pipe >= 2 by token-pair
    keys, a shift and a lop3 per key word; turbo2 none: its K and V are keyed by token pairs, one 8-byte entry per
    key), and no other integer decoder."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import lut_smem
    if fused and (warps > 8 or d != 128):
        pytest.skip("attend_planes takes head_dim 128 and 4 or 8 warps")
    s = sass_decode.summary(kind, lut=True, d=d, warps=warps, pipe=pipe, maxnreg=maxnreg, qmap=qmap, fused=fused)
    ops = s["ops"]
    # (the finishing epilogue's live pointers cost a few spills in the loop at a 128-register cap, as do the stage
    # reads of pipe 1 at 16 warps since K is decoded in byte order, session 20: 4)
    spills = (2 if pipe >= 2 else 4 if pipe == 1 else 0) + (6 if fused and maxnreg <= 128 else 0)
    assert sass_decode.within_budget(ops["LDL"] + ops["STL"], spills)
    assert s["shared"] == lut_smem(warps, d, pipe, fused=fused) == 256 * 256 + (pipe == 1) * warps * 32 * d + 4 * fused
    if fused:  # the table still starts shared memory: the compiler's 4 bytes (the counter's old value) follow it
        assert "[global_smem+" + str(s["shared"] - 4) + "]" in s["ptx"]
    bits = int(kind[-1])
    per_lane = 32 * (d * bits // 8) // 32  # K (and V) code bytes of a 32-token tile per lane
    reads = 2 * per_lane  # table reads
    # plus (pipe 1) the tile's 128 bytes per lane read back from the stages
    if pipe == 1:
        assert reads + 12 <= ops["LDS"] <= reads + 16
    else:
        assert ops["LDS"] == reads
    assert ops["HMMA"] > 0
    assert ops["LDGSTS"] > 0 if pipe == 1 else ops["LDGSTS"] == 0
    # the address, then one per pair of parts (per 2 bytes: 2 per part), turbo4's K none; a few more (27-28 at
    # pipe >= 2, session 20) and with pipe < 2 up to one per K byte (its uint8 codes repacked two bytes a register)
    extra = 32 + (per_lane if pipe < 2 else 0)
    pairing = 1 if bits == 4 else 0
    assert ops["PRMT"] <= 2 * per_lane + pairing * per_lane + extra
    # no bit-twiddling decoder; turbo4 V at pipe >= 2 keys its token pairs (VKEY_ASM), turbo2 its K and V
    # (VKEY_ASM, V2KEY_ASM): per pair of words one shift and one lop3 for each of the two key words
    pairs = (per_lane // 8) * (1 if bits == 4 else 2) if pipe >= 2 else 0
    # (ptxas makes some shifts IMAD.SHL; the compact softmax's exchanges add a few lop3 / shifts: 12, not 8, with
    # triton 3.8's build of the 168-register finishing kernel)
    assert ops["LOP3"] <= 12 + 2 * pairs and ops["SHF"] <= 12 + 2 * pairs


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("d,warps,pipe,maxnreg,bn", [(64, 4, 0, 128, 32), (64, 8, 0, 128, 32), (128, 4, 0, 128, 32),
                                                     (128, 8, 0, 128, 32), (128, 16, 0, 128, 32), (128, 16, 1, 128, 32),
                                                     (64, 4, 2, 168, 32), (128, 4, 2, 168, 32), (128, 8, 2, 128, 32),
                                                     (128, 8, 0, 80, 32), (128, 8, 2, 128, 16), (64, 16, 2, 128, 16),
                                                     (128, 8, 2, 168, 32), (64, 8, 2, 168, 32), (128, 8, 3, 200, 32),
                                                     (64, 8, 3, 200, 32), (128, 4, 3, 200, 32), (128, 8, 2, 255, 64),
                                                     (128, 8, 3, 232, 32), (64, 8, 3, 232, 32), (128, 8, 4, 255, 32),
                                                     (64, 4, 4, 200, 32), (128, 8, 6, 248, 64), (128, 4, 6, 248, 32)])
@pytest.mark.parametrize("g", [1, 4, 8])
def test_table_kernel_vs_float64(d, warps, pipe, maxnreg, bn, g):
    _check_table("turbo4", d, warps, pipe, maxnreg, bn, g)


def _check_table(kind, d, warps, pipe, maxnreg, bn, g):
    from test_gluon_decode import TOL, _check  # tests/ is on sys.path (pytest prepend import mode)
    kw = dict(lut=True, lut_warps=warps, lut_pipe=pipe, lut_maxnreg=maxnreg, block_n=bn)
    # ragged rows: not multiples of the tile, shorter than a tile, empty warps' splits (num_splits > tiles)
    assert _check(kind, kind, d, g, [777, 130, 3, 64], **kw) < TOL
    assert _check(kind, kind, d, g, [3001, 100, 3, 1], num_splits=warps, **kw) < TOL
    assert _check(kind, kind, d, g, [200, 5], num_splits=8 * warps, **kw) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind,warps,pipe,maxnreg", [
    ("turbo2", 8, 3, 232), ("turbo2", 4, 3, 200), ("turbo2", 8, 2, 168), ("turbo2", 8, 2, 128), ("turbo2", 16, 2, 128),
    ("turbo3", 8, 3, 232), ("turbo3", 4, 3, 200), ("turbo3", 8, 2, 168), ("turbo3", 8, 2, 128), ("turbo3", 16, 2, 128),
    ("turbo2", 8, 4, 255)])
@pytest.mark.parametrize("g", [1, 4, 8])
def test_turbo2_turbo3_table_kernel_vs_float64(kind, warps, pipe, maxnreg, g):
    """turbo2 (8-byte table entries, K and V keyed by token pairs) and turbo3 (6-bit keys of two codes, 48-byte rows
    read as words) K and V at head_dim 128, both the default there."""
    _check_table(kind, 128, warps, pipe, maxnreg, 32, g)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
@pytest.mark.parametrize("qdtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("g", [1, 4, 8])
def test_table_kernel_query_map_vs_float64(kind, qdtype, g):
    """The query map in the kernel's prologue (QMAP: the query rows in their dtype, w passed, no map_query launch),
    shared and per-head maps, ragged rows and empty splits."""
    from test_gluon_decode import TOL, _check
    kw = dict(lut=True, qmap=qdtype)
    assert _check(kind, kind, 128, g, [777, 130, 3, 64], **kw) < TOL
    assert _check(kind, kind, 128, g, [3001, 100, 3, 1], num_splits=16, per_head=True, **kw) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("d,warps,pipe,maxnreg", [(64, 8, 3, 232), (128, 4, 0, 128), (64, 16, 0, 128),
                                                  (128, 16, 1, 128), (128, 4, 2, 168)])
@pytest.mark.parametrize("g", [1, 4, 8])
def test_table_kernel_query_map_configurations(d, warps, pipe, maxnreg, g):
    """The prologue map at other warp counts (rows x column groups per lane change with them) and head_dim 64."""
    from test_gluon_decode import TOL, _check
    kw = dict(lut=True, lut_warps=warps, lut_pipe=pipe, lut_maxnreg=maxnreg, qmap=torch.bfloat16)
    assert _check("turbo4", "turbo4", d, g, [777, 130, 3, 64], **kw) < TOL


def _fused_case(kind, g, lengths, hkv, qdtype, d):
    """Random planes (test_gluon_decode._planar_case), query rows in qdtype, the query map with the softmax scale
    folded in, the V inverse map, zeroed counters and the lengths on CUDA."""
    from test_gluon_decode import _planar_case
    from compactkv.attention.triton.decode import LOG2E, codec_maps
    dev = "cuda"
    kc, vc, rk, rv, (kcodes, knorms), (vcodes, vnorms) = _planar_case(kind, kind, d, lengths, hkv, dev)
    q = torch.randn(len(lengths), hkv, g, d, device=dev).to(qdtype)
    fwd, _ = codec_maps(kc, dev)
    _, adj = codec_maps(vc, dev)
    counters = torch.zeros(len(lengths) * hkv, dtype=torch.int32, device=dev)
    lens = torch.tensor(lengths, dtype=torch.int32, device=dev)
    return kc, vc, rk, rv, (kcodes, knorms, vcodes, vnorms), q, fwd * (d ** -0.5 * LOG2E), adj, counters, lens


def _check_fused(kind, g, lengths, hkv=2, num_splits=None, qdtype=torch.bfloat16, out_dtype=torch.float32, d=128,
                 **kw):
    """attend_planes (one launch: query map, splits merged per program, the last program of each group finishing)
    vs float64, output poisoned with NaN; the counters are zero afterwards and a second launch gives the same
    bytes."""
    from test_gluon_decode import _rel
    from compactkv.attention.reference import packed_dense_float64
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import attend_planes
    dev = "cuda"
    b, t = len(lengths), max(lengths)
    kc, vc, rk, rv, (kcodes, knorms, vcodes, vnorms), q, w, adj, counters, lens = _fused_case(kind, g, lengths, hkv,
                                                                                             qdtype, d)
    outs = []
    for _ in range(2):
        out = torch.full((b, 1, hkv * g, d), float("nan"), dtype=out_dtype, device=dev)
        attend_planes(q, w, adj, kcodes, knorms, vcodes, vnorms, lens, packed_kind(kc), packed_kind(vc), max_len=t,
                      counters=counters, out=out, num_splits=num_splits, **kw)
        assert int(counters.abs().sum()) == 0
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    ref = packed_dense_float64(kc, vc, rk, rv, q.float(), d ** -0.5, lengths, 1)
    return _rel(outs[0].reshape(b, hkv, g, d), ref)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
@pytest.mark.parametrize("g", [1, 4, 8])
@pytest.mark.parametrize("had", [True, False])
def test_fused_table_kernel_vs_float64(kind, g, had):
    """The whole step in one launch: ragged rows, a row shorter than a tile, programs whose warps are all empty,
    one program per group (num_splits = warps) and many (16 programs), more groups than a program's warps; the
    maps as Hadamard factors (the default for these rotated maps) and dense."""
    from test_gluon_decode import TOL
    assert _check_fused(kind, g, [777, 130, 3, 64], lut_hadamard=had) < TOL
    assert _check_fused(kind, g, [3001, 100, 3, 1], num_splits=8, lut_hadamard=had) < TOL
    assert _check_fused(kind, g, [5000, 2], num_splits=128, lut_hadamard=had) < TOL
    assert _check_fused(kind, g, [900, 33, 7], hkv=8, lut_hadamard=had) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
@pytest.mark.parametrize("g", [1, 3, 4])
def test_fused_compact_softmax_vs_float64(kind, g):
    """The softmax over query rows 0-3 only (`lut_compact`, the default at G * Tq <= 4) and over all 8 both against
    float64: ragged rows, a row shorter than a tile, many programs, 8 KV heads. With more than 4 query rows the
    compact softmax is refused with a message, and the default runs the full one."""
    from test_gluon_decode import TOL
    for compact in (True, False):
        assert _check_fused(kind, g, [777, 130, 3, 64], lut_compact=compact) < TOL
        assert _check_fused(kind, g, [5000, 2], num_splits=128, lut_compact=compact) < TOL
        assert _check_fused(kind, g, [900, 33, 7], hkv=8, lut_compact=compact) < TOL
    with pytest.raises(ValueError, match="at most 4 query rows per KV head, got 8"):
        _check_fused(kind, 8, [100], lut_compact=True)
    with pytest.raises(ValueError, match="lut_compact 'yes': takes True, False or None"):
        _check_fused(kind, 4, [100], lut_compact="yes")



@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("g", [1, 4, 8])
def test_fused_tma_value_copies_vs_float64(g):
    """turbo4's V tiles through a tensor map with the 64-byte swizzle (`lut_tma`: asked for here on its default
    lut_pipe 8; the default on 6 / 7) and through the linear bulk copies, both against float64: ragged rows, rows
    shorter than a tile and not a multiple of it (the last box reaches past the plane: zero-filled, masked), warps
    with nothing to copy, many programs, 8 KV heads (the split-partials build takes the map by default on lut_pipe
    6: `test_table_kernel_vs_float64`'s lut_pipe 6 cases). Asked for where it cannot run: a ValueError before any
    launch."""
    from test_gluon_decode import TOL
    from compactkv.attention.triton import tma as maps
    made = len(maps._MAPS)
    for tma in (True, False):
        assert _check_fused("turbo4", g, [777, 130, 3, 64], lut_tma=tma) < TOL
        assert len(maps._MAPS) > made  # (the maps were made: the launches used them)
        assert _check_fused("turbo4", g, [5000, 2], num_splits=128, lut_tma=tma) < TOL
        assert _check_fused("turbo4", g, [900, 33, 7], hkv=8, lut_tma=tma) < TOL
    with pytest.raises(ValueError, match="lut_tma=True: the tensor copies take planes of 64-byte rows"):
        _check_fused("turbo2", g, [100], lut_tma=True)
    with pytest.raises(ValueError, match="lut_tma=True: the tensor copies take planes of 64-byte rows"):
        _check_fused("turbo4", g, [100], lut_tma=True, lut_pipe=2)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
@pytest.mark.parametrize("early", [True, False])
def test_fused_early_loads_either_way_vs_float64(kind, early):
    """The first tiles' loads before the prologue or after it (`lut_early`, each kind the way it does not by
    default too): ragged rows, a row shorter than a tile, warps with nothing to load, many programs; against
    float64. Asked for with the dense maps: a ValueError that says why."""
    from test_gluon_decode import TOL
    from compactkv.attention.triton.gluon import lut_fused_build
    # (turbo4's default copies its tiles in bulk, lut_pipe 6, which has no early loads: its register build here)
    pipe, bn = lut_fused_build(int(kind[-1]), bulk=False)
    kw = dict(lut_early=early, lut_pipe=pipe, lut_block_n=bn)
    assert _check_fused(kind, 4, [777, 130, 3, 64], **kw) < TOL
    assert _check_fused(kind, 4, [5000, 2], num_splits=128, **kw) < TOL
    if early:
        with pytest.raises(ValueError, match="dense query map"):
            _check_fused(kind, 4, [100], lut_hadamard=False, **kw)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo4", "turbo2"])
@pytest.mark.parametrize("pipe", [6, 7, 8])
def test_fused_bulk_copies_early_vs_float64(kind, pipe):
    """The bulk copies' mbarriers and first stages set up before the prologue (`lut_early=True` with lut_pipe 6 - 8:
    turbo4's mbarriers then sit past the query map's staging, its table fill leaving them alone): ragged rows, a
    row shorter than a tile, warps with nothing to copy, one and many programs a group, GQA 4 and 8; against
    float64."""
    from test_gluon_decode import TOL
    kw = dict(lut_early=True, lut_pipe=pipe, lut_block_n=64)
    assert _check_fused(kind, 4, [777, 130, 3, 64], **kw) < TOL
    assert _check_fused(kind, 8, [3001, 100, 3, 1], num_splits=8, **kw) < TOL
    assert _check_fused(kind, 4, [5000, 2], num_splits=128, **kw) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo4", "turbo2"])
@pytest.mark.parametrize("pipe", [6, 7, 8])
def test_fused_sixteen_warps_vs_float64(kind, pipe):
    """16 warps of 32-token tiles at 128 registers through the bulk copies (the merge staged in the table's and the
    K stages' memory): ragged rows, a row shorter than a tile, warps with nothing to copy, one and many programs a
    group, GQA 1 / 4 / 8, the maps dense and as Hadamard factors, fp16 sinks and the key mean; against float64."""
    from test_gluon_decode import TOL
    kw = dict(lut_warps=16, lut_pipe=pipe, lut_block_n=32, lut_maxnreg=128)
    assert _check_fused(kind, 4, [777, 130, 3, 64], **kw) < TOL
    assert _check_fused(kind, 8, [3001, 100, 3, 1], num_splits=16, **kw) < TOL
    assert _check_fused(kind, 1, [5000, 2], num_splits=256, lut_hadamard=False, **kw) < TOL
    assert _check_fused_sinks(kind, 4, [777, 130, 3, 64], 4, True, **kw) < TOL
    assert _check_fused_sinks(kind, 8, [5000, 2], 3, False, num_splits=256, **kw) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo4", "turbo2"])
@pytest.mark.parametrize("g", [4, 8])
def test_fused_hadamard_maps_per_head_match_the_dense_ones(kind, g):
    """A per-head query map (keys stored divided by a per-channel scale s: [H, D, D], i.e. the query q / s in the
    original space) and the V inverse map, as Hadamard factors and dense: each against float64 attention of q / s,
    outputs poisoned with NaN."""
    from test_gluon_decode import TOL, _rel
    from compactkv.attention.reference import packed_dense_float64
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import attend_planes
    lengths, hkv, d = [2000, 77, 5], 8, 128
    kc, vc, rk, rv, planes, q, w, adj, counters, lens = _fused_case(kind, g, lengths, hkv, torch.bfloat16, d)
    scale = torch.rand(hkv, d, device=w.device) + 0.5
    w = w / scale[:, :, None]
    ref = packed_dense_float64(kc, vc, rk, rv, q.float() / scale[None, :, None, :], d ** -0.5, lengths, 1)
    for had in (True, False):
        out = torch.full((len(lengths), 1, hkv * g, d), float("nan"), device=q.device)
        attend_planes(q, w, adj, *planes, lens, packed_kind(kc), packed_kind(vc), max_len=max(lengths),
                      counters=counters, out=out, lut_hadamard=had)
        assert _rel(out.reshape(len(lengths), hkv, g, d), ref) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("qdtype,out_dtype,tol", [(torch.float16, torch.float16, 4e-3), (torch.bfloat16,
                                                  torch.bfloat16, 6e-3), (torch.float32, torch.float32, 3e-3)])
def test_fused_table_kernel_dtypes(qdtype, out_dtype, tol):
    assert _check_fused("turbo4", 4, [2000, 65, 1], qdtype=qdtype, out_dtype=out_dtype) < tol


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("warps,pipe,maxnreg,bn", [(4, 3, 200, 32), (8, 3, 232, 32), (8, 2, 168, 32), (8, 0, 128, 32),
                                                  (8, 3, 255, 32), (4, 2, 255, 64), (8, 2, 255, 16), (8, 6, 248, 64),
                                                  (8, 6, 248, 32), (8, 7, 255, 64), (8, 7, 255, 32),
                                                  (8, 8, 255, 64)])
def test_fused_table_kernel_configurations(warps, pipe, maxnreg, bn):
    from test_gluon_decode import TOL
    kw = dict(lut_warps=warps, lut_pipe=pipe, lut_maxnreg=maxnreg, lut_block_n=bn)
    assert _check_fused("turbo4", 4, [1500, 40, 2], **kw) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind,pipe,bn", [("turbo2", 2, 64), ("turbo2", 3, 64), ("turbo3", 2, 64), ("turbo2", 6, 64),
                                          ("turbo2", 7, 64)])
def test_fused_table_kernel_tiles_of_other_kinds(kind, pipe, bn):
    """turbo2 / turbo3 in 64-token tiles (their default: 32 two ahead) against float64: ragged rows, a row shorter
    than a tile, GQA 4 and 8."""
    from test_gluon_decode import TOL
    kw = dict(lut_pipe=pipe, lut_block_n=bn)
    assert _check_fused(kind, 4, [1500, 40, 2], **kw) < TOL
    assert _check_fused(kind, 8, [777, 130, 3, 64], num_splits=16, **kw) < TOL


@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
def test_finishing_table_kernel_with_sinks_compiles_for_sm90(kind):
    """The default finishing build (8 warps, `lut_fused_build`'s pipe and tile: turbo4 and turbo2 64-token tiles
    through bulk copies, turbo3 32-token tiles one ahead; `lut_fused_maxnreg`; the Hadamard maps) with the sinks and
    key mean merged: no spill traffic in the loop (at most 8 bytes of stack outside it), and no more shared memory
    than without them (the sinks' sums stay in a warp), the table at its start."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import LUT_WARPS, lut_fused_build, lut_fused_maxnreg, lut_smem
    bits = int(kind[-1])
    pipe, bn = lut_fused_build(bits)
    s = sass_decode.summary(kind, lut=True, d=128, warps=LUT_WARPS, pipe=pipe, maxnreg=lut_fused_maxnreg(bits),
                            qmap=True, fused=True, sinks=True, block_n=bn, hadamard=True)
    # (the bulk-copy builds, lut_pipe 6 - 8: up to 40 stack bytes and three reloads in the loop allowed)
    bulk = pipe in (6, 7, 8)
    assert sass_decode.within_budget(s["ops"]["LDL"] + s["ops"]["STL"], 3 if bulk else 0, "spills in the loop")
    assert sass_decode.within_budget(s["spills"], 40 if bulk else 8, "stack bytes")
    assert s["shared"] == lut_smem(LUT_WARPS, 128, pipe, fused=True) == (3 if bulk else 1) * 256 * 256 + 4
    assert f"[global_smem+{s['shared'] - 4}]" in s["ptx"]


def _phase_clocks():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "phase_clocks.py"
    spec = importlib.util.spec_from_file_location("phase_clocks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_phase_clock_summary_on_made_up_stamps():
    """scripts/phase_clocks.summarize: 2 groups x 3 programs x 2 warps with known stamps (2 ns per clock): phase
    times, the group's last program found by its exit, skew and span; stamps out of order are refused."""
    summarize = _phase_clocks().summarize
    clk = torch.zeros(6, 6, 2, dtype=torch.int64)
    for p in range(6):
        start_ns = 1000 + 100 * p
        pro, loop = 50, 1000 + 10 * p  # clocks
        tail = 4000 if p % 3 == 1 else 200  # program 1 of each group finishes last
        for w in range(2):
            c0 = 10_000 * p + w
            clk[p, 1, w], clk[p, 2, w] = c0, c0 + pro
            clk[p, 3, w], clk[p, 4, w] = c0 + pro + loop + w, c0 + pro + loop + w + tail
            clk[p, 0, w] = start_ns
            clk[p, 5, w] = start_ns + 2 * (pro + loop + w + tail)
    s = summarize(clk, 3)
    assert s["programs"] == 6 and s["warps"] == 2
    assert s["ns_per_cycle"] == pytest.approx(2.0)
    assert s["prologue_us"]["median"] == pytest.approx(0.1) and s["prologue_us"]["max"] == pytest.approx(0.1)
    assert s["loop_us"]["max"] == pytest.approx(2 * (1050 + 1) / 1e3)
    assert s["tail_last_us"]["median"] == pytest.approx(8.0) and s["tail_others_us"]["max"] == pytest.approx(0.4)
    assert s["start_skew_us"]["max"] == pytest.approx(0.5)
    # warp 1's clock reads a clock more than warp 0's from the start and it loops a clock longer: each warp's loop
    # end is read from its own start (timer and clock), so program p's last loop end (warp 1's) is at 100 p + 2 (50 +
    # 1000 + 10 p + 1) ns and the spread 2 ns
    assert s["warp_spread_us"]["median"] == pytest.approx(0.002) and s["warp_spread_us"]["max"] == pytest.approx(0.002)
    assert s["program_loop_end_us"]["max"] == pytest.approx((500 + 2 * (50 + 1050 + 1)) / 1e3)
    last_exit = 1000 + 500 + 2 * (50 + 1050 + 1 + 200)  # program 5 (not a group's last, but the latest start)
    assert s["span_us"] == pytest.approx((max(last_exit, 1000 + 400 + 2 * (50 + 1040 + 1 + 4000)) - 1000) / 1e3)
    bad = clk.clone()
    bad[2, 3, 0] = bad[2, 2, 0] - 1
    with pytest.raises(ValueError, match="out of order"):
        summarize(bad, 3)
    with pytest.raises(ValueError, match="multiple of 4"):
        summarize(clk, 4)
    # the tail's stamps (phases 7-9): its first barrier 10 clocks after the loop, the counter 30 later, and in
    # each group's finishing program (program 1) its merge 100 clocks after the counter
    c10 = torch.zeros(6, 10, 2, dtype=torch.int64)
    c10[:, :6] = clk
    c10[:, 6] = 7
    c10[:, 7] = clk[:, 3] + 10
    c10[:, 8] = clk[:, 3] + 40
    c10[1::3, 9] = clk[1::3, 3] + 140
    t = summarize(c10, 3)
    assert t["loop_us"] == s["loop_us"] and t["tail_last_us"] == s["tail_last_us"]
    assert t["tail_wait_us"]["max"] == pytest.approx(0.02) and t["tail_merge_us"]["median"] == pytest.approx(0.06)
    assert t["final_merge_us"]["median"] == pytest.approx(0.2)
    assert t["warp_spread_us"]["max"] == pytest.approx(0.02)  # (the barrier waits, not the converted loop ends)
    assert t["final_map_us"]["median"] == pytest.approx(2 * (4000 - 140) / 1e3)
    no_finisher = c10.clone()
    no_finisher[1, 9] = 0
    with pytest.raises(ValueError, match="one finishing program per group"):
        summarize(no_finisher, 3)


def test_phase_clock_sm_lateness_on_made_up_stamps():
    """scripts/phase_clocks.loop_ends / sm_lateness: 4 programs x 2 warps with SM ids (2 ns per clock), program 2's
    loop 1 us longer: its lateness after the median; an SM late in every launch keeps its mean, lateness that moves
    between SMs averages out; stamps without SM ids are refused."""
    pc = _phase_clocks()
    clk = torch.zeros(4, 7, 2, dtype=torch.int64)
    for p in range(4):
        loop = 1500 if p == 2 else 1000
        for w in range(2):
            clk[p, 0, w], clk[p, 1, w], clk[p, 2, w] = 1000, 10_000 * p, 10_000 * p + 50
            clk[p, 3, w], clk[p, 4, w] = 10_000 * p + 50 + loop, 10_000 * p + 100 + loop
            clk[p, 5, w] = 1000 + 2 * (100 + loop)
            clk[p, 6, w] = 3 - p
    sms, late = pc.loop_ends(clk)
    assert sms == [3, 2, 1, 0] and late == pytest.approx([0.0, 0.0, 1.0, 0.0])
    s = pc.sm_lateness([(sms, late), ([0, 1, 2, 3], [0.0, 1.0, 0.0, 0.0])])  # SM 1 late both times
    assert s["sms"] == 4 and s["launch_latest_us"] == pytest.approx(1.0)
    assert s["sm_mean_max_us"] == pytest.approx(1.0) and s["sm_mean_min_us"] == pytest.approx(0.0)
    assert s["per_sm_mean_us"]["1"] == pytest.approx(1.0)
    moving = pc.sm_lateness([([0, 1], [1.0, 0.0]), ([0, 1], [0.0, 1.0])])
    assert moving["sm_mean_max_us"] == pytest.approx(0.5) and moving["sm_mean_std_us"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="with SM ids"):
        pc.loop_ends(clk[:, :6])


def test_stamped_table_kernel_compiles_for_sm90():
    """The default finishing build (Hadamard maps, its register cap) with phase stamps (clocks), as
    scripts/phase_clocks.py runs it: seven SM clock reads, two global-timer reads and its SM's id, no spills, the
    loop as long as the default build's within a few instructions (scripts/sass_decode.py); turbo4's 64-token
    tiles (`lut_fused_build`) take fewer instructions per token than 32-token tiles two ahead."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import (LUT_FUSED_MAXNREG, LUT_PIPE, LUT_WARPS, lut_fused_build,
                                                  lut_fused_maxnreg)
    pipe, bn = lut_fused_build(4)
    assert pipe in (7, 8) and bn == 64 and lut_fused_build(4, bulk=False) == (2, 64)
    k = sass_decode.compile_lut("turbo4", 128, LUT_WARPS, pipe=pipe, maxnreg=lut_fused_maxnreg(4), qmap=True,
                                fused=True, clocks=True, block_n=bn, hadamard=True)
    text, _, stack = sass_decode.sass(k)
    assert sass_decode.within_budget(stack, 48, "stack bytes")  # (lut_pipe 6: 48, 32 unstamped)
    assert text.count("SR_CLOCKLO") == 7 and text.count("SR_GLOBALTIMERLO") == 2  # (3 inside the tail)
    assert text.count("SR_VIRTUALSMID") == 1  # (%smid, its program's SM)
    loop = sass_decode.main_loop(*sass_decode.instrs(text))
    assert len(loop) <= 1170, len(loop)  # per 64 tokens: default 1147, stamped 1147 (docs/kernels.md, session 21)
    s32 = sass_decode.summary("turbo4", lut=True, d=128, warps=LUT_WARPS, pipe=LUT_PIPE, maxnreg=LUT_FUSED_MAXNREG,
                              qmap=True, fused=True)  # 32-token tiles two ahead: 665 (session 20)
    assert len(loop) / 64 < 0.9 * s32["loop"] / 32, (len(loop), s32["loop"])


@cuda
@pytest.mark.cuda
def test_stamped_finishing_kernel_gives_the_same_output_and_ordered_stamps():
    """attend_planes(clocks=...): the same output bytes as without stamps, every warp's stamps in order, its SM id
    (the same for a program's warps, no more distinct ids than SMs) and the summary computable; a clocks tensor of
    the wrong shape or dtype is refused with the shape it needs."""
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import LUT_WARPS, attend_planes, lut_clock_shape
    lengths = [3000, 77, 1]
    kc, vc, rk, rv, (kcodes, knorms, vcodes, vnorms), q, w, adj, counters, lens = _fused_case("turbo4", 4, lengths,
                                                                                             2, torch.bfloat16, 128)
    b, t, ns = len(lengths), max(lengths), 4 * LUT_WARPS
    args = (q, w, adj, kcodes, knorms, vcodes, vnorms, lens, packed_kind(kc), packed_kind(vc))
    plain = attend_planes(*args, max_len=t, counters=counters, num_splits=ns)
    clk = torch.zeros(lut_clock_shape(b, 2, ns, LUT_WARPS), dtype=torch.int64, device="cuda")
    stamped = attend_planes(*args, max_len=t, counters=counters, num_splits=ns, clocks=clk)
    assert torch.equal(plain, stamped)
    c = clk.cpu()
    assert bool((c[:, 1:5].diff(dim=1) >= 0).all()) and bool((c[:, 5] >= c[:, 0]).all()) and bool((c[:, 1] > 0).all())
    s = _phase_clocks().summarize(c, ns // LUT_WARPS)
    assert s["loop_us"]["max"] > 0 and s["span_us"] > 0
    assert s["tail_merge_us"]["max"] > 0 and s["final_merge_us"]["max"] > 0 and s["final_map_us"]["max"] > 0
    # each warp stamps its program's SM (%smid: ids need not be contiguous, so only their count is bounded)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert bool((c[:, 6] >= 0).all()) and bool((c[:, 6] == c[:, 6, :1]).all())
    assert 1 <= c[:, 6, 0].unique().numel() <= min(sms, c.shape[0])
    for bad in (torch.zeros(3, 6, LUT_WARPS, dtype=torch.int64, device="cuda"), clk.int()):
        with pytest.raises(ValueError, match="clocks must be a contiguous int64 tensor"):
            attend_planes(*args, max_len=t, counters=counters, num_splits=ns, clocks=bad)


def _check_fused_sinks(kind, g, lengths, n_sink, mean, hkv=2, qdtype=torch.bfloat16, d=128, num_splits=None, **kw):
    """attend_planes with fp16 sinks (a strided view, as a static layer's) and/or a key mean merged by its
    finishing program vs float64: softmax over the sinks and the compressed keys plus the mean; output poisoned,
    counters zero afterwards."""
    from test_gluon_decode import _rel
    from compactkv.attention.triton.decode import LOG2E, packed_kind
    from compactkv.attention.triton.gluon import attend_planes
    dev = "cuda"
    b, t = len(lengths), max(lengths)
    kc, vc, rk, rv, (kcodes, knorms, vcodes, vnorms), q, w, adj, counters, lens = _fused_case(kind, g, lengths, hkv,
                                                                                             qdtype, d)
    scale = d ** -0.5
    sinks = None
    if n_sink:
        buf_k = torch.randn(b, hkv, 4, d, device=dev, dtype=torch.bfloat16) * 2
        buf_v = torch.randn(b, hkv, 4, d, device=dev, dtype=torch.bfloat16)
        sinks = (buf_k[..., :n_sink, :], buf_v[..., :n_sink, :])
    k_mean = torch.randn(b, hkv, 1, d, device=dev) * 0.7 if mean else None
    out = torch.full((b, 1, hkv * g, d), float("nan"), dtype=torch.float32, device=dev)
    attend_planes(q, w, adj, kcodes, knorms, vcodes, vnorms, lens, packed_kind(kc), packed_kind(vc), max_len=t,
                  counters=counters, out=out, num_splits=num_splits, sinks=sinks, k_mean=k_mean,
                  qscale=scale * LOG2E, **kw)
    assert int(counters.abs().sum()) == 0
    k, v = kc.decode(rk.cpu()).double(), vc.decode(rv.cpu()).double()
    if mean:
        k = k + k_mean.cpu().double()
    qd = q.cpu().double()
    want = []
    for i, n in enumerate(lengths):
        kk, vv = k[i, :, :n], v[i, :, :n]
        if n_sink:
            kk = torch.cat([sinks[0][i].cpu().double(), kk], 1)
            vv = torch.cat([sinks[1][i].cpu().double(), vv], 1)
        want.append(torch.softmax(qd[i] @ kk.transpose(-1, -2) * scale, -1) @ vv)
    return _rel(out.reshape(b, hkv, g, d), torch.stack(want))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
@pytest.mark.parametrize("n_sink,mean", [(4, True), (1, True), (3, False), (0, True)])
def test_fused_table_kernel_merges_sinks_and_key_mean_vs_float64(kind, n_sink, mean):
    """The static cache's decode step in one launch: its 4 (or fewer, after a crop) fp16 sinks and the key mean
    merged by the finishing program; ragged rows, one token, many programs, GQA 1/4/8."""
    from test_gluon_decode import TOL
    assert _check_fused_sinks(kind, 4, [777, 130, 3, 64], n_sink, mean) < TOL
    assert _check_fused_sinks(kind, 8, [5000, 2], n_sink, mean, num_splits=128) < TOL
    assert _check_fused_sinks(kind, 1, [900, 33, 7], n_sink, mean, hkv=8, qdtype=torch.float16) < TOL


def test_attend_planes_names_bad_sinks_and_key_mean():
    """Refused before anything runs: no qscale, sinks or mean of the wrong shape."""
    from compactkv.attention.triton.gluon import _fused_extras
    k = torch.zeros(2, 3, 4, 128, dtype=torch.float16)
    assert _fused_extras(None, None, None, 2, 3, 128, k.device) is None
    assert _fused_extras((k[..., :0, :], k[..., :0, :]), None, None, 2, 3, 128, k.device) is None
    assert _fused_extras(None, torch.zeros(2, 3, 1, 128), 0.1, 2, 3, 128, k.device) is None  # (a no-op alone)
    with pytest.raises(ValueError, match="need qscale"):
        _fused_extras((k, k), None, None, 2, 3, 128, k.device)
    with pytest.raises(ValueError, match=r"sink_v must be a fp16/bf16/fp32 \[2, 3, 4, 128\]"):
        _fused_extras((k, k[:1]), None, 0.1, 2, 3, 128, k.device)
    with pytest.raises(ValueError, match=r"k_mean must be \[2, 3, 1, 128\]"):
        _fused_extras((k, k), torch.zeros(2, 3, 128), 0.1, 2, 3, 128, k.device)
    sk, sv, mean, qs = _fused_extras((k, k.float()), torch.zeros(2, 3, 1, 128), 0.1, 2, 3, 128, k.device)
    assert sv.dtype == sk.dtype == torch.float16 and mean.shape == (6, 128) and mean.dtype == torch.float32


def test_attend_planes_refuses_what_it_cannot_finish():
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import attend_planes, fused_unsupported
    t4, t4_64 = packed_kind(Codec("turbo4", 128)), packed_kind(Codec("turbo4", 64))
    adj = torch.eye(128)
    assert fused_unsupported(t4, t4, 4, adj) is None
    assert "default" in fused_unsupported(t4_64, t4_64, 4, torch.eye(64))
    assert "one dense" in fused_unsupported(t4, t4, 4, adj.expand(2, 128, 128))
    assert "at most 8" in fused_unsupported(t4, t4, 16, adj)
    q = torch.zeros(1, 2, 4, 128)
    with pytest.raises(ValueError, match="counters must be"):
        attend_planes(q, adj, adj, None, None, None, None, None, t4, t4, max_len=64,
                      counters=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="adj must be fp32"):
        attend_planes(q, adj, adj.double(), None, None, None, None, None, t4, t4, max_len=64,
                      counters=torch.zeros(2, dtype=torch.int32))
    # 16 warps' accumulators do not fit the table's memory, only with the bulk copies' stages beside it, whose
    # 64-token tiles at 16 warps leave room for one stage
    kc, kn = torch.zeros(1, 2, 8, 64, dtype=torch.uint8), torch.zeros(1, 2, 8, dtype=torch.float16)
    lens = torch.full((1,), 8, dtype=torch.int32)
    for pipe, bn, why in ((3, 32, "4 or 8 warps at head_dim 128, 16 with lut_pipe 6 / 7 / 8"),
                          (8, 64, "64 KB must hold two stages")):
        with pytest.raises(ValueError, match=why):
            attend_planes(q, adj, adj, kc, kn, kc, kn, lens, t4, t4, max_len=8,
                          counters=torch.zeros(2, dtype=torch.int32), lut_warps=16, lut_pipe=pipe, lut_block_n=bn)


def test_attend_planes_names_maps_without_hadamard_factors():
    """lut_hadamard=True over maps that are not diag(pre) H diag(post) is refused before anything runs."""
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import attend_planes
    t4 = packed_kind(Codec("turbo4", 128))
    kc, kn = torch.zeros(1, 2, 8, 64, dtype=torch.uint8), torch.zeros(1, 2, 8, dtype=torch.float16)
    lens, q = torch.full((1,), 8, dtype=torch.int32), torch.zeros(1, 2, 4, 128)
    with pytest.raises(ValueError, match=r"lut_hadamard=True: the query map and adj must each be diag\(pre\) H"):
        attend_planes(q, torch.eye(128), torch.eye(128), kc, kn, kc, kn, lens, t4, t4, max_len=8,
                      counters=torch.zeros(2, dtype=torch.int32), lut_hadamard=True)


def test_planar_launchers_name_bad_input():
    """launch_gluon and attend_planes check the query, the planes and the lengths the same way (one helper each)
    and say what was wrong, before anything reaches a kernel."""
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import attend_planes, launch_gluon
    t4 = packed_kind(Codec("turbo4", 128))
    kc, kn = torch.zeros(1, 2, 8, 64, dtype=torch.uint8), torch.zeros(1, 2, 8, dtype=torch.float16)
    lens, q = torch.full((1,), 8, dtype=torch.int32), torch.zeros(1, 2, 4, 128)
    planes = lambda q, lens, k=kc: attend_planes(q, torch.eye(128), torch.eye(128), k, kn, kc, kn, lens, t4, t4,  # noqa: E731
                                                 max_len=8, counters=torch.zeros(2, dtype=torch.int32))
    gluon = lambda q, lens, k=kc: launch_gluon(q, k, kn, kc, kn, lens, t4, t4, max_len=8)  # noqa: E731
    for call in (planes, gluon):
        with pytest.raises(ValueError, match="q must be a float"):
            call(torch.zeros(2, 4, 128), lens)
        with pytest.raises(ValueError, match="q must be a float"):
            call(q.int(), lens)
        with pytest.raises(ValueError, match="head_dim 64 does not match 128"):
            call(torch.zeros(1, 2, 4, 64), lens)
        with pytest.raises(ValueError, match="lengths must be int32"):
            call(q, lens.float())
        with pytest.raises(ValueError, match="K codes and norms must be tensors"):
            call(q, lens, None)
    with pytest.raises(ValueError, match="an additive bias needs the table kernel"):
        launch_gluon(q, kc, kn, kc, kn, lens, t4, t4, max_len=8, lut=False, bias=torch.zeros(1, 8))
    for bad, says in ((torch.zeros(1, 8, dtype=torch.float64), r"float32 \[1, >= 8\].*got torch.float64"),
                      (torch.zeros(1, 7), r"\[1, >= 8\].*got torch.float32 \[1, 7\]"),
                      (torch.zeros(1, 16)[:, ::2], "token stride 1"), ([0.0] * 8, "got list")):
        with pytest.raises(ValueError, match=says):
            launch_gluon(q, kc, kn, kc, kn, lens, t4, t4, max_len=8, lut=True, bias=bad)


@pytest.mark.parametrize("d", [64, 128])
def test_key_dims_follow_the_operand_registers(d):
    """lut_key_dims for turbo4's K in byte order, turbo3's in key order and turbo2's keyed by token pairs: a
    permutation of the dims in which the A operand's lane column c (k // 2 % 4) reads only its own D / 4
    consecutive dims (the code bytes or keys its loads hold) and a register (k, k + 1) one table key's two codes
    (dims 2 i, 2 i + 1: a turbo4 byte's, a turbo3 key's, a turbo2 nibble's of the byte (k // 16) % 4 of its word,
    the key byte the selector takes); turbo4 and turbo3 in the same order."""
    from compactkv.attention.triton.gluon import lut_key_dims
    assert torch.equal(lut_key_dims(d, 3), lut_key_dims(d, 4))
    for bits in (4, 2):
        qd = lut_key_dims(d, bits).tolist()
        assert sorted(qd) == list(range(d))
        for k in range(d):
            c = (k // 2) % 4
            assert c * d // 4 <= qd[k] < (c + 1) * d // 4
            if k % 2 == 0:
                assert qd[k + 1] == qd[k] + 1 and qd[k] % 2 == 0
            if bits == 2:
                assert (qd[k] // 4) % 4 == (k // 16) % 4  # the byte of its word: the selector's


def test_lut_query_map_column_order():
    """lut_query_map puts column k of w at dim lut_key_dims[k] (the order the kernel's K product reads the mapped
    query in), per head too, and rounds QR up to a power of two >= 4 (8 where a thread would get no column)."""
    from compactkv.attention.triton.gluon import lut_key_dims, lut_query_map, lut_query_rows
    w = torch.randn(3, 128, 128)
    for bits in (4, 3, 2):
        got = lut_query_map(w, bits)
        assert torch.equal(got, w[..., lut_key_dims(128, bits)])
        assert sorted(got[0, 0].tolist()) == sorted(w[0, 0].tolist())  # a permutation of the columns
    assert [lut_query_rows(g, 128, 8) for g in (1, 2, 3, 4, 5, 8)] == [4, 4, 4, 4, 8, 8]
    assert lut_query_rows(1, 64, 16) == 8 and lut_query_rows(1, 128, 16) == 4


def test_lut_hadamard_maps_in_the_kernels_order():
    """lut_hadamard_maps: the query map's factors with their dims in the K product's order (what the kernel
    computes from them, the query's dims gathered by lut_key_dims, equals the dense map's permuted columns in
    float64), per head or one for all, and the V inverse map's; each kept per map tensor; None for maps of another
    form, a head_dim that is not a power of two and warps the layouts do not take."""
    import random
    from compactkv.attention.triton.decode import LOG2E, segment_maps
    from compactkv.attention.triton.gluon import lut_hadamard_maps, lut_key_dims
    from compactkv.core.rotation import fwht
    d, seed = 128, random.SystemRandom().randrange(2**31)
    fwd, adj = segment_maps(("turbo4", d, seed), torch.device("cpu"))
    h = fwht(torch.eye(d, dtype=torch.float64)) * d ** 0.5
    x = torch.randn(4, d, dtype=torch.float64)
    for w in (fwd * (d ** -0.5 * LOG2E), fwd / (torch.rand(3, d, 1) + 0.5)):
        for bits in (4, 3, 2):
            fq, fa = lut_hadamard_maps(w, adj, bits, 8)
            assert fq.dtype == fa.dtype == torch.float32
            assert fq.shape == (3 if w.dim() == 3 else 1, 2, d) and fa.shape == (1, 2, d)
            again = lut_hadamard_maps(w, adj, bits, 8)
            assert again[0] is fq and again[1] is fa  # kept
            dims = lut_key_dims(d, bits)
            for head in range(fq.shape[0]):
                got = ((x[:, dims] * fq[head, 0].double()) @ h) * fq[head, 1].double()
                want = (x @ (w[head] if w.dim() == 3 else w).double())[:, dims]
                assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
            got = ((x * fa[0, 0].double()) @ h) * fa[0, 1].double()
            assert torch.allclose(got, x @ adj.double(), rtol=1e-5, atol=1e-6)
    assert lut_hadamard_maps(torch.randn(d, d), adj, 4, 8) is None
    assert lut_hadamard_maps(fwd, torch.randn(d, d), 4, 8) is None
    assert lut_hadamard_maps(fwd, adj, 4, 32) is None  # 16 dims per i1 do not split over 32 warps
    f96, a96 = segment_maps(("turbo4", 96, seed), torch.device("cpu"))
    assert lut_hadamard_maps(f96, a96, 4, 4) is None


@pytest.mark.parametrize("kind", ["turbo4", "turbo2"])
def test_hadamard_build_compiles_for_sm90(kind):
    """The finishing build with the maps as Hadamard factors (sm_90, the kind's default tiles): the table is still
    the only shared buffer (the ±1 products stage through its rows), no spill traffic, and outside the loop less
    than half the dense build's global loads (no 64 KB query map per program, no 64 KB V map in the last one)."""
    import collections
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import lut_fused_build, lut_fused_maxnreg, lut_smem
    bits = int(kind[-1])
    pipe, bn = lut_fused_build(bits)
    loads = {}
    for had in (True, False):
        s = sass_decode.summary(kind, lut=True, d=128, warps=8, block_n=bn, pipe=pipe,
                                maxnreg=lut_fused_maxnreg(bits), qmap=True, fused=True, hadamard=had)
        assert s["shared"] == lut_smem(8, 128, pipe, bn, bits, fused=True)
        ins, _ = sass_decode.instrs(s["sass"])
        ops = collections.Counter(op.split(".")[0] for _, op, _ in ins)
        # (the bulk-copy builds, lut_pipe 6 - 8, keep a few values of their copies on the stack, outside the loop)
        bulk = pipe in (6, 7, 8)
        assert sass_decode.within_budget(ops["LDL"] + ops["STL"], BULK_SPILLS if bulk else 0)
        assert sass_decode.within_budget(s["ops"]["LDL"] + s["ops"]["STL"], 2 if bulk else 0, "spills in the loop")
        loads[had] = ops["LDG"] - s["ops"]["LDG"]
    assert loads[True] < loads[False] / 2, loads


def test_lut_early_loads_rule():
    """gluon.lut_early_loads: by default the finishing builds of the kinds of LUT_EARLY_BITS (turbo3) load their
    first tiles before the prologue where they can (lut_pipe 2 or 3; the bulk copies' 6 - 8 in every finishing
    build; no dense query map), the other launches not; asked for where they cannot, a ValueError that names what it
    needs."""
    from compactkv.attention.triton.gluon import LUT_EARLY_BITS, lut_early_loads
    assert LUT_EARLY_BITS == {3}
    assert lut_early_loads(3, 3, False) and lut_early_loads(3, 2, False)
    assert not lut_early_loads(3, 3, True)  # a dense query map: after the prologue
    assert not lut_early_loads(3, 1, False) and not lut_early_loads(3, 4, False) and not lut_early_loads(3, 0, False)
    assert not lut_early_loads(4, 2, False) and not lut_early_loads(2, 3, False)
    assert lut_early_loads(4, 2, False, True) and lut_early_loads(2, 3, False, True)
    assert not lut_early_loads(3, 3, False, False)
    assert not lut_early_loads(3, 2, False, fused=False) and lut_early_loads(3, 2, False, True, fused=False)
    assert lut_early_loads(4, 6, False, True) and lut_early_loads(2, 7, False, True)
    assert lut_early_loads(4, 6, False) and lut_early_loads(2, 7, False)  # the bulk copies: early by default
    assert not lut_early_loads(4, 6, False, fused=False) and not lut_early_loads(4, 6, True)
    with pytest.raises(ValueError, match="lut_pipe 2, 3, 6, 7 or 8.*got lut_pipe 1"):
        lut_early_loads(4, 1, False, True)
    with pytest.raises(ValueError, match="dense query map"):
        lut_early_loads(4, 2, True, True)


@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
def test_early_load_build_compiles_for_sm90(kind):
    """The finishing build (Hadamard maps, the kind's default tiles and register cap) with and without the first
    tiles' loads before the prologue (`lut_early`): no spill traffic either way, the same loop length within a
    few instructions, and the early build issues at least one tile's K and V code words more (32 loads a thread)
    before the prologue's first barrier."""
    import collections
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import lut_fused_build, lut_fused_maxnreg
    bits = int(kind[-1])
    pipe, bn = lut_fused_build(bits, bulk=False)  # (the bulk-copy default, lut_pipe 6, has no early loads)
    before, loops = {}, {}
    for early in (False, True):
        k = sass_decode.compile_lut(kind, 128, 8, pipe=pipe, maxnreg=lut_fused_maxnreg(bits, pipe), qmap=True,
                                    fused=True, block_n=bn, hadamard=True, early=early)
        text, _, _ = sass_decode.sass(k)
        ins, labels = sass_decode.instrs(text)
        ops = collections.Counter(op.split(".")[0] for _, op, _ in ins)
        assert ops["LDL"] + ops["STL"] == 0, (kind, early)
        first_bar = next(i for i, (_, op, _) in enumerate(ins) if op.startswith("BAR"))
        before[early] = sum(op.startswith("LDG") for _, op, _ in ins[:first_bar])
        loops[early] = len(sass_decode.main_loop(ins, labels))
    assert before[True] >= before[False] + 32, before
    assert abs(loops[True] - loops[False]) <= 16, loops


@pytest.mark.parametrize("kind", ["turbo4", "turbo2"])
def test_bulk_early_build_issues_its_copies_before_the_prologue(kind):
    """lut_pipe 6 with `lut_early`: the mbarriers' init and the first stages' copies (SYNCS.EXCH, UBLKCP) come
    before the prologue's first CTA barrier in sm_90 SASS (after it without), the loop the same length within a
    few instructions, no spill traffic in it."""
    import collections
    sass_decode = _sass_decode()
    first, loops = {}, {}
    for early in (False, True):
        k = sass_decode.compile_lut(kind, 128, 8, pipe=6, maxnreg=255, qmap=True, fused=True, block_n=64,
                                    hadamard=True, early=early)
        text, _, _ = sass_decode.sass(k)
        ins, labels = sass_decode.instrs(text)
        loop = sass_decode.main_loop(ins, labels)
        ops = collections.Counter(op.split(".")[0] for _, op, _ in loop)
        assert sass_decode.within_budget(ops["LDL"] + ops["STL"], 0), (kind, early)
        first_bar = next(i for i, (_, op, _) in enumerate(ins) if op.startswith("BAR"))
        first[early] = sum(op.startswith("UBLKCP") for _, op, _ in ins[:first_bar])
        loops[early] = len(loop)
    assert first[False] == 0 and first[True] >= 2, first
    assert abs(loops[True] - loops[False]) <= 8, loops


@pytest.mark.parametrize("kind,pipe", [("turbo4", 6), ("turbo2", 6), ("turbo4", 7), ("turbo2", 7), ("turbo4", 8)])
def test_bulk_stage_build_compiles_for_sm90(kind, pipe):
    """lut_pipe 6: the finishing build with each warp's tiles copied by the copy engine (one UBLKCP per operand and
    tile, issued by one lane) into stages behind the table (one 192 KB allocation), an mbarrier per warp and stage
    (SYNCS: the expecting arrival, the wait), the words read back with ld.shared (turbo4: 16-byte K, 8-byte V
    vectors), no CTA barrier and no spill traffic in the loop (at the default cap, `lut_fused_maxnreg`: 255; at
    248, with the traded rows of `bulk_stage_layout`, turbo4 spilled 5 times per tile). lut_pipe 7: the same
    copies, each after a fence of the lanes' reads against the copy engine's writes (FENCE.VIEW.ASYNC.S); lut_pipe
    8: K's so, V's as 6's (one fence)."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import lut_config_error, lut_fused_maxnreg, lut_smem
    assert lut_fused_maxnreg(int(kind[-1])) == lut_fused_maxnreg(int(kind[-1]), pipe) == 255
    s = sass_decode.summary(kind, lut=True, d=128, warps=8, block_n=64, pipe=pipe, maxnreg=255, qmap=True,
                            fused=True, hadamard=True)
    assert s["shared"] == lut_smem(8, 128, pipe, bits=int(kind[-1]), fused=True) == 3 * 65536 + 4
    ops = s["ops"]
    # (turbo4's V through its tensor map by default on 6 / 7, `lut_tma`: one UTMALDG in place of V's UBLKCP)
    assert ops["UBLKCP"] + ops["UTMALDG"] == 2 and ops["UTMALDG"] == (kind == "turbo4" and pipe < 8), ops
    assert ops["SYNCS"] == 2 and ops["BAR"] == 0, ops
    assert ops["FENCE"] == {6: 0, 7: 2, 8: 1}[pipe], ops  # (8: K's copy only)
    assert sass_decode.within_budget(ops["STL"] + ops["LDL"], 0)
    assert "SYNCS.EXCH.64" in s["sass"] and "mbarrier.try_wait.parity" in s["ptx"]
    if kind == "turbo4":
        assert "LDS.128" in s["sass"] and "LDS.64" in s["sass"]
    assert lut_config_error(4, 128, 16, pipe, 255, 64) is not None  # one stage of 16 warps' tiles fills 64 KB
    assert lut_config_error(2, 128, 16, pipe, 255, 64) is not None  # turbo2: three stages and the mbarriers
    assert lut_config_error(4, 128, 8, pipe, 248, 64) is None
    assert f"lut_pipe={pipe}" in lut_config_error(3, 128, 8, pipe, 248)  # turbo3: not on the bulk copies
    assert "7 (as 6" in lut_config_error(4, 128, 8, 5, 255, 64)  # (the pipes it takes, named)


def test_compact_softmax_rule_and_refusals():
    """`lut_compact`: compact where a KV head has at most 4 query rows and a program at most 8 warps, except
    turbo3 over codec rows (slower there, session 33); the launcher refuses compact=True with more rows and a
    non-boolean, before any launch, naming what it takes."""
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import _launch_lut, lut_compact
    from compactkv.core.codec import Codec
    assert lut_compact(4, 8) and lut_compact(1, 4, 2, True) and lut_compact(4, 8, 3, False)
    assert not lut_compact(5, 8) and not lut_compact(4, 16) and not lut_compact(4, 8, 3, True)
    kind = packed_kind(Codec("turbo4", 128))
    lengths = torch.zeros(1, dtype=torch.int32)
    for g, compact, msg in [(8, True, "at most 4 query rows per KV head, got 8"),
                            (4, "yes", "lut_compact 'yes': takes True, False or None")]:
        with pytest.raises(ValueError, match=msg):
            _launch_lut(torch.zeros(1, 2, g, 128), None, None, None, None, lengths, kind, kind, max_len=64,
                        num_splits=8, block_n=32, warps=8, pipe=3, compact=compact)


@pytest.mark.parametrize("kind", ["turbo4", "turbo2"])
def test_compact_softmax_build_compiles_for_sm90(kind):
    """The default finishing build with the softmax over query rows 0-3 (`lut_compact`) against the same build over
    all 8: fewer loop instructions (half the exponentials, fewer norm loads: 4 tokens a lane, not 8), no spill, no barrier
    and no shared memory beyond the table's (its exchanges are shuffles: the launcher's allocation check)."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import lut_fused_build, lut_fused_maxnreg
    bits = int(kind[-1])
    pipe, bn = lut_fused_build(bits)
    kw = dict(lut=True, d=128, warps=8, block_n=bn, pipe=pipe, maxnreg=lut_fused_maxnreg(bits, pipe), qmap=True,
              fused=True, hadamard=True)
    full = sass_decode.summary(kind, compact=False, **kw)
    compact = sass_decode.summary(kind, compact=True, **kw)
    assert compact["shared"] == full["shared"]
    ops, ops_full = compact["ops"], full["ops"]
    assert ops["BAR"] == 0 and sass_decode.within_budget(ops["STL"] + ops["LDL"], 0), ops
    assert compact["loop"] <= 0.92 * full["loop"], (compact["loop"], full["loop"])
    assert 2 * ops["MUFU"] <= ops_full["MUFU"] + 4, (ops["MUFU"], ops_full["MUFU"])
    assert ops["LDG"] < ops_full["LDG"], (ops["LDG"], ops_full["LDG"])


@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
def test_bias_build_over_rows_compiles_for_sm90(kind):
    """The row reader's build with an additive bias (`launch_rows`' bias=, session 36): no spill, no barrier in the
    loop, the table's shared memory only, more global loads a tile than the same build without (the bias's, one
    value per token) and at most 32 more loop instructions."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import GLUON_BLOCK_N, LUT_ROWS_MAXNREG, LUT_ROWS_PIPE, LUT_WARPS
    kw = dict(lut=True, d=128, warps=LUT_WARPS, block_n=GLUON_BLOCK_N, pipe=LUT_ROWS_PIPE, maxnreg=LUT_ROWS_MAXNREG,
              qmap=True, rows=True)
    plain = sass_decode.summary(kind, **kw)
    bias = sass_decode.summary(kind, bias=True, **kw)
    ops = bias["ops"]
    assert bias["shared"] == plain["shared"] and bias["spills"] == 0, (bias["shared"], bias["spills"])
    assert ops["BAR"] == 0 and sass_decode.within_budget(ops["STL"] + ops["LDL"], 0), ops
    assert plain["loop"] < bias["loop"] <= plain["loop"] + 32, (plain["loop"], bias["loop"])
    assert ops["LDG"] > plain["ops"]["LDG"], (ops["LDG"], plain["ops"]["LDG"])


def test_tma_rule_and_refusals(monkeypatch):
    """`lut_tma`: V through a tensor map by default on lut_pipe 6 / 7 over planes with 64-byte rows only (turbo4 at
    head_dim 128); the launcher refuses tma=True elsewhere and a non-boolean, before any launch, naming what it
    takes; `tma.map_arguments` gives the driver's dims / strides / box of a plane view and refuses planes the
    accelerator cannot read."""
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import _launch_lut, lut_tma
    from compactkv.attention.triton.tma import map_arguments
    from compactkv.core.codec import Codec
    assert lut_tma(6, 64) and lut_tma(7, 64) and not lut_tma(8, 64)  # (8: no faster with it, LUT_TMA_PIPES)
    assert not lut_tma(2, 64) and not lut_tma(7, 32) and not lut_tma(7, 64, True)
    lengths = torch.zeros(1, dtype=torch.int32)
    for kind, pipe, tma, msg in [("turbo2", 7, True, "64-byte rows .* got 32-byte rows on lut_pipe 7"),
                                 ("turbo4", 3, True, "got 64-byte rows on lut_pipe 3"),
                                 ("turbo4", 8, "yes", "lut_tma 'yes': takes True, False or None")]:
        k = packed_kind(Codec(kind, 128))
        with pytest.raises(ValueError, match=msg):
            _launch_lut(torch.zeros(1, 2, 4, 128), None, None, None, None, lengths, k, k, max_len=64,
                        num_splits=8, block_n=64, warps=8, pipe=pipe, tma=tma)
    buf = torch.zeros(2, 8, 1024, 64, dtype=torch.uint8)
    from compactkv.attention.triton import tma as maps
    made = dict(maps._MAPS)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    # inside a capture a map not made yet is not made (no host-to-device copy): None, the launch goes linear
    assert maps.tensor_map(buf, 64) is None and maps._MAPS == made
    assert map_arguments(buf[:, :, :1000], 64) == ([64, 1000, 8, 2], [64, 65536, 524288], [64, 64, 1, 1])
    assert map_arguments(buf[1:, 2:5], 32) == ([64, 1024, 3, 1], [64, 65536, 524288], [64, 32, 1, 1])
    for bad, rows, msg in [(buf.view(torch.int8), 64, "uint8 plane"), (buf[..., :40], 64, "16 to 64 bytes"),
                           (buf.view(-1)[8:8 + 1024 * 64].view(1, 1, 1024, 64), 64, "16-byte aligned"),
                           (buf, 300, "1 to 256 rows")]:
        with pytest.raises(ValueError, match=msg):
            map_arguments(bad, rows)


@pytest.mark.parametrize("w,bn", [(8, 64), (4, 64), (8, 32), (16, 32)])
def test_tma_stage_layout_is_the_swizzled_copy(w, bn):
    """`tma_stage_layout` is where the tensor copy puts each word: the warp's tile in the copies' row order with
    `bulk_stage_layout`'s trade (row r holds token r ^ ((r >> 1) & 1)), each byte address's bits 4-5 xor-ed with
    its bits 7-8 (CU_TENSOR_MAP_SWIZZLE_64B); read through it, V's words cost their bytes' minimum of wavefronts
    (32 per warp and 64-token tile, half the traded linear stage's), K keeps the linear stage at its minimum."""
    from compactkv.attention.triton.gluon import lut_stage_layouts
    from compactkv.attention.triton.kernels_lut import bulk_stage_layout, lut_layouts, shared_wavefronts, \
        tma_stage_layout
    _k, _v, kword, vword = lut_layouts(w, bn, 64, words=True)
    bases = tma_stage_layout(w, bn, 16).offset_bases
    placed = {}
    for off in range(w * bn * 16):
        c = [0, 0, 0]
        for i, base in enumerate(bases):
            if off >> i & 1:
                c = [a ^ x for a, x in zip(c, base)]
        placed[tuple(c)] = off
    assert len(placed) == w * bn * 16
    for (wi, tok, word), off in placed.items():
        row = tok ^ ((tok >> 1) & 1)
        byte = (wi * bn + row) * 64 + word * 4
        assert off * 4 == byte ^ (((byte >> 7) & 3) << 4), (wi, tok, word)
    least = bn * 16 * 4 // 128
    assert shared_wavefronts(vword, bases) == least
    assert shared_wavefronts(vword, bulk_stage_layout(w, bn, 16).offset_bases) == 2 * least
    assert shared_wavefronts(kword, bulk_stage_layout(w, bn, 16).offset_bases) == least
    assert lut_stage_layouts(8, kword, vword, True) == (bulk_stage_layout(w, bn, 16), tma_stage_layout(w, bn, 16))
    with pytest.raises(ValueError, match="rows of 16 words"):
        tma_stage_layout(w, bn, 8)


def test_tma_build_compiles_for_sm90():
    """turbo4's default finishing build (lut_pipe 8) with V through the tensor map (`lut_tma=True`) against the same
    build with the linear bulk copies: one tensor copy in the loop (UTMALDG) in place of V's bulk copy, the same
    shared-memory reads (LDS / LDS.64 / LDS.128: the swizzle keeps each lane's 8-byte vectors), at most a few more
    loop instructions (the swizzled addresses), no spill, no barrier, the same shared memory."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import lut_fused_build, lut_fused_maxnreg
    pipe, bn = lut_fused_build(4)
    kw = dict(lut=True, d=128, warps=8, block_n=bn, pipe=pipe, maxnreg=lut_fused_maxnreg(4, pipe), qmap=True,
              fused=True, hadamard=True)
    linear = sass_decode.summary("turbo4", **kw)
    tma = sass_decode.summary("turbo4", tma=True, **kw)
    assert tma["shared"] == linear["shared"]
    ops, ops_lin = tma["ops"], linear["ops"]
    assert ops["UTMALDG"] >= 1 and ops_lin["UTMALDG"] == 0 and ops["UBLKCP"] == ops_lin["UBLKCP"] - 1, (ops, ops_lin)
    assert "cp.async.bulk.tensor.4d" in tma["ptx"]
    for op in ("LDS", "BAR"):
        assert ops[op] == ops_lin[op], (op, ops[op], ops_lin[op])
    for vec in ("LDS.64", "LDS.128"):
        assert tma["sass"].count(vec) == linear["sass"].count(vec), vec
    assert sass_decode.within_budget(ops["STL"] + ops["LDL"], 0), ops
    assert tma["loop"] <= linear["loop"] + 8, (tma["loop"], linear["loop"])


@pytest.mark.parametrize("sinks", [False, True])
def test_sixteen_warp_bulk_build_compiles_for_sm90(sinks):
    """turbo4's finishing build with 16 warps of 32-token tiles on lut_pipe 8 (session 31; an option, slower than
    the default): the one 192 KB allocation the launcher checks (16 warps' accumulators merged through the table,
    the rest of the merge through the K stages), no spill traffic in the loop at 128 registers (4 warps a
    scheduler), two copies and one mbarrier wait a tile, one table read per code byte; the launcher takes these
    options (`lut_config_error`)."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import lut_config_error, lut_smem
    assert lut_config_error(4, 128, 16, 8, 128, 32) is None
    s = sass_decode.summary("turbo4", lut=True, d=128, warps=16, block_n=32, pipe=8, maxnreg=128, qmap=True,
                            fused=True, sinks=sinks, hadamard=True)
    assert s["shared"] == lut_smem(16, 128, 8, 32, 4, fused=True) == 3 * 65536 + 4
    ops = s["ops"]
    assert ops["UBLKCP"] == 2 and ops["SYNCS"] == 2 and ops["BAR"] == 0, ops
    assert sass_decode.within_budget(ops["STL"] + ops["LDL"], 0)
    assert 2 * 32 * 64 // 32 <= ops["LDS"] <= 2 * 32 * 64 // 32 + 16, ops  # table reads, then the stages' words


@pytest.mark.parametrize("nb,w,bn", [(64, 8, 64), (64, 4, 32), (32, 8, 64), (32, 4, 32)])
def test_bulk_stage_trade_cuts_the_value_reads_conflicts(nb, w, bn):
    """lut_pipe 6's stages hold the copies' rows (64 bytes per token for turbo4, nb = 64 table keys; 32 for
    turbo2). Read plainly, each V word read meets bank conflicts (the same bytes of tokens t, t + 2, t + 4, t + 6 in
    one phase): 4x the wavefronts its bytes need for turbo4, 2x for turbo2. With `bulk_stage_layout`'s trade,
    turbo4 2x (two 64-byte rows per bank cycle cannot hold four tokens apart), turbo2 1x; K's reads stay at their
    bytes' minimum. The trade is a permutation of rows within aligned groups of 2^(k+1) tokens and its own
    inverse: row j holds token j ^ ((j >> k) & 1) (the kernel's `_traded`)."""
    from compactkv.attention.triton.gluon import lut_stage_layouts
    from compactkv.attention.triton.kernels_lut import bulk_stage_layout, lut_layouts, shared_wavefronts, trade_bit
    _k, _v, kword, vword = lut_layouts(w, bn, nb, words=True)
    nc = kword.shape[2]
    words = nc.bit_length() - 1
    plain = ([[0, 0, 1 << i] for i in range(words)] + [[0, 1 << i, 0] for i in range(bn.bit_length() - 1)]
             + [[1 << i, 0, 0] for i in range(w.bit_length() - 1)])
    traded = bulk_stage_layout(w, bn, nc).offset_bases
    least = bn * nc * 4 // 128  # wavefronts of 128 bytes one warp's tile needs
    worse = 4 if nc == 16 else 2
    assert shared_wavefronts(kword, plain) == least and shared_wavefronts(vword, plain) == worse * least
    assert shared_wavefronts(kword, traded) == least and shared_wavefronts(vword, traded) == worse // 2 * least
    k = trade_bit(nc)
    rows = []
    for r in range(bn):  # the token kept at row r: the xor of the bases of r's bits
        t = 0
        for i in range(bn.bit_length() - 1):
            if r >> i & 1:
                t ^= traded[words + i][1]
        rows.append(t)
    assert sorted(rows) == list(range(bn)) and all(rows[rows[r]] == r for r in range(bn))
    assert all(rows[r] >> (k + 1) == r >> (k + 1) and rows[r] == r ^ ((r >> k) & 1) for r in range(bn))
    assert lut_stage_layouts(6, kword, vword) == (bulk_stage_layout(w, bn, nc), None)


def test_bulk_copies_name_what_they_cannot_read():
    """lut_pipe 6 reads planes with 16-byte bulk copies: planes off a 16-byte boundary (or rows apart by other than
    a multiple of 16) get a reason (attend_planes then takes the register build, LUT_FUSED_FALLBACKS), codec rows a
    ValueError; aligned planes none."""
    from compactkv.attention.triton.gluon import LUT_FUSED_FALLBACKS, _check_bulk, bulk_unsupported, lut_fused_build
    q = torch.zeros(2, 8, 4, 128)
    planes = torch.zeros(2, 8, 100, 64, dtype=torch.uint8)
    assert bulk_unsupported(q, planes, planes) is None
    odd = torch.zeros(2 * 8 * 100 * 64 + 1, dtype=torch.uint8)[1:].view(2, 8, 100, 64)
    why = bulk_unsupported(q, planes, odd)
    assert why is not None and "V code planes" in why and "16-byte" in why
    heads = torch.zeros(2 * 8 * 6408, dtype=torch.uint8).as_strided((2, 8, 100, 64), (8 * 6408, 6408, 64, 1))
    assert "K code planes" in bulk_unsupported(q, heads, planes)  # heads 6408 bytes apart
    with pytest.raises(ValueError, match="codec rows"):
        _check_bulk(q, planes, planes, (planes, planes, 10))
    assert lut_fused_build(4, bulk=False) == LUT_FUSED_FALLBACKS[4] == (2, 64)
    assert lut_fused_build(2, bulk=False) == LUT_FUSED_FALLBACKS[2] == (3, 64)
    assert lut_fused_build(4) == (8, 64) and lut_fused_build(2) == (7, 64)  # (every triton release since session 31)
    assert lut_fused_build(3) == lut_fused_build(3, bulk=False) == (2, 32)  # (registers one ahead, session 32)


def test_fused_tiles_follow_the_triton_release(monkeypatch):
    """LUT_FUSED_TILES_SINCE applies from its release on (an entry as session 30's, turbo4 on lut_pipe 7 from 3.9;
    the table is empty since session 31 timed lut_pipe 8 with 3.9 too); a development build whose version does not
    parse keeps LUT_FUSED_TILES (as dispatch lets it run), with no error; the version parser is the one dispatch
    uses."""
    import sys
    import types
    from compactkv.attention.triton import gluon, triton_release
    assert triton_release("3.10.0+git1a2b") == (3, 10) and triton_release("main") is None
    cases = (("3.6.0", (8, 64), (8, 64)), ("3.8.0", (8, 64), (8, 64)), ("3.9.0", (8, 64), (7, 64)),
             ("3.10.1", (8, 64), (7, 64)), ("main", (8, 64), (8, 64)))
    for since, col in (({}, 1), ({(3, 9): {4: (7, 64)}}, 2)):
        monkeypatch.setattr(gluon, "LUT_FUSED_TILES_SINCE", since)
        for case in cases:
            monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__=case[0]))
            gluon._fused_tiles.cache_clear()
            assert gluon.lut_fused_build(4) == case[col] and gluon.lut_fused_build(2) == (7, 64), (case, since)
    monkeypatch.undo()
    gluon._fused_tiles.cache_clear()
    assert gluon.LUT_FUSED_TILES_SINCE == {} and gluon.lut_fused_build(4) == (8, 64)


@pytest.mark.parametrize("kind,fused", [("turbo4", True), ("turbo2", False)])
def test_cp_async_stage_build_compiles_for_sm90(kind, fused):
    """lut_pipe 4 (session 21): the table and 64 KB each of K and V word stages in one 192 KB allocation (the
    table at its start), the words copied with 16-byte (K) and 8-byte (V) cp.async and read back with
    ld.shared.v4 / v2 (`lut_stage_layout`: each lane's words contiguous), no spill traffic in the loop. The
    compiler's barrier analysis puts at most 3 CTA barriers per tile (H200: slower than the register prefetch,
    docs/kernels.md session 21)."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import lut_smem
    s = sass_decode.summary(kind, lut=True, d=128, warps=8, pipe=4, maxnreg=255, qmap=True, fused=fused)
    assert s["shared"] == lut_smem(8, 128, 4, bits=int(kind[-1]), fused=fused) == 3 * 65536 + 4 * fused
    ops = s["ops"]
    assert ops["LDGSTS"] > 0 and ops["LDL"] + ops["STL"] == 0 and ops["BAR"] <= 3
    if kind == "turbo4":  # (turbo2's 32-byte rows give each lane 8-byte vectors)
        assert "LDGSTS.E.BYPASS.128" in s["sass"] and "LDS.128" in s["sass"]
    from compactkv.attention.triton.gluon import lut_config_error
    assert lut_config_error(4, 128, 16, 4, 255, 64) is not None  # one stage would fit: no double buffer
    assert lut_config_error(4, 128, 8, 4, 255, 64) is None and lut_config_error(3, 128, 8, 4, 255) is not None


@pytest.mark.parametrize("warps,pipe,maxnreg", [(8, 3, 232), (4, 3, 232), (8, 2, 168)])
def test_turbo3_table_kernel_compiles_for_sm90(warps, pipe, maxnreg):
    """sm_90 build of the turbo3 table kernel: no spill traffic, the 8 KB table is the only shared buffer, one
    shared read per key (two codes) in the loop, and per key one funnel shift and one and/or (LOP3), no pairing
    prmt (K in key order, V keyed by token pairs; with a little loop bookkeeping; the V windows' shift by 0 or 16
    bits is two more per token and lane, V3KEY_ASM four shifts and four lop3 per token pair and lane)."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import lut_smem
    s = sass_decode.summary("turbo3", lut=True, d=128, warps=warps, pipe=pipe, maxnreg=maxnreg)
    ops = s["ops"]
    assert sass_decode.within_budget(ops["LDL"] + ops["STL"], 0 if maxnreg >= 232 else 2)
    assert s["shared"] == lut_smem(warps, 128, pipe, bits=3) == 64 * 128
    keys = 32 * 64 * 2 // 32  # K and V keys of a 32-token tile per lane
    assert ops["LDS"] == keys and ops["HMMA"] > 0
    pairs = 4  # token pairs of a lane's V in a 32-token tile
    assert keys <= ops["SHF"] <= keys + 8 * 2 + 8 + 4 * pairs and keys <= ops["LOP3"] <= keys + 8 + 4 * pairs
    assert ops["PRMT"] <= keys // 4  # (was 1.25 keys with the pairing prmt)


def test_turbo2_table_kernel_refuses_the_cp_async_stage(monkeypatch):
    from compactkv.attention.triton import gluon
    from compactkv.attention.triton.decode import packed_kind
    t2 = packed_kind(Codec("turbo2", 128))
    q = torch.zeros(1, 1, 4, 128)
    for pipe in (0, 1):  # turbo2 keys pair two tokens' words
        with pytest.raises(ValueError, match=f"lut_pipe={pipe}: turbo2 codes are read as words only"):
            gluon._launch_lut(q, None, None, None, None, None, t2, t2, max_len=64, num_splits=None, block_n=32,
                              warps=16 if pipe else 8, pipe=pipe)
    t3 = packed_kind(Codec("turbo3", 128))
    for pipe in (0, 1):  # turbo3 keys are read from words only
        with pytest.raises(ValueError, match="lut_pipe 2 or 3"):
            gluon._launch_lut(q, None, None, None, None, None, t3, t3, max_len=64, num_splits=None, block_n=32,
                              warps=8, pipe=pipe)


def test_lut_splits_fill_one_wave(monkeypatch):
    """Whole programs per multiprocessor (one wave of 64 KB programs), warps' splits >= LUT_MIN_WARP_TOKENS."""
    from compactkv.attention.triton import gluon
    monkeypatch.setattr(gluon, "_sm_count", lambda device: 132)
    dev = torch.device("cpu")
    assert [gluon.lut_programs_per_sm(w, 128, p, 128) for w in (4, 8, 16) for p in (0, 1, 2)] == [3, 2, 3, 2, 2, 2,
                                                                                                   1, 1, 1]
    assert gluon.lut_programs_per_sm(gluon.LUT_WARPS) == 1  # the default: 8 warps, prefetch, 232 registers
    assert [gluon.lut_programs_per_sm(w, 128, 2, r) for w, r in [(4, 168), (8, 168), (8, 80), (16, 64)]] == [3, 1, 3, 2]
    for warps, pipe, regs in [(4, 0, 128), (8, 0, 128), (16, 0, 128), (16, 1, 128), (4, 2, 168), (8, 0, 80)]:
        per_sm = gluon.lut_programs_per_sm(warps, 128, pipe, regs)
        for bh, t in [(64, 32768), (64, 131072), (8, 131072), (8, 4096), (512, 32768)]:
            s = gluon.lut_splits(bh, t, warps, dev, 128, pipe, regs)
            assert s % warps == 0 and s >= warps
            assert bh * s // warps <= max(132 * per_sm, bh)  # never a partial second wave of its own making
            assert s == warps or t / s >= gluon.LUT_MIN_WARP_TOKENS


def test_table_kernel_is_the_default_at_head_dim_128_only():
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import lut_default, planes_unsupported
    from compactkv.bench.kernels import gluon_name, planar_kernel
    assert [planar_kernel(k) for k in ("turbo4", "turbo3", "turbo2")] == ["table"] * 3
    assert gluon_name("turbo3")  # planar storage is read by a kernel for turbo3 too
    t3 = packed_kind(Codec("turbo3", 128))
    assert planes_unsupported(t3, t3, 4) is None and "at most 8" in planes_unsupported(t3, t3, 16)
    assert "one-token" in planes_unsupported(t3, t3, 4, tq=2)
    t64 = packed_kind(Codec("turbo4", 64))
    assert not lut_default(t64, t64)  # supported (tested) but not timed: the one-warp kernel stays its default


def _check_rows(kind, g, lengths, chunk, d=128, hkv=2, num_splits=None, per_head=False, shift2=False, bias=None,
                **kw):
    """Max relative error of `launch_rows` (the table kernel over codec rows in chunks of `chunk` tokens, each its
    own tensor as TurboQuantLayer keeps them) vs float64. shift2: every chunk starts 2 bytes past a word boundary
    (the rows' other alignment); per_head: one query map per KV head (a channel scale before the rotation); bias:
    None, "pad" (an additive mask per batch row: its first third of tokens -inf, as a left-padded batch's, the
    others random finite values) or "shared" (one such row for every batch row: batch stride 0)."""
    from test_gluon_decode import _rel
    from compactkv.attention.reference import packed_dense_float64
    from compactkv.attention.triton.decode import LOG2E, chunk_table, codec_maps, merge_partials, packed_kind
    from compactkv.attention.triton.gluon import launch_rows
    dev = "cuda"
    kc, vc = Codec(kind, d, seed=5), Codec(kind, d, seed=6)
    b, t = len(lengths), max(lengths)
    rk = kc.encode(torch.randn(b, hkv, t, d, device=dev, dtype=torch.float16))
    rv = vc.encode(torch.randn(b, hkv, t, d, device=dev, dtype=torch.float16))

    def chunks(rows):
        out = []
        for i in range(0, t, chunk):
            c = rows[:, :, i:i + chunk]
            if shift2:
                c = torch.empty(c.numel() + 2, dtype=torch.uint8, device=dev)[2:].view(c.shape).copy_(c)
            out.append(c.contiguous())
        assert all(x.data_ptr() % 4 == (2 if shift2 else 0) for x in out)
        return out
    ck, cv = chunks(rk), chunks(rv)
    q = torch.randn(b, hkv, g, d, device=dev, dtype=torch.bfloat16)
    fwd, _ = codec_maps(kc, dev)
    _, adj = codec_maps(vc, dev)
    w = (fwd if fwd is not None else torch.eye(d, device=dev)) * (d ** -0.5 * LOG2E)
    qref = q.float()
    if per_head:
        s = torch.rand(hkv, d, device=dev) + 0.5
        w = s[:, :, None] * w
        qref = qref * s[None, :, None, :]
    lens = torch.tensor(lengths, dtype=torch.int32, device=dev)
    add = None
    if bias is not None:
        add = torch.randn(b, t, device=dev)
        for i, n in enumerate(lengths):
            add[i, :n // 3] = float("-inf")
        if bias == "shared":
            add = add[:1].expand(b, t)
            assert add.stride(0) == 0 and min(lengths) > max(lengths) // 3  # (no row masked whole)
        kw["bias"] = add * LOG2E
    parts = launch_rows(q, chunk_table(ck), chunk_table(cv), lens, packed_kind(kc), packed_kind(vc), chunk=chunk,
                        max_len=t, w=w, num_splits=num_splits, **kw)
    out = torch.full((b, hkv, g, d), float("nan"), device=dev)
    lse = torch.full((b, hkv, g), float("nan"), device=dev)
    merge_partials(parts, q.shape, q.device, out, lse)
    assert torch.isfinite(lse).all()
    got = out @ adj if adj is not None else out
    return _rel(got, packed_dense_float64(kc, vc, rk, rv, qref, d ** -0.5, lengths, 1, bias=add))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
@pytest.mark.parametrize("g", [1, 4, 8])
@pytest.mark.parametrize("shift2", [False, True])
def test_table_kernel_over_rows_vs_float64(kind, g, shift2):
    """Rows of both alignments, chunks of 64 / 1024 / one, ragged lengths (not multiples of a tile or chunk,
    shorter than a tile), empty warps' splits, per-head maps."""
    from test_gluon_decode import TOL
    assert _check_rows(kind, g, [2100, 130, 3, 64], 1024, shift2=shift2) < TOL
    assert _check_rows(kind, g, [777, 65, 1], 64, shift2=shift2, per_head=True) < TOL
    assert _check_rows(kind, g, [3001, 100], 1 << 30, num_splits=64, shift2=shift2) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["turbo4", "turbo3", "turbo2"])
@pytest.mark.parametrize("g", [1, 4, 8])
def test_table_kernel_over_rows_with_a_bias_vs_float64(kind, g):
    """An additive mask over the rows (session 36: a padded batch's decode steps), per batch row and shared by
    every batch row (batch stride 0), with ragged lengths, both alignments, chunks of 64 / 1024 / one; the
    compact softmax (g <= 4 but turbo3) and the full one."""
    from test_gluon_decode import TOL
    assert _check_rows(kind, g, [2100, 130, 3, 64], 1024, bias="pad") < TOL
    assert _check_rows(kind, g, [777, 650, 700], 64, shift2=True, bias="shared", per_head=True) < TOL
    assert _check_rows(kind, g, [3001, 100], 1 << 30, num_splits=64, bias="pad") < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind,d", [("turbo4", 128), ("turbo3", 128), ("turbo2", 128), ("turbo4", 64)])
@pytest.mark.parametrize("g", [1, 4, 8])
def test_table_kernel_over_planes_with_a_bias_vs_float64(kind, d, g):
    """launch_gluon's table kernel over code planes with an additive bias (a static cache's recorded padding: a
    view past the buffer's sink columns, batch stride max_len + 4): -inf over each row's first third, random finite
    values after it, ragged lengths and planes longer than every row, against float64 with the same bias."""
    from test_gluon_decode import TOL, _planar_case, _rel
    from compactkv.attention.reference import packed_dense_float64
    from compactkv.attention.triton.decode import LOG2E, codec_maps, merge_partials, packed_kind
    from compactkv.attention.triton.gluon import launch_gluon
    dev, hkv, lengths = "cuda", 2, [2100, 130, 3, 777]
    kc, vc, rk, rv, (kcodes, knorms), (vcodes, vnorms) = _planar_case(kind, kind, d, lengths, hkv, dev)
    b, t = len(lengths), max(lengths)
    base = torch.randn(b, t + 4, device=dev) * LOG2E
    for i, n in enumerate(lengths):
        base[i, 4:4 + n // 3] = float("-inf")
    bias = base[:, 4:]
    assert bias.stride() == (t + 4, 1)
    q = torch.randn(b, hkv, g, d, device=dev, dtype=torch.bfloat16)
    fwd, _ = codec_maps(kc, dev)
    _, adj = codec_maps(vc, dev)
    w = (fwd if fwd is not None else torch.eye(d, device=dev)) * (d ** -0.5 * LOG2E)
    parts = launch_gluon(q, kcodes, knorms, vcodes, vnorms, torch.tensor(lengths, dtype=torch.int32, device=dev),
                         packed_kind(kc), packed_kind(vc), max_len=t, w=w, lut=True, bias=bias)
    out = torch.full((b, hkv, g, d), float("nan"), device=dev)
    lse = torch.full((b, hkv, g), float("nan"), device=dev)
    merge_partials(parts, q.shape, q.device, out, lse)
    assert torch.isfinite(lse).all()
    got = out @ adj if adj is not None else out
    assert _rel(got, packed_dense_float64(kc, vc, rk, rv, q.float(), d ** -0.5, lengths, 1, bias=bias / LOG2E)) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("g", [1, 3, 8])
@pytest.mark.parametrize("shift2", [False, True])
def test_table_kernel_over_rows_head_dim_64_vs_float64(g, shift2):
    """turbo4 at head_dim 64 (34-byte rows, K runs of 2 words and V runs of 1), GQA 3 as SmolLM2-135M's."""
    from test_gluon_decode import TOL
    assert _check_rows("turbo4", g, [2100, 130, 3, 64], 1024, d=64, shift2=shift2) < TOL
    assert _check_rows("turbo4", g, [777, 65, 1], 64, d=64, shift2=shift2, per_head=True) < TOL


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind,d,warps,pipe,maxnreg", [("turbo4", 128, 8, 3, 232), ("turbo4", 128, 4, 3, 200),
                                                       ("turbo4", 128, 8, 2, 168), ("turbo2", 128, 8, 2, 168),
                                                       ("turbo3", 128, 8, 2, 168)])
def test_table_kernel_over_rows_configurations(kind, d, warps, pipe, maxnreg):
    from test_gluon_decode import TOL
    kw = dict(lut_warps=warps, lut_pipe=pipe, lut_maxnreg=maxnreg)
    assert _check_rows(kind, 4, [1500, 40, 2], 256, d=d, **kw) < TOL
    assert _check_rows(kind, 4, [1500, 40, 2], 256, d=d, shift2=True, **kw) < TOL


def test_launch_rows_names_bad_input():
    """What launch_rows refuses, with what it takes, before anything reaches a kernel."""
    from compactkv.attention.triton.decode import packed_kind
    from compactkv.attention.triton.gluon import launch_rows, rows_unsupported
    t4, t3, t2 = (packed_kind(Codec(k, 128)) for k in ("turbo4", "turbo3", "turbo2"))
    q8 = packed_kind(Codec("q8_0", 128))
    assert rows_unsupported(t4, t4, 4, 1, 1024) is None and rows_unsupported(t3, t3, 8, 1, 64) is None
    assert rows_unsupported(t2, t2, 1, 1, 1 << 30) is None
    assert "reads turbo4, turbo3 or turbo2" in rows_unsupported(q8, q8, 4, 1, 1024)
    t4_64, t2_64 = packed_kind(Codec("turbo4", 64)), packed_kind(Codec("turbo2", 64))
    assert rows_unsupported(t4_64, t4_64, 3, 1, 1024) is None  # SmolLM2's shape: head_dim 64, 3 query heads per KV
    assert "128 for turbo2" in rows_unsupported(t2_64, t2_64, 4, 1, 1024)
    assert "power of two" in rows_unsupported(t4, t4, 4, 1, 1000)
    assert "power of two" in rows_unsupported(t4, t4, 4, 1, 16)
    assert "one-token" in rows_unsupported(t4, t4, 4, 2, 1024)
    assert "at most 8" in rows_unsupported(t4, t4, 16, 1, 1024)
    q, w = torch.zeros(1, 2, 4, 128), torch.eye(128)
    tab, lens = torch.zeros(1, 3, dtype=torch.int64), torch.full((1,), 8, dtype=torch.int32)
    with pytest.raises(ValueError, match="power of two"):
        launch_rows(q, tab, tab, lens, t4, t4, chunk=1000, max_len=8, w=w)
    with pytest.raises(ValueError, match="lut_pipe 2 or 3"):
        launch_rows(q, tab, tab, lens, t4, t4, chunk=1024, max_len=8, w=w, lut_pipe=0)
    with pytest.raises(ValueError, match="k_table must be a contiguous int64"):
        launch_rows(q, tab.int(), tab, lens, t4, t4, chunk=1024, max_len=8, w=w)
    with pytest.raises(ValueError, match="v_table must be a contiguous int64"):
        launch_rows(q, tab, tab[:0], lens, t4, t4, chunk=1024, max_len=8, w=w)
    with pytest.raises(ValueError, match="lengths must be int32"):
        launch_rows(q, tab, tab, lens.long(), t4, t4, chunk=1024, max_len=8, w=w)
    for bad in (torch.zeros(1, 8, dtype=torch.float16), torch.zeros(1, 7), torch.zeros(2, 8), torch.zeros(8),
                torch.zeros(1, 16)[:, ::2], [0.0] * 8):
        with pytest.raises(ValueError,
                           match=r"bias must be float32 \[1, >= 8\] \(batch rows, tokens; token stride 1\)"):
            launch_rows(q, tab, tab, lens, t4, t4, chunk=1024, max_len=8, w=w, bias=bad)
    with pytest.raises(ValueError, match="q must be a float"):
        launch_rows(q.int(), tab, tab, lens, t4, t4, chunk=1024, max_len=8, w=w)


@pytest.mark.parametrize("kind,d,pipe,maxnreg", [("turbo4", 128, 2, 255), ("turbo3", 128, 2, 255),
                                                 ("turbo2", 128, 2, 255), ("turbo4", 128, 3, 255),
                                                 ("turbo4", 64, 3, 232)])
def test_table_kernel_over_rows_compiles_for_sm90(kind, d, pipe, maxnreg):
    """sm_90 build of the row reader: the table still the only shared buffer and one shared read per code byte;
    each code word read as aligned words (a run's words plus one) and funnel-shifted, not byte by byte."""
    sass_decode = _sass_decode()
    from compactkv.attention.triton.gluon import lut_smem
    s = sass_decode.summary(kind, lut=True, d=d, warps=8, pipe=pipe, maxnreg=maxnreg, qmap=True, rows=True)
    ops = s["ops"]
    bits = int(kind[-1])
    assert s["shared"] == lut_smem(8, d, pipe, bits=bits)
    assert ops["LDS"] == 2 * (d // 2 if bits == 3 else d * bits // 8)  # table keys of a tile's K and V per lane
    assert ops["LDL"] + ops["STL"] == 0
    words = 2 * (d * bits // 8) // 4  # K and V code words of a tile per lane
    assert words < ops["LDG"] <= 2 * words + 12  # (runs + one per run; chunk-table entries, norms)
    assert ops["LDG"] > 0 and not any(op.startswith("LDG") and "U8" in op for op in ops)
