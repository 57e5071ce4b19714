"""Per-layer KV kind presets, as pure functions shared by the cache and the planner.

The presets reproduce the llama.cpp TurboQuant fork's TURBO_LAYER_ADAPTIVE modes. Layers are indexed over the
layers that actually carry a KV cache (hybrid and sliding-window models included), 0 = the first such layer.
  0 uniform    every layer (k, v)
  1 q8-edges   q8_0 K and V on the first 4 and last 4 layers, (k, v) elsewhere
  2 q8-last8   q8_0 K and V on the last 8 layers, (k, v) elsewhere
  5 v4-edges   V turbo4 on the first 2 and last 2 layers, V turbo2 elsewhere; K is k everywhere
  6 v4-last8   V turbo4 on the last 8 layers, V turbo2 elsewhere; K is k everywhere
  7 vq8-edges  V q8_0 on the first 2 and last 2 layers, V turbo2 elsewhere; K is k everywhere
In modes 5-7 the chosen `v` is ignored: the preset fixes every V kind.
"""

from __future__ import annotations

from .kinds import parse_kind

PRESETS = {"uniform": 0, "q8-edges": 1, "q8-last8": 2, "v4-edges": 5, "v4-last8": 6, "vq8-edges": 7}
_BY_MODE = {mode: name for name, mode in PRESETS.items()}


def preset_name(preset: str | int) -> str:
    """Canonical preset name for a name or a TURBO_LAYER_ADAPTIVE mode number ("1" or 1)."""
    if isinstance(preset, bool):
        preset = str(preset)
    if isinstance(preset, int) or (isinstance(preset, str) and preset.isdigit()):
        if int(preset) in _BY_MODE:
            return _BY_MODE[int(preset)]
    elif isinstance(preset, str) and preset in PRESETS:
        return preset
    accepted = ", ".join(f"{name} ({mode})" for name, mode in PRESETS.items())
    raise ValueError(f"unknown layer policy preset {preset!r}; accepted: {accepted}")


def _edges(n: int, first: int, last: int) -> set[int]:
    return set(range(min(first, n))) | set(range(max(n - last, 0), n))


def layer_kinds(preset: str | int, n_kv_layers: int, k: str, v: str) -> list[tuple[str, str]]:
    """(K kind, V kind) for each of `n_kv_layers` KV-carrying layers under `preset`."""
    name = preset_name(preset)
    parse_kind(k)
    parse_kind(v)
    if isinstance(n_kv_layers, bool) or not isinstance(n_kv_layers, int) or n_kv_layers < 0:
        raise ValueError(f"n_kv_layers must be a non-negative int, got {n_kv_layers!r}")
    n = n_kv_layers
    if name == "uniform":
        return [(k, v)] * n
    if name in ("q8-edges", "q8-last8"):
        hi = _edges(n, 4, 4) if name == "q8-edges" else _edges(n, 0, 8)
        return [("q8_0", "q8_0") if i in hi else (k, v) for i in range(n)]
    hi = _edges(n, 0, 8) if name == "v4-last8" else _edges(n, 2, 2)
    v_hi = "q8_0" if name == "vq8-edges" else "turbo4"
    return [(k, v_hi if i in hi else "turbo2") for i in range(n)]
