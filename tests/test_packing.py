"""Bit packing: lossless roundtrip, the documented byte layout, exact sizes, and docs/format.md's table."""

import re
from pathlib import Path

import pytest
import torch

from compactkv.core import KINDS, Codec, pack_bits, row_bytes, unpack_bits
from compactkv.core.packing import packed_nbytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BITS = (1, 2, 3, 4, 8)
FORMAT_DOC = Path(__file__).resolve().parents[1] / "docs" / "format.md"


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("lead", [(), (1,), (7,), (3, 5), (2, 1, 9)])
@pytest.mark.parametrize("n", (8, 24, 40, 128, 136))
def test_pack_unpack_roundtrip(bits, lead, n):
    idx = torch.randint(0, 2**bits, (*lead, n), dtype=torch.uint8)
    packed = pack_bits(idx, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (*lead, n * bits // 8) == (*lead, packed_nbytes(n, bits))
    out = unpack_bits(packed, bits, n)
    assert out.dtype == torch.uint8 and torch.equal(out, idx)


@pytest.mark.parametrize("bits", BITS)
def test_every_byte_value_survives_unpack_pack(bits):
    """Packing is a bijection: all 256 byte values (in every position of a group) come back."""
    n = 8 * (3 if bits == 3 else 1)
    per_group = packed_nbytes(n, bits)
    packed = ((torch.arange(256)[:, None] + 37 * torch.arange(per_group)) % 256).to(torch.uint8)
    assert torch.equal(pack_bits(unpack_bits(packed, bits, n), bits), packed)


@pytest.mark.parametrize("bits, idx, expected", [
    (1, [1, 0, 0, 0, 0, 0, 0, 1], [0x81]),
    (2, [1, 2, 3, 0, 0, 0, 0, 3], [0x39, 0xC0]),
    (3, list(range(8)), [0x88, 0xC6, 0xFA]),
    (4, [1, 2, 15, 0, 0, 0, 0, 0], [0x21, 0x0F, 0x00, 0x00]),
    (8, [5, 250, 0, 0, 0, 0, 0, 1], [5, 250, 0, 0, 0, 0, 0, 1]),
])
def test_documented_bit_layout(bits, idx, expected):
    """Lowest bits first within a byte; 3-bit groups are one little-endian 24-bit word (docs/format.md)."""
    packed = pack_bits(torch.tensor(idx, dtype=torch.uint8), bits)
    assert packed.tolist() == expected


@pytest.mark.parametrize("call", [
    lambda: pack_bits(torch.zeros(8, dtype=torch.uint8), 5),
    lambda: pack_bits(torch.zeros(12, dtype=torch.uint8), 2),
    lambda: unpack_bits(torch.zeros(3, dtype=torch.uint8), 2, 8),
    lambda: unpack_bits(torch.zeros(2, dtype=torch.uint8), 6, 8),
])
def test_packing_rejects_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", (64, 96, 128, 160, 256))
def test_bits_per_value_is_what_encode_produces(kind, d):
    codec = Codec(kind, d)
    x = torch.randn(5, 3, d)
    rows = codec.encode(x)
    assert rows.dtype == torch.uint8 and rows.shape == (5, 3, codec.row_bytes)
    assert codec.nbytes(15) == rows.numel() == 15 * row_bytes(kind, d)
    assert codec.bits_per_value == 8 * rows.numel() / (15 * d)


def doc_table() -> dict[str, list[str]]:
    """The bytes-per-vector table of docs/format.md: kind -> its cells."""
    text = FORMAT_DOC.read_text()
    block = text[text.index("| kind | d=64 bytes"):]
    rows = {}
    for line in block.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_format_doc_table_equals_row_bytes():
    table = doc_table()
    assert list(table) == list(KINDS)
    for kind, cells in table.items():
        sizes = [row_bytes(kind, d) for d in (64, 128, 256)]
        assert [int(c) for c in cells[:3]] == sizes, kind
        assert [float(c) for c in cells[3:]] == [8 * s / d for s, d in zip(sizes, (64, 128, 256))], kind


def test_format_doc_names_every_kind_family():
    text = FORMAT_DOC.read_text()
    for name in ("`f16`", "`q8_0`", "`turboB`", "`turboB.5`", "`turboB+qjl`"):
        assert re.search(re.escape(name), text), name


def test_format_doc_table_is_the_generated_one():
    from compactkv.bench.codec import layout_table

    assert layout_table() in FORMAT_DOC.read_text()
