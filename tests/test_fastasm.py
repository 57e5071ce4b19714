"""The inline-PTX centroid decoders of the fast decode kernel, run on the CPU through a small PTX interpreter."""

from __future__ import annotations

import random

import pytest
import torch

from compactkv.attention.triton.fastasm import decode_asm, emulate, parts, symmetric
from compactkv.core.codebook import lloyd_max


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_decoder_matches_codebook(bits, d):
    rng = random.Random(bits * 1000 + d)
    c = torch.tensor(lloyd_max(d, bits).centroids, dtype=torch.float32).half().float().tolist()
    assert decode_asm(d, bits) is not None
    for _ in range(200):
        data = [rng.getrandbits(8) for _ in range(4)]
        want = [[c[(x >> (bits * p)) & ((1 << bits) - 1)] for x in data] for p in range(parts(d, bits))]
        assert emulate(d, bits, [bytes(data)]) == want


def test_no_three_bit_decoder():
    assert decode_asm(128, 3) is None  # turbo3 stays on the split kernel


def test_every_byte_value_turbo4():
    c = torch.tensor(lloyd_max(128, 4).centroids, dtype=torch.float32).half().float().tolist()
    for v in range(0, 256, 4):
        data = [v, v + 1, v + 2, v + 3]
        got = emulate(128, 4, [bytes(data)])
        assert got == [[c[x & 15] for x in data], [c[x >> 4] for x in data]]


def test_codebooks_symmetric_in_fp16():
    assert all(symmetric(d, b) for d in (32, 64, 128, 256) for b in (2, 3, 4))
