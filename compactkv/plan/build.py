"""One call from user-level settings (strings as typed) to a Plan: what the CLI and the ceiling benchmark use."""

from __future__ import annotations

from dataclasses import dataclass

from compactkv.core.policy import preset_name

from .kvconfig import DEFAULT_CONFIGS, KVConfig, parse_config, parse_configs
from .overhead import load_overhead
from .planner import Plan, make_plan
from .ranking import load_ranking
from .sources import load_shape
from .units import detect_memory, parse_context, parse_memory
from .weights import weights_bytes


@dataclass(frozen=True)
class PlanSettings:
    """What `compactkv plan` was asked; every field a user-level value (sizes and contexts may be strings)."""

    model: str
    memory: str = "auto"
    context: str | int = 131072
    k: str = "turbo4"
    v: str | None = None
    policy: str | None = None
    configs: tuple[str, ...] | None = None  # None = DEFAULT_CONFIGS plus the selected one
    batch: int = 1
    weights: str | None = None  # None / "file" / dtype / size
    device: str | None = None  # None = the device `--memory auto` found, else cpu
    calibration: str | None = None
    prefill_chunk: int | None = -1  # -1 = the calibration's
    fp16_tokens: int = 0
    ranking: str | None = None


def selected_config(s: PlanSettings) -> KVConfig:
    """The config the user picked with --k / --v / --policy."""
    if s.policy:
        return parse_config(s.policy if ":" in s.policy else preset_name(s.policy), s.k, s.v)
    return parse_config(s.k if s.v in (None, s.k) else f"{s.k}/{s.v}")


def build_plan(s: PlanSettings) -> tuple[Plan, KVConfig]:
    """(plan, selected config) for the settings."""
    shape = load_shape(s.model)
    if str(s.memory).strip().lower() == "auto":
        memory, found, how = detect_memory()
    else:
        memory, found, how = parse_memory(s.memory), "cpu", "given"
    device = s.device or found
    chosen = selected_config(s)
    configs = parse_configs(s.configs if s.configs else DEFAULT_CONFIGS, s.k, s.v)
    if chosen.name not in {c.name for c in configs}:
        configs.append(chosen)
    plan = make_plan(shape, configs, memory, parse_context(s.context), batch=s.batch,
                     weights=weights_bytes(shape, s.weights),
                     overhead=load_overhead(device, s.calibration, s.prefill_chunk),
                     ranking=load_ranking(s.ranking), memory_source=how, device=device, fp16_tokens=s.fp16_tokens)
    return plan, chosen
