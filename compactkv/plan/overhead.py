"""Memory beyond weights and KV: the runtime and the activations of one forward pass, as a documented formula.

    overhead(T, B) = base
                   + B * c * (hidden_buffers * hidden + mlp_buffers * intermediate) * act_bytes    activations
                   + B * r * vocab * 4                                                           fp32 logits
                   + B * n_heads * c * min(T, score_block) * score_bytes                         attention scores
                   + B * c * T * mask_bytes                                                      attention masks
    c = min(T, prefill_chunk) tokens per forward (T when prefill_chunk is None), r = min(c, logits_rows),
    score_block None = no cap (scores over the whole history at once).

The constants are provisional guesses until `compactkv bench ceiling` measures them: a calibration JSON
(`compactkv/plan/calibration.json`, or `--calibration PATH`) with one object per device overrides them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .shapes import ModelShape

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")


@dataclass(frozen=True)
class OverheadModel:
    """Constants of the overhead formula for one device; `source` says whether they were measured."""

    base_bytes: int
    hidden_buffers: float
    mlp_buffers: float
    act_bytes: int
    logits_rows: int | None
    score_bytes: float
    prefill_chunk: int | None
    source: str
    score_block: int | None = None  # attention processes keys in blocks of this many tokens (None = all at once)
    mask_bytes: float = 0.0  # bytes per (query, key) pair of masks materialized for a forward

    def bytes(self, shape: ModelShape, context: int, batch: int = 1) -> int:
        """Overhead in bytes for `batch` sequences prefilled to `context` tokens."""
        c = context if self.prefill_chunk is None else min(context, self.prefill_chunk)
        rows = c if self.logits_rows is None else min(c, self.logits_rows)
        act = c * (self.hidden_buffers * shape.hidden + self.mlp_buffers * shape.intermediate) * self.act_bytes
        keys = context if self.score_block is None else min(context, self.score_block)
        scores = shape.n_heads * c * keys * self.score_bytes + c * context * self.mask_bytes
        return int(self.base_bytes + batch * (act + rows * shape.vocab * 4 + scores))


# CALIBRATION: provisional constants, not yet measured. base: CPU = `import torch, transformers` peak RSS on the
# dev box (236 MiB) rounded up; CUDA = typical context + cuBLAS workspace. Buffers: residual, norm, q/k/v/o and
# attention output alive at once (8 x hidden), gate/up/act of the MLP (3 x intermediate). Fused SDPA keeps no scores.
PROVISIONAL = {
    "cpu": OverheadModel(300 * 2**20, 8.0, 3.0, 4, 1, 0.0, 512, "provisional: not yet measured"),
    "cuda": OverheadModel(512 * 2**20, 8.0, 3.0, 2, 1, 0.0, 512, "provisional: not yet measured"),
}


def load_overhead(device: str = "cpu", path: str | Path | None = None, prefill_chunk: int | None = -1) -> OverheadModel:
    """The overhead model for `device`: measured calibration from `path` (or the shipped file) if any, else provisional.
    `prefill_chunk` overrides the chunk (None = whole prompt in one forward; -1 keeps the model's)."""
    if device not in PROVISIONAL:
        raise ValueError(f"unknown device {device!r}; accepted: {', '.join(PROVISIONAL)}")
    model = PROVISIONAL[device]
    file = Path(path) if path else CALIBRATION_FILE
    if path and not file.is_file():
        raise ValueError(f"no calibration file at {file}")
    if file.is_file():
        entry = json.loads(file.read_text()).get(device)
        if entry:
            names = {f.name for f in fields(OverheadModel)}
            unknown = set(entry) - names
            if unknown:
                raise ValueError(f"{file}: unknown calibration keys {sorted(unknown)}; accepted: {sorted(names)}")
            model = replace(model, **entry)
    if prefill_chunk != -1:
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill chunk must be >= 1 token, got {prefill_chunk}")
        model = replace(model, prefill_chunk=prefill_chunk)
    return model
