"""Weights bytes: exact from the model files when known, else parameters x bits per weight of a dtype or GGUF type."""

from __future__ import annotations

from .shapes import ModelShape
from .units import parse_memory

# Exact for plain types and the fixed-block GGUF types (q8_0 = 34 bytes / 32 weights, q4_0 = 18 / 32, ...).
# K-quant mixes vary by model: average bpw from llama.cpp tools/quantize/README.md (Llama 2 7B table).
WEIGHT_BITS = {
    "f32": 32.0, "f16": 16.0, "bf16": 16.0,
    "q8_0": 8.5, "q6_k": 6.56, "q5_k_m": 5.68, "q5_k_s": 5.52, "q5_1": 6.0, "q5_0": 5.5,
    "q4_k_m": 4.84, "q4_k_s": 4.58, "q4_1": 5.0, "q4_0": 4.5,
    "q3_k_l": 4.27, "q3_k_m": 3.91, "q3_k_s": 3.50, "q2_k": 3.35,
}


def weights_bytes(shape: ModelShape, spec: str | None = None) -> tuple[int, str]:
    """(bytes, how) for the weights. `spec`: None or "file" (file size if known, else the shape's dtype),
    a dtype / GGUF type name from WEIGHT_BITS, or a size such as "18GiB"."""
    if spec in (None, "", "file"):
        if shape.weights_bytes is not None:
            return shape.weights_bytes, "file"
        if spec == "file":
            raise ValueError(f"{shape.name} has no weights file to measure; give a dtype ({', '.join(WEIGHT_BITS)})")
        spec = shape.weights_dtype
    key = spec.lower().replace("-", "_")
    if key in WEIGHT_BITS:
        return int(shape.params * WEIGHT_BITS[key] / 8), f"{shape.params / 1e9:.2f}B params x {key}"
    if key[:1].isdigit():
        return parse_memory(spec), "given"
    raise ValueError(f"unknown weights spec {spec!r}: use file, a size like 18GiB, or one of {', '.join(WEIGHT_BITS)}")
