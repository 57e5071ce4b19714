"""What the planner needs to know about a model: its KV-carrying layers and enough shape to size weights and activations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KVLayer:
    """One layer that stores K and V: `kv_heads` vectors of `k_dim` / `v_dim` per token; `window` None = full attention."""

    kv_heads: int
    k_dim: int
    v_dim: int
    window: int | None = None

    def tokens(self, context: int) -> int:
        """Tokens this layer holds at `context` (a sliding-window layer holds at most `window`)."""
        return context if self.window is None else min(context, self.window)


@dataclass(frozen=True)
class ModelShape:
    """A model as the planner sees it. `layers` lists only the KV-carrying layers, in order."""

    name: str
    n_layers: int
    n_heads: int
    hidden: int
    intermediate: int
    vocab: int
    layers: tuple[KVLayer, ...]
    params: int
    source: str
    weights_bytes: int | None = None  # exact bytes of the weights file(s) when known
    weights_dtype: str = "bf16"  # the dtype `params` is stored in when weights_bytes is unknown
    max_context: int | None = None

    @property
    def n_kv_layers(self) -> int:
        return len(self.layers)

    @property
    def n_sliding(self) -> int:
        return sum(layer.window is not None for layer in self.layers)


def kv_layers(n_layers: int, kv_heads: int, head_dim: int, windows=None, v_dim: int | None = None) -> tuple[KVLayer, ...]:
    """Uniform KV layers; `windows` (one per layer, None = full) marks sliding-window layers."""
    windows = [None] * n_layers if windows is None else list(windows)
    if len(windows) != n_layers:
        raise ValueError(f"{len(windows)} window entries for {n_layers} layers")
    return tuple(KVLayer(kv_heads, head_dim, v_dim or head_dim, w) for w in windows)


def periodic_windows(n_layers: int, window: int, period: int) -> list[int | None]:
    """Gemma-style pattern: layer i is global when (i + 1) % period == 0, sliding with `window` otherwise."""
    return [None if (i + 1) % period == 0 else window for i in range(n_layers)]


def estimate_params(n_layers: int, hidden: int, n_heads: int, kv_heads: int, head_dim: int, intermediate: int,
                    vocab: int, *, tied: bool, qkv_bias: bool = False, qk_norm: bool = False, norms: int = 2,
                    experts: int = 1) -> int:
    """Parameter count of a dense (or `experts`-way MoE) decoder: attention, gated MLP, norms, embeddings."""
    q, kv = n_heads * head_dim, kv_heads * head_dim
    attn = hidden * (q + 2 * kv) + q * hidden + (q + 2 * kv if qkv_bias else 0) + (2 * head_dim if qk_norm else 0)
    mlp = 3 * hidden * intermediate * experts + (hidden * experts if experts > 1 else 0)
    per_layer = attn + mlp + norms * hidden
    return n_layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden
