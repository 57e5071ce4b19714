"""Cache configuration: which kinds, which layers, and the full-precision sink and recent windows."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.kinds import KINDS, parse_kind
from ..core.policy import layer_kinds, preset_name

DEFAULT_KIND = "turbo4"


@dataclass(frozen=True)
class CacheConfig:
    """What a TurboQuantCache stores.

    k, v: kinds for keys and values (compactkv.KINDS). policy: None / a preset name or TURBO_LAYER_ADAPTIVE mode
    number / an explicit list of (k, v) pairs, one per KV-carrying layer. sink_tokens: the first tokens kept in
    fp16 forever (attention sinks: on SmolLM2 the first token draws 40-60% of the attention in most layers).
    residual_length: the most recent tokens kept in fp16 until they are compressed, `block_size` at a time. seed: rotation seed. chunk_tokens: compressed rows are stored in chunks of this many tokens.
    center_keys: subtract each head's mean key (from the first compressed tokens) before encoding; exact for
    attention because q·mean is added back to every compressed key's score. scale_keys: for the turbo kinds,
    store keys scaled per channel by s_c = (E[q_c²] / E[k_c²])^(1/4) (query statistics observed by the attention
    calls before the layer's first compression, key statistics from the keys it compresses) and score q / s:
    exact in q·k, and it shrinks the rotation codec's isotropic error where the queries look (see docs/codec.md).
    unbiased_keys: store turbo keys with the norm scaled by 1/sqrt(1 - D) so compressed scores are unbiased
    (E[q·k̂] = q·k) instead of shrunk by sqrt(1 - D) (Codec(unbiased=True); on SmolLM2, 16 chunks: turbo4
    +2.45% -> +2.28% perplexity; docs/quality.md).
    """

    k: str = DEFAULT_KIND
    v: str = DEFAULT_KIND
    policy: object = None
    sink_tokens: int = 4
    residual_length: int = 128
    block_size: int = 32
    seed: int = 0
    norm_correction: bool = True
    unbiased_keys: bool = True
    chunk_tokens: int = 1024
    center_keys: bool = True
    scale_keys: bool = True

    def __post_init__(self):
        parse_kind(self.k)
        parse_kind(self.v)
        for name in ("sink_tokens", "residual_length"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise ValueError(f"{name} must be an int >= 0, got {val!r}")
        for name in ("norm_correction", "unbiased_keys", "center_keys", "scale_keys"):
            val = getattr(self, name)
            if not isinstance(val, bool):
                raise ValueError(f"{name} must be True or False, got {val!r}")
        for name in ("block_size", "chunk_tokens"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an int >= 1, got {val!r}")
        if self.policy is not None and not isinstance(self.policy, (str, int, list, tuple)):
            raise ValueError(f"policy must be None, a preset name or an explicit list of (k, v) pairs, got {self.policy!r}")

    def layer_kinds(self, n_kv_layers: int) -> list[tuple[str, str]]:
        """(K kind, V kind) per KV-carrying layer; ValueError if an explicit list does not fit."""
        if self.policy is None:
            return [(self.k, self.v)] * n_kv_layers
        if isinstance(self.policy, (list, tuple)):
            pairs = [_pair(p) for p in self.policy]
            if len(pairs) != n_kv_layers:
                raise ValueError(f"the policy lists {len(pairs)} layers but the model has {n_kv_layers} "
                                 f"KV-carrying layers")
            return pairs
        return layer_kinds(preset_name(self.policy), n_kv_layers, self.k, self.v)


def _pair(p) -> tuple[str, str]:
    """A policy entry: "kind", "k/v" or a (k, v) pair."""
    if isinstance(p, str):
        k, _, v = p.partition("/")
        p = (k, v or k)
    if not isinstance(p, (list, tuple)) or len(p) != 2:
        raise ValueError(f"a policy entry must be a kind, 'k/v' or a (k, v) pair, got {p!r}; kinds: {', '.join(KINDS)}")
    parse_kind(p[0])
    parse_kind(p[1])
    return (p[0], p[1])
