"""How far could a better quantizer take turbo4/turbo3 on the default model? (issue 4, measured bound)

Runs `compactkv bench ppl` with the MSE kinds' scalar Lloyd-Max codebook replaced by the Gaussian rate-distortion
test channel at the same index rate R (bits per rotated coordinate): each vector's norm is kept exactly (float32)
and its rotated unit vector u (coordinates ~ N(0, 1/d)) becomes u_hat = a * (u + z), z ~ N(0, s^2) with
a = 1 - 2^(-2R) and s^2 = 2^(-2R) / (d * a): the reconstruction of minimum mean squared error that any quantizer
spending R bits per coordinate on i.i.d. Gaussian coordinates can reach (distortion 2^(-2R) per unit variance, the
Shannon bound; the 4-bit Lloyd-Max codebook has 0.0095, 2.4x more). Everything else is the cache as shipped: the
same rotation, 4 fp16 sinks, centered and query-scaled keys, no fp16 recent window, the bench's scoring. So the
ΔPPL printed for "turbo4" / "turbo3" is what an ideal quantizer at 4 / 3 index bits (plus the norm) would give.

    python scripts/rd_bound.py --chunks 16 --kv f16,turbo4,turbo3 --json out.json

(An emulation for measuring: rows hold float32 values, so the table's bits/value and KV bytes columns count those
float32 rows, not a storable format. `--renorm` rescales each u_hat to unit length (turbo's norm correction)
instead of the minimum-MSE shrinkage. `--extra-bits N` adds N to the emulated rate: with a large N the run must
match f16, which checks the harness.)
"""

from __future__ import annotations

import argparse
import math

import torch

from compactkv.core import codec as codec_mod

_GEN = torch.Generator().manual_seed(2504)
EXTRA_BITS = 0
RENORM = False  # --renorm: rescale u_hat to unit length (as turbo's norm correction does) instead of shrinking it


def _patch() -> None:
    Codec = codec_mod.Codec
    init, encode, key_parts, decode = Codec.__init__, Codec.encode, Codec.key_parts, Codec.decode

    def is_mse(self) -> bool:
        return self.spec.family == "mse"

    def __init__(self, *a, **k):
        init(self, *a, **k)
        if is_mse(self):
            self.row_bytes = 4 * (self.head_dim + 1)  # float32 norm + float32 rotated unit vector

    def _encode(self, x, check_finite=True):
        if not is_mse(self):
            return encode(self, x, check_finite)
        self._check_input(x, check_finite)
        xf = x.float()
        d, r = self.head_dim, self.spec.bits + EXTRA_BITS
        norm = xf.norm(dim=-1, keepdim=True)
        u = self._mse[0].rotation.forward(xf / torch.where(norm > 0, norm, torch.ones_like(norm)))
        a = 1.0 - 2.0 ** (-2 * r)
        s = math.sqrt(2.0 ** (-2 * r) / (d * a))
        z = torch.randn(u.shape, generator=_GEN).to(u.device) * s
        u_hat = a * (u + z)
        if RENORM:
            u_hat = u_hat / u_hat.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        return torch.cat([norm, u_hat], dim=-1).contiguous().view(torch.uint8)

    def _key_parts(self, rows):
        if not is_mse(self):
            return key_parts(self, rows)
        v = rows.contiguous().view(torch.float32)
        return [(v[..., 1:], v[..., 0])]

    def _decode(self, rows, dtype=torch.float32):
        if not is_mse(self):
            return decode(self, rows, dtype)
        vals, norm = _key_parts(self, rows)[0]
        return self._mse[0].rotation.inverse(vals * norm.unsqueeze(-1)).to(dtype)

    Codec.__init__, Codec.encode, Codec.key_parts, Codec.decode = __init__, _encode, _key_parts, _decode


def main() -> None:
    from compactkv.bench import ppl

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                epilog="every other argument goes to `compactkv bench ppl`")
    p.add_argument("--extra-bits", type=int, default=0, help="add this many bits to the emulated rate")
    p.add_argument("--renorm", action="store_true", help="rescale each reconstruction to unit length")
    own, rest = p.parse_known_args()
    global EXTRA_BITS, RENORM
    EXTRA_BITS, RENORM = own.extra_bits, own.renorm
    _patch()
    print("EMULATION: MSE kinds use the Gaussian rate-distortion test channel at their index rate (see "
          "scripts/rd_bound.py); f16 is real")
    ppl.run_argv(rest)


if __name__ == "__main__":
    main()
