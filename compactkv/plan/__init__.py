"""Memory planning: what fits in a memory budget, at what context, with which KV kinds (see docs/planning.md)."""

from .build import PlanSettings, build_plan
from .kvconfig import DEFAULT_CONFIGS, KVConfig, parse_config, parse_configs
from .kvsize import bits_per_value, kv_bytes, kv_bytes_per_token, layer_bytes
from .overhead import OverheadModel, load_overhead
from .planner import Plan, PlanRow, make_plan
from .presets import PRESETS, preset_shape
from .ranking import Ranking, load_ranking
from .shapes import KVLayer, ModelShape
from .sources import load_shape
from .units import parse_context, parse_memory
from .weights import WEIGHT_BITS, weights_bytes

__all__ = [
    "DEFAULT_CONFIGS", "KVConfig", "KVLayer", "ModelShape", "OverheadModel", "PRESETS", "Plan", "PlanRow",
    "PlanSettings", "Ranking", "WEIGHT_BITS", "bits_per_value", "build_plan", "kv_bytes", "kv_bytes_per_token",
    "layer_bytes", "load_overhead", "load_ranking", "load_shape", "make_plan", "parse_config", "parse_configs",
    "parse_context", "parse_memory", "preset_shape", "weights_bytes",
]
