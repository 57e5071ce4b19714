"""`TurboQuantCache`: a transformers Cache whose attention layers hold K/V in TurboQuant (or q8_0/f16) form."""

from __future__ import annotations

from transformers.cache_utils import Cache

from .config import CacheConfig
from .layer import TurboQuantLayer, check_pending_updates

ATTN_IMPLEMENTATION = "compactkv"
_KV_TYPES = ("full_attention", "sliding_attention")


def _decoder_config(config):
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if getter else config


def kv_layer_types(config) -> list[str]:
    """The attention type of each decoder layer ("full_attention" / "sliding_attention"); ValueError otherwise."""
    cfg = _decoder_config(config)
    n = cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None)
    if types is None:
        types = ["sliding_attention" if getattr(cfg, "sliding_window", None) else "full_attention"] * n
    bad = sorted({t for t in types if t not in _KV_TYPES})
    if bad:
        raise ValueError(f"TurboQuantCache supports layer types {_KV_TYPES}; this model has {bad}")
    return list(types)


def head_dim_of(config) -> int:
    cfg = _decoder_config(config)
    hd = getattr(cfg, "head_dim", None)
    return int(hd) if hd else cfg.hidden_size // cfg.num_attention_heads


def require_compactkv_attention(cache) -> None:
    """ValueError unless the model `cache` serves runs compactkv's attention (its keys would be read as plain K/V)."""
    impl = getattr(cache.model_config, "_attn_implementation", None)
    if impl != ATTN_IMPLEMENTATION:
        raise ValueError(f"{type(cache).__name__} needs the model's attention implementation to be "
                         f"{ATTN_IMPLEMENTATION!r} (it is {impl!r}): call compactkv.attach(model) first")


def memory_totals(per_layer: list[dict]) -> dict:
    """A cache's memory report from its layers' `memory()` dicts: the byte counts summed, `kv_bytes` held =
    compressed + window + aux, `ratio` = fp16 / held, and `per_layer` itself."""
    keys = ("compressed_bytes", "window_bytes", "aux_bytes", "fp16_bytes", "compressed_fp16_bytes")
    out = {k: sum(m.get(k, 0) for m in per_layer) for k in keys}
    held = out["kv_bytes"] = out["compressed_bytes"] + out["window_bytes"] + out["aux_bytes"]
    out["ratio"] = out["fp16_bytes"] / held if held else 0.0
    out["per_layer"] = per_layer
    return out


class TurboQuantCache(Cache):
    """Compressed KV cache. Pass as `cache=` (transformers >= 5.2x) or `past_key_values=` to a model loaded with
    `attn_implementation="compactkv"` (see `compactkv.attach`).

    config: the model's config. k, v, policy, sink_tokens, residual_length, ...: see `CacheConfig`
    (or pass `cache_config=`). Invalid kinds, policies or head_dims raise ValueError here, before any generation.
    """

    def __init__(self, config, k: str | None = None, v: str | None = None, policy=None, *,
                 cache_config: CacheConfig | None = None, **options):
        if cache_config is None:
            kw = dict(options)
            if k is not None:
                kw["k"] = k
            if v is not None:
                kw["v"] = v
            cache_config = CacheConfig(policy=policy, **kw)
        elif k is not None or v is not None or policy is not None or options:
            raise ValueError("pass either cache_config or k/v/policy/options, not both")
        self.cache_config = cache_config
        self.model_config = _decoder_config(config)
        types = kv_layer_types(config)
        head_dim = head_dim_of(config)
        kinds = cache_config.layer_kinds(len(types))
        window = getattr(self.model_config, "sliding_window", None)
        cc = cache_config
        layers = [
            TurboQuantLayer(kk, vk, head_dim, sink_tokens=cc.sink_tokens, residual_length=cc.residual_length,
                            block_size=cc.block_size, seed=cc.seed, norm_correction=cc.norm_correction,
                            chunk_tokens=cc.chunk_tokens, center_keys=cc.center_keys,
                            scale_keys=cc.scale_keys, unbiased_keys=cc.unbiased_keys,
                            sliding_window=window if t == "sliding_attention" else None)
            for t, (kk, vk) in zip(types, kinds)
        ]
        for layer in layers:  # the encoders' non-finite checks: one device sync per forward pass (see update)
            layer.defer_check = True
        super().__init__(layers=layers)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        require_compactkv_attention(self)
        if layer_idx == 0:
            self.check_pending()  # a pass whose last layer never updated
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == len(self.layers) - 1:
            self.check_pending()
        return out

    def check_pending(self) -> None:
        """Verify every layer's unchecked update with one device sync (the Triton encoder's NaN/Inf/fp16-range
        check, per layer it cost a sync per layer and chunk: docs/performance.md, session 10). If any held
        non-finite rows, every pending update is undone, so the cache is as it was before the forward pass, and
        ValueError is raised."""
        check_pending_updates(self.layers, " (the cache is as it was before this forward pass)")

    @property
    def layer_kinds(self) -> list[tuple[str, str]]:
        return [(layer.k_codec.kind, layer.v_codec.kind) for layer in self.layers]

    def memory_report(self) -> dict:
        """Bytes held: `kv_bytes` (compressed rows + fp16 windows + per-head metadata), `compressed_bytes`,
        `window_bytes`, `aux_bytes`, `fp16_bytes` (the same tokens in fp16), `compressed_fp16_bytes` (the
        compressed tokens alone in fp16), `ratio` (fp16 / held) and `per_layer`."""
        return memory_totals([layer.memory() for layer in self.layers])
