"""Model shape from a GGUF file's metadata and tensor table, read with the `gguf` package (weights are never loaded).

Keys follow llama.cpp's naming (`{arch}.block_count`, `{arch}.attention.head_count_kv`, ...). Where a file carries a
sliding window but no per-layer pattern, the pattern is llama.cpp's fixed one for that architecture (src/llama-model.cpp,
`hparams.set_swa_pattern(n)`: layer i is global when (i + 1) % n == 0).
"""

from __future__ import annotations

from pathlib import Path

from .shapes import KVLayer, ModelShape

SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "cohere2": 4}


def _fields(reader) -> dict:
    """Scalar and small-array metadata as Python values (the tokenizer vocabulary is skipped)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") or key.startswith("GGUF."):
            continue
        out[key] = field.contents()
    return out


def _per_layer(value, n: int, what: str) -> list[int]:
    if isinstance(value, list):
        if len(value) != n:
            raise ValueError(f"GGUF {what} has {len(value)} entries for {n} layers")
        return [int(x) for x in value]
    return [int(value)] * n


def shape_from_gguf(path: str | Path) -> ModelShape:
    """ModelShape from GGUF metadata; weights_bytes is the exact size of the tensor data."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no GGUF file at {path}")
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # the gguf package raises bare ValueError/struct errors on foreign files
        raise ValueError(f"{path} is not a readable GGUF file: {e}") from None
    meta = _fields(reader)
    arch = meta.get("general.architecture")
    if not arch:
        raise ValueError(f"{path} has no general.architecture key")

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    n = get("block_count")
    hidden, heads = get("embedding_length"), get("attention.head_count")
    if n is None or hidden is None or heads is None:
        raise ValueError(f"{path}: missing {arch}.block_count / embedding_length / attention.head_count")
    heads_l = _per_layer(heads, n, "head_count")
    kv_l = _per_layer(get("attention.head_count_kv", heads), n, "head_count_kv")
    k_dim = int(get("attention.key_length", hidden // max(heads_l)))
    v_dim = int(get("attention.value_length", k_dim))
    window = get("attention.sliding_window")
    pattern = get("attention.sliding_window_pattern")
    if not window:
        windows = [None] * n
    elif isinstance(pattern, list):
        windows = [int(window) if p else None for p in pattern]
    else:
        period = int(pattern) if pattern else SWA_PERIOD.get(arch)
        windows = [int(window) if period is None or (i + 1) % period else None for i in range(n)]
    layers = tuple(KVLayer(kv, k_dim, v_dim, w) for kv, w in zip(kv_l, windows) if kv > 0)
    vocab = get("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    ff = get("feed_forward_length", 4 * hidden)
    return ModelShape(
        name=meta.get("general.name") or path.stem, n_layers=n, n_heads=max(heads_l), hidden=int(hidden),
        intermediate=int(max(ff) if isinstance(ff, list) else ff), vocab=int(vocab), layers=layers,
        params=sum(int(t.n_elements) for t in reader.tensors), source=f"gguf {path}",
        weights_bytes=sum(int(t.n_bytes) for t in reader.tensors), weights_dtype="file",
        max_context=get("context_length"))
