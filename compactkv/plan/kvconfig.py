"""KV configurations the planner compares, spelled in one token.

Spelling: `KIND` (K and V alike), `K/V` (asymmetric, e.g. `q8_0/turbo4`), `PRESET` (a per-layer policy over the
default kinds) or `PRESET:KIND` / `PRESET:K/V`. PRESET is a name or a TURBO_LAYER_ADAPTIVE mode number (see
compactkv.core.policy). Presets 5-7 fix every V kind, so only K is spelled: `v4-edges:q8_0`.
"""

from __future__ import annotations

from dataclasses import dataclass

from compactkv.core.kinds import KINDS
from compactkv.core.policy import PRESETS, layer_kinds, preset_name

V_FIXED = ("v4-edges", "v4-last8", "vq8-edges")  # presets that choose every V kind themselves

DEFAULT_CONFIGS = (
    "f16", "q8_0", "turbo4", "turbo3.5", "turbo3", "turbo2.5", "turbo2",
    "q8_0/turbo4", "q8_0/turbo3", "turbo4/turbo3",
    "q8-edges:turbo3", "q8-last8:turbo3", "v4-edges:turbo4", "v4-last8:turbo4", "vq8-edges:turbo4",
)


@dataclass(frozen=True)
class KVConfig:
    """K kind, V kind and per-layer policy preset; `name` is its canonical one-token spelling."""

    k: str
    v: str
    policy: str = "uniform"

    @property
    def name(self) -> str:
        kinds = self.k if self.k == self.v else f"{self.k}/{self.v}"
        if self.policy == "uniform":
            return kinds
        return f"{self.policy}:{self.k if self.policy in V_FIXED else kinds}"

    def layer_kinds(self, n_kv_layers: int) -> list[tuple[str, str]]:
        """(K kind, V kind) per KV-carrying layer."""
        return layer_kinds(self.policy, n_kv_layers, self.k, self.v)


def _kinds(text: str, spelled: str) -> tuple[str, str]:
    parts = text.split("/")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"bad KV config {spelled!r}: spell kinds as KIND or K/V, e.g. q8_0/turbo4")
    for kind in parts:
        if kind not in KINDS:
            raise ValueError(f"unknown KV kind {kind!r} in {spelled!r}; accepted kinds: {', '.join(KINDS)}; "
                             f"layer presets: {', '.join(PRESETS)}")
    return parts[0], parts[-1]


def parse_config(text: str, k: str = "turbo4", v: str | None = None) -> KVConfig:
    """KVConfig from its one-token spelling; `k` / `v` are the kinds a bare PRESET applies to."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty KV config; spell it as KIND, K/V, PRESET or PRESET:K/V")
    text = text.strip()
    policy, _, kinds = text.rpartition(":")
    if not policy and (kinds in PRESETS or kinds.isdigit()):
        policy, kinds = kinds, ""
    if policy:
        policy = preset_name(policy)
    if kinds:
        k, v = _kinds(kinds, text)
    else:
        k, v = _kinds(k if v is None or v == k else f"{k}/{v}", text)
    if policy in V_FIXED:
        v = "turbo2"  # ignored by the preset; normalized so equal configs compare equal
    return KVConfig(k, v, policy or "uniform")


def parse_configs(texts, k: str = "turbo4", v: str | None = None) -> list[KVConfig]:
    """Parsed configs, duplicates (by canonical name) dropped, order kept."""
    seen, out = set(), []
    for text in texts:
        config = parse_config(text, k, v)
        if config.name not in seen:
            seen.add(config.name)
            out.append(config)
    return out
