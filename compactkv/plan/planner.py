"""The plan: for each KV config, weights + KV + overhead at the asked context and batch, whether it fits the budget,
the largest context and batch that fit, and a recommendation from the quality ranking."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .kvconfig import KVConfig
from .kvsize import bits_per_value, kv_bytes, kv_bytes_per_token
from .overhead import OverheadModel
from .ranking import Ranking
from .shapes import ModelShape

MAX_SEARCH_CONTEXT = 1 << 30  # contexts beyond this are reported as unbounded (sliding-window-only models)
MAX_SEARCH_BATCH = 1 << 20


@dataclass(frozen=True)
class PlanRow:
    """One KV config's numbers; max_context None = unbounded, 0 = not even one token fits."""

    config: str
    k: str
    v: str
    policy: str
    bits_per_value: float
    kv_bytes_per_token: int
    kv_bytes: int
    weights_bytes: int
    overhead_bytes: int
    total_bytes: int
    fits: bool
    max_context: int | None
    max_batch: int


@dataclass(frozen=True)
class Plan:
    """The whole answer, as printed and as written by --json."""

    model: str
    model_source: str
    n_layers: int
    n_kv_layers: int
    n_sliding: int
    model_max_context: int | None
    memory_bytes: int
    memory_source: str
    device: str
    context: int
    batch: int
    fp16_tokens: int
    weights_source: str
    overhead: dict
    ranking_source: str
    rows: tuple[PlanRow, ...]
    recommendation: str | None
    recommendation_text: str

    def to_dict(self) -> dict:
        return asdict(self)


def _largest(fits, hi_cap: int) -> int | None:
    """Largest n in [0, hi_cap] with fits(n) for a monotone predicate (fits(0) assumed); None if hi_cap fits."""
    if fits(hi_cap):
        return None
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def is_dense(shape: ModelShape, config: KVConfig) -> bool:
    """True when every layer stores f16 K and V: the overhead model's uncompressed (dense) attention path."""
    return all(k == v == "f16" for k, v in config.layer_kinds(shape.n_kv_layers))


def plan_row(shape: ModelShape, config: KVConfig, memory: int, context: int, batch: int, weights: int,
             overhead: OverheadModel, fp16_tokens: int = 0) -> PlanRow:
    """Numbers for one config; the searches reuse the exact same total() as the fits column."""
    def total(t: int, b: int) -> int:
        return weights + kv_bytes(shape, config, t, b, fp16_tokens) + overhead.config_bytes(shape, config, t, b,
                                                                                                fp16_tokens)

    at = total(context, batch)
    max_ctx = _largest(lambda t: t == 0 or total(t, batch) <= memory, MAX_SEARCH_CONTEXT)
    max_batch = _largest(lambda b: b == 0 or total(context, b) <= memory, MAX_SEARCH_BATCH)
    return PlanRow(config.name, config.k, config.v, config.policy, round(bits_per_value(shape, config), 4),
                   kv_bytes_per_token(shape, config), kv_bytes(shape, config, context, batch, fp16_tokens), weights,
                   overhead.config_bytes(shape, config, context, batch, fp16_tokens), at, at <= memory, max_ctx,
                   MAX_SEARCH_BATCH if max_batch is None else max_batch)


def recommend(rows, ranking: Ranking, context: int, batch: int) -> tuple[str | None, str]:
    """(config name, sentence): the best-ranked config that fits, or what to do when none does."""
    ranked = sorted(rows, key=lambda r: ranking.key(r.config, r.bits_per_value))
    for row in ranked:
        if row.fits:
            return row.config, (f"recommended: {row.config} (best-ranked config that fits {context:,} tokens x "
                                f"{batch}; ranking: {ranking.source})")
    roomiest = max(rows, key=lambda r: float("inf") if r.max_context is None else r.max_context)
    if roomiest.max_context == 0:
        return None, "nothing fits: the weights and runtime alone exceed the memory budget"
    reach = "any context" if roomiest.max_context is None else f"{roomiest.max_context:,} tokens"
    return None, f"nothing fits {context:,} tokens x {batch}; the roomiest config, {roomiest.config}, reaches {reach}"


def make_plan(shape: ModelShape, configs: list[KVConfig], memory: int, context: int, *, batch: int = 1,
              weights: tuple[int, str], overhead: OverheadModel, ranking: Ranking, memory_source: str = "given",
              device: str = "cpu", fp16_tokens: int = 0) -> Plan:
    """Evaluate every config; `weights` is (bytes, how) from weights.weights_bytes."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if fp16_tokens < 0:
        raise ValueError(f"fp16 tokens must be >= 0, got {fp16_tokens}")
    rows = tuple(plan_row(shape, c, memory, context, batch, weights[0], overhead, fp16_tokens) for c in configs)
    best, text = recommend(rows, ranking, context, batch)
    return Plan(shape.name, shape.source, shape.n_layers, shape.n_kv_layers, shape.n_sliding, shape.max_context,
                memory, memory_source, device, context, batch, fp16_tokens, weights[1], asdict(overhead),
                ranking.source, rows, best, text)
