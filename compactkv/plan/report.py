"""The plan as a readable table: rich when it is installed and the output is a terminal, plain text otherwise."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .planner import Plan
from .units import fmt_bytes

HEADERS = ("config", "bits/val", "KV/token", "KV@ctx", "weights", "overhead", "total", "fits", "max context",
           "max batch")


def _cells(row, selected: str | None, recommended: str | None) -> list[str]:
    mark = ("*" if row.config == selected else "") + ("<" if row.config == recommended else "")
    ctx = "unbounded" if row.max_context is None else f"{row.max_context:,}"
    return [row.config + (f" {mark}" if mark else ""), f"{row.bits_per_value:.2f}", fmt_bytes(row.kv_bytes_per_token),
            fmt_bytes(row.kv_bytes), fmt_bytes(row.weights_bytes), fmt_bytes(row.overhead_bytes),
            fmt_bytes(row.total_bytes), "yes" if row.fits else "NO", ctx, f"{row.max_batch:,}"]


def header_lines(plan: Plan) -> list[str]:
    sliding = f", {plan.n_sliding} sliding-window" if plan.n_sliding else ""
    limit = f", trained context {plan.model_max_context:,}" if plan.model_max_context else ""
    return [
        f"model    {plan.model}: {plan.n_layers} layers, {plan.n_kv_layers} with KV{sliding}{limit}  ({plan.model_source})",
        f"memory   {fmt_bytes(plan.memory_bytes)} ({plan.memory_source}), device {plan.device}",
        f"request  context {plan.context:,} tokens x batch {plan.batch}"
        + (f", {plan.fp16_tokens} tokens per layer kept in f16" if plan.fp16_tokens else ""),
        f"weights  {plan.weights_source}; overhead {plan.overhead['source']}"
        f" (prefill chunk {plan.overhead['prefill_chunk'] or 'whole prompt'})",
    ]


def render_plain(plan: Plan, selected: str | None = None) -> str:
    """Fixed-width text table with the header and the recommendation line."""
    rows = [list(HEADERS)] + [_cells(r, selected, plan.recommendation) for r in plan.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = header_lines(plan) + [""]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", plan.recommendation_text, "(* = the config you asked for, < = recommended)"]
    return "\n".join(lines)


def print_plan(plan: Plan, selected: str | None = None, file=None) -> None:
    """Print with rich if available and writing to a terminal, else plain text."""
    file = file or sys.stdout
    if not (file.isatty() and importlib.util.find_spec("rich")):
        print(render_plain(plan, selected), file=file)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file)
    for line in header_lines(plan):
        console.print(line, highlight=False)
    table = Table(*HEADERS)
    for row in plan.rows:
        cells = _cells(row, selected, plan.recommendation)
        table.add_row(*cells, style=None if row.fits else "dim")
    console.print(table)
    console.print(plan.recommendation_text, "(* = the config you asked for, < = recommended)", highlight=False)


def write_json(plan: Plan, path: str | Path) -> None:
    """The plan as JSON for machines (all byte counts exact integers)."""
    Path(path).write_text(json.dumps(asdict(plan), indent=2) + "\n")
