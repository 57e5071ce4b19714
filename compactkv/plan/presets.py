"""Built-in shapes of popular models, so `compactkv plan --model qwen3-14b` works without any file.

Every number comes from the model's published config.json on the Hugging Face Hub (the URL is beside each entry).
Parameter counts are computed from the shape with `estimate_params`; they reproduce the checkpoints' published
totals exactly (e.g. Llama-3.1-8B 8,030,261,248, Qwen3-14B 14,768,307,200), which tests/test_plan_shapes.py checks.
"""

from __future__ import annotations

from .shapes import ModelShape, estimate_params, kv_layers, periodic_windows

# Gemma 3 checkpoints are multimodal: the SigLIP vision tower (416,867,184 params) and a 1152 x hidden projector ship
# with the weights, making the published totals 4,300,079,472 / 12,187,325,040 / 27,432,406,640.
_GEMMA3_VISION = 416_867_184
_GEMMA3_WINDOW, _GEMMA3_PERIOD = 1024, 6  # config.json: sliding_window 1024, sliding_window_pattern 6 (5 local : 1 global)


def _dense(name, url, layers, hidden, heads, kv, head_dim, inter, vocab, max_ctx, *, tied=False, qkv_bias=False,
           qk_norm=False) -> ModelShape:
    params = estimate_params(layers, hidden, heads, kv, head_dim, inter, vocab, tied=tied, qkv_bias=qkv_bias,
                             qk_norm=qk_norm)
    return ModelShape(name, layers, heads, hidden, inter, vocab, kv_layers(layers, kv, head_dim), params,
                      f"preset {name}: {url}", max_context=max_ctx)


def _gemma3(name, url, layers, hidden, heads, kv, head_dim, inter) -> ModelShape:
    vocab = 262_208
    text = estimate_params(layers, hidden, heads, kv, head_dim, inter, vocab, tied=True, qk_norm=True, norms=4)
    windows = periodic_windows(layers, _GEMMA3_WINDOW, _GEMMA3_PERIOD)
    return ModelShape(name, layers, heads, hidden, inter, vocab, kv_layers(layers, kv, head_dim, windows),
                      text + _GEMMA3_VISION + 1152 * hidden, f"preset {name}: {url}", max_context=131_072)


_HF = "https://huggingface.co/{}/blob/main/config.json"

PRESETS: dict[str, ModelShape] = {s.name.lower(): s for s in (
    # name, source, layers, hidden, heads, kv heads, head_dim, intermediate, vocab, max_position_embeddings
    _dense("Llama-3.1-8B", _HF.format("meta-llama/Llama-3.1-8B"), 32, 4096, 32, 8, 128, 14336, 128256, 131072),
    _dense("Llama-3.1-70B", _HF.format("meta-llama/Llama-3.1-70B"), 80, 8192, 64, 8, 128, 28672, 128256, 131072),
    # Qwen2.5 configs set use_sliding_window: false, so every layer is full attention; 32K native, 128K with YaRN.
    _dense("Qwen2.5-7B", _HF.format("Qwen/Qwen2.5-7B-Instruct"), 28, 3584, 28, 4, 128, 18944, 152064, 131072,
           qkv_bias=True),
    _dense("Qwen2.5-14B", _HF.format("Qwen/Qwen2.5-14B-Instruct"), 48, 5120, 40, 8, 128, 13824, 152064, 131072,
           qkv_bias=True),
    _dense("Qwen2.5-32B", _HF.format("Qwen/Qwen2.5-32B-Instruct"), 64, 5120, 40, 8, 128, 27648, 152064, 131072,
           qkv_bias=True),
    # Qwen3: head_dim 128 given explicitly, q/k RMSNorm per head; 32K native (max_position_embeddings 40960).
    _dense("Qwen3-8B", _HF.format("Qwen/Qwen3-8B"), 36, 4096, 32, 8, 128, 12288, 151936, 40960, qk_norm=True),
    _dense("Qwen3-14B", _HF.format("Qwen/Qwen3-14B"), 40, 5120, 40, 8, 128, 17408, 151936, 40960, qk_norm=True),
    _dense("Qwen3-32B", _HF.format("Qwen/Qwen3-32B"), 64, 5120, 64, 8, 128, 25600, 151936, 40960, qk_norm=True),
    # v0.3 sets sliding_window: null (v0.1 used a 4096 window on every layer).
    _dense("Mistral-7B", _HF.format("mistralai/Mistral-7B-Instruct-v0.3"), 32, 4096, 32, 8, 128, 14336, 32768, 32768),
    # Gemma 3: text_config values (transformers' Gemma3TextConfig defaults stand in for any key a file omits).
    _gemma3("Gemma-3-4B", _HF.format("google/gemma-3-4b-it"), 34, 2560, 8, 4, 256, 10240),
    _gemma3("Gemma-3-12B", _HF.format("google/gemma-3-12b-it"), 48, 3840, 16, 8, 256, 15360),
    _gemma3("Gemma-3-27B", _HF.format("google/gemma-3-27b-it"), 62, 5376, 32, 16, 128, 21504),
)}


def _key(name: str) -> str:
    """Lookup key: case-insensitive, hub owner and -Instruct / -it suffixes dropped ("Qwen/Qwen3-14B" -> "qwen3-14b")."""
    key = name.lower().rsplit("/", 1)[-1]
    for suffix in ("-instruct", "-it"):
        key = key.removesuffix(suffix)
    return key


def find_preset(name: str) -> ModelShape | None:
    """The built-in shape matching `name`, or None."""
    return PRESETS.get(_key(name))


def preset_shape(name: str) -> ModelShape:
    """The built-in shape called `name`; ValueError listing the presets otherwise."""
    shape = find_preset(name)
    if shape is None:
        names = ", ".join(s.name for s in PRESETS.values())
        raise ValueError(f"unknown model {name!r}: not a file, folder or built-in preset ({names})")
    return shape
