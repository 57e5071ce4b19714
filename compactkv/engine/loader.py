"""Load a causal LM and its tokenizer from a local HF folder, a GGUF file, or a hub id (where the network allows).

The compactkv attention is registered with transformers and requested by name when the attention package provides
it; otherwise the model uses SDPA (the cache factory then falls back to DynamicCache too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model_files import DEFAULT_MODEL_NAME, ensure_default_model

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


@dataclass(frozen=True)
class ModelSpec:
    """What to load. `model=None` means the default model; `gguf_file` names a file inside a folder or repo."""

    model: str | None = None
    gguf_file: str | None = None
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; accepted: {', '.join(DTYPES)}")
        resolve_device(self.device)


@dataclass(frozen=True)
class LoadedModel:
    """A ready model: the torch module, its tokenizer, and where they came from."""

    model: Any
    tokenizer: Any
    name: str
    source: str
    device: str
    attn_implementation: str
    load_seconds: float
    details: dict = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """'auto' → cuda when available else cpu; ValueError naming the accepted values otherwise."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ValueError(f"unknown device {device!r}; accepted: {', '.join(DEVICES)}")


def resolve_source(spec: ModelSpec) -> tuple[str, str | None, str]:
    """(folder or hub id, gguf file name or None, display name) for a spec, without loading anything."""
    if spec.model is None:
        path = ensure_default_model()
        return str(path.parent), path.name, DEFAULT_MODEL_NAME
    path = Path(spec.model).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"--model {spec.model!r} is a file but not a .gguf; pass a GGUF file, an HF folder or a hub id")
        return str(path.parent), path.name, path.stem
    if path.is_dir():
        if spec.gguf_file and not (path / spec.gguf_file).is_file():
            raise ValueError(f"--gguf-file {spec.gguf_file!r} not found in {path}")
        return str(path), spec.gguf_file, Path(spec.gguf_file).stem if spec.gguf_file else path.name
    if spec.model.startswith(("/", ".", "~")) or spec.model.endswith(".gguf") or spec.model.count("/") > 1:
        raise ValueError(f"--model {spec.model!r}: no such file or folder")
    return spec.model, spec.gguf_file, spec.model


def attention_implementation() -> str:
    """Register the compactkv attention if the attention package provides it; the name to load the model with."""
    try:
        from ..attention import register_attention
    except ImportError:
        return "sdpa"
    register_attention()
    return "compactkv"


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load model and tokenizer for `spec`, in eval mode on the chosen device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    device = resolve_device(spec.device)
    where, gguf, name = resolve_source(spec)
    dtype = spec.dtype if spec.dtype != "auto" else ("float32" if device == "cpu" else "bfloat16")
    attn = attention_implementation()
    extra = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype),
                                                     attn_implementation=attn, **extra)
    except OSError as e:
        raise ValueError(f"could not load model {where!r}: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    source = str(Path(where) / gguf) if gguf and Path(where).is_dir() else where
    details = {"format": "gguf" if gguf else "safetensors", "family": model.config.model_type,
               "parameter_count": sum(p.numel() for p in model.parameters()), "dtype": dtype}
    return LoadedModel(model, tokenizer, name, source, device, attn, time.perf_counter() - start, details)
