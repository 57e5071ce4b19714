"""Sizes and token counts as people type them ("32GiB", "24GB", "128K"), and the memory `auto` reads."""

from __future__ import annotations

import re
from pathlib import Path

_UNITS = {"": None, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
          "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_MEMORY_HELP = "expected a size such as 32GiB, 24GB, 16G (= GiB), 512MiB, or auto"


def parse_memory(text: str) -> int:
    """Bytes in a size string: binary units KiB/MiB/GiB/TiB (bare K/M/G/T mean the same), decimal KB/MB/GB/TB."""
    m = _SIZE.match(str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"bad memory size {text!r}: {_MEMORY_HELP}")
    unit = _UNITS[m.group(2).lower()]
    if unit is None:
        raise ValueError(f"memory size {text!r} has no unit: {_MEMORY_HELP}")
    value = int(float(m.group(1)) * unit)
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return value


def parse_context(text: str | int) -> int:
    """Tokens in "131072", "128K" or "1M" (K = 1024 tokens)."""
    m = _SIZE.match(str(text))
    scale = {"": 1, "k": 1024, "m": 1024**2}.get(m.group(2).lower()) if m else None
    if scale is None:
        raise ValueError(f"bad context {text!r}: expected a token count such as 131072, 128K or 1M")
    tokens = float(m.group(1)) * scale
    if tokens < 1 or tokens != int(tokens):
        raise ValueError(f"context must be a positive whole number of tokens, got {text!r}")
    return int(tokens)


def fmt_bytes(n: float) -> str:
    """Binary units with three significant digits: 10.0 GiB, 512 MiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:,.0f} {unit}"
    return f"{int(n)} B"


def meminfo_available(path: str | Path = "/proc/meminfo") -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no MemAvailable line in {path}")


def detect_memory() -> tuple[int, str, str]:
    """(bytes, device, how) for `--memory auto`: free memory of CUDA device 0 if there is one, else system RAM."""
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        name = torch.cuda.get_device_name(0)
        return int(free), "cuda", f"free on {name} (torch.cuda.mem_get_info, {fmt_bytes(total)} total)"
    try:
        return meminfo_available(), "cpu", "MemAvailable in /proc/meminfo"
    except OSError as e:
        raise ValueError(f"cannot read free memory ({e}); pass --memory SIZE") from None
