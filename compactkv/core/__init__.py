"""Core math: rotation, codebooks, packing, quantizers and the Codec. Pure torch/numpy, no transformers."""

from .codebook import Codebook, gaussian_lloyd_max, lloyd_max
from .codec import Codec, Segment, estimate_inner_product
from .kinds import KINDS, bits_per_value, check_head_dim, parse_kind, row_bytes
from .packing import pack_bits, unpack_bits
from .rotation import Rotation, get_rotation, split_dim

__all__ = ["Codebook", "Codec", "KINDS", "Rotation", "Segment", "bits_per_value", "check_head_dim",
           "estimate_inner_product", "gaussian_lloyd_max", "get_rotation", "lloyd_max", "pack_bits",
           "parse_kind", "row_bytes", "split_dim", "unpack_bits"]
