"""The commit a benchmark's report names: $COMPACTKV_COMMIT when set (a copy of the tree whose git metadata is
absent or stale, e.g. the GPU device's), else `git rev-parse --short HEAD` of this checkout, else None."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def commit() -> str | None:
    env = os.environ.get("COMPACTKV_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
