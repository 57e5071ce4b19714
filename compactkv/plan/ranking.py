"""The quality ranking behind the recommendation: shipped data, best config first, with its source stated.

compactkv/plan/quality_ranking.json holds {"source": ..., "metric": ..., "ranking": [config names, best first]}.
The quality benchmarks replace it with measured data; configs it does not list rank after those it does, by bits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .kvconfig import parse_config

RANKING_FILE = Path(__file__).with_name("quality_ranking.json")


@dataclass(frozen=True)
class Ranking:
    """Config names best first, and where the order comes from."""

    order: tuple[str, ...]
    source: str
    metric: str

    def key(self, name: str, bits: float) -> tuple[int, float]:
        """Sort key: listed configs by position, then unlisted ones by more bits first."""
        try:
            return (self.order.index(name), 0.0)
        except ValueError:
            return (len(self.order), -bits)


def load_ranking(path: str | Path | None = None) -> Ranking:
    """Ranking from `path` (default: the shipped file); config names are normalized to their canonical spelling."""
    file = Path(path) if path else RANKING_FILE
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read quality ranking {file}: {e}") from None
    if not isinstance(data, dict) or not data.get("source") or not isinstance(data.get("ranking"), list):
        raise ValueError(f"{file}: expected {{'source': str, 'metric': str, 'ranking': [config names]}}")
    order = tuple(parse_config(name).name for name in data["ranking"])
    return Ranking(order, str(data["source"]), str(data.get("metric", "")))
