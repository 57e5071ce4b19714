"""Model shape from a Hugging Face config.json (or a folder holding one), without loading any weights.

transformers' own config classes fill the defaults a file omits and derive `layer_types` (Gemma's 5:1 sliding pattern,
Qwen2's max_window_layers, hybrid linear-attention layers), so the planner counts layers the way the model runs them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .shapes import KVLayer, ModelShape, estimate_params

KV_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention")
_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def _text_config(raw: dict):
    """The transformers config object for the text decoder described by `raw`."""
    from transformers import AutoConfig

    raw = dict(raw)
    model_type = raw.pop("model_type", None)
    if not model_type:
        raise ValueError("config.json has no model_type; cannot tell the architecture")
    try:
        config = AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError) as e:
        raise ValueError(f"transformers does not know model_type {model_type!r}: {e}") from None
    return config.get_text_config()


def _windows(c) -> list[int | None] | None:
    """Per-layer window (None = full) for KV-carrying layers; layers without a KV cache are dropped."""
    n = c.num_hidden_layers
    window = getattr(c, "sliding_window", None)
    types = getattr(c, "layer_types", None)
    if not types:
        use = getattr(c, "use_sliding_window", True)
        return [window if (window and use) else None] * n
    chunk = getattr(c, "attention_chunk_size", None)
    out = []
    for t in types:
        if t == "full_attention":
            out.append(None)
        elif t == "sliding_attention":
            out.append(window)
        elif t == "chunked_attention":
            out.append(chunk)
    return out


def _safetensors_size(folder: Path) -> tuple[int, int] | None:
    """(bytes, params) of the tensors in folder/*.safetensors, read from their headers only."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    nbytes = params = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            lo, hi = info["data_offsets"]
            nbytes += hi - lo
            count = 1
            for s in info["shape"]:
                count *= s
            params += count
    return nbytes, params


def shape_from_hf(path: str | Path) -> ModelShape:
    """ModelShape from a config.json file or a folder containing one (weights sized from *.safetensors if present)."""
    path = Path(path)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise ValueError(f"no config.json at {path}")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file} is not valid JSON: {e}") from None
    c = _text_config(raw)
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    windows = _windows(c)
    layers = tuple(KVLayer(kv, head_dim, head_dim, w) for w in windows)
    inter = getattr(c, "intermediate_size", None) or 4 * c.hidden_size
    experts = getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None) or 1
    inter_e = getattr(c, "moe_intermediate_size", None) or inter
    params = estimate_params(c.num_hidden_layers, c.hidden_size, heads, kv, head_dim, inter_e if experts > 1 else inter,
                             c.vocab_size, tied=bool(getattr(c, "tie_word_embeddings", False)), experts=experts)
    sized = _safetensors_size(config_file.parent)
    weights_bytes = None
    if sized:
        weights_bytes, params = sized
    dtype = str(getattr(c, "dtype", None) or raw.get("torch_dtype") or "bfloat16").replace("torch.", "")
    return ModelShape(
        name=raw.get("_name_or_path") or config_file.parent.name, n_layers=c.num_hidden_layers, n_heads=heads,
        hidden=c.hidden_size, intermediate=inter, vocab=c.vocab_size, layers=layers, params=params,
        source=f"config {config_file}" + (" + safetensors headers" if sized else ""), weights_bytes=weights_bytes,
        weights_dtype=_DTYPES.get(dtype, "bf16"), max_context=getattr(c, "max_position_embeddings", None))
