"""One entry point for model shapes: a GGUF file, a HF config.json or folder, or a built-in preset name."""

from __future__ import annotations

from pathlib import Path

from .gguf_meta import shape_from_gguf
from .hf import shape_from_hf
from .presets import find_preset, preset_shape
from .shapes import ModelShape


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"GGUF"


def load_shape(model: str | Path) -> ModelShape:
    """ModelShape for `model`: an existing path is read (GGUF by magic bytes, else config.json), otherwise a preset."""
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return shape_from_hf(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return shape_from_gguf(ggufs[0])
        raise ValueError(f"{path} holds no config.json and {len(ggufs)} .gguf files; name the file")
    if path.is_file():
        return shape_from_gguf(path) if _is_gguf(path) else shape_from_hf(path)
    if find_preset(str(model)) is None and str(model).endswith((".gguf", ".json")):
        raise ValueError(f"no such file: {model}")
    return preset_shape(str(model))
