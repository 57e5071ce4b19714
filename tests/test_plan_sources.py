"""Model shapes from GGUF metadata, HF config.json files and folders, and the dispatcher between them."""

import json
from pathlib import Path

import numpy as np
import pytest

from compactkv.plan import kv_bytes_per_token, load_shape, parse_config
from compactkv.plan.shapes import estimate_params


def _default_gguf() -> Path | None:
    try:
        from compactkv.engine.model_files import default_gguf_path
    except ImportError:
        path = Path.home() / ".cache" / "compactkv" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        return path if path.is_file() else None
    return default_gguf_path()


def test_real_smollm2_gguf_metadata():
    path = _default_gguf()
    if path is None:
        pytest.skip("default SmolLM2 GGUF not downloaded (see compactkv.engine.model_files)")
    shape = load_shape(path)
    assert (shape.n_layers, shape.n_heads, shape.hidden, shape.intermediate, shape.vocab) == (30, 9, 576, 1536, 49152)
    assert {(layer.kv_heads, layer.k_dim, layer.v_dim, layer.window) for layer in shape.layers} == {(3, 64, 64, None)}
    assert shape.max_context == 8192
    assert shape.params == 134_515_008  # SmolLM2-135M's published size, and what the shape predicts:
    assert shape.params == estimate_params(30, 576, 9, 3, 64, 1536, 49152, tied=True)
    assert 0.95 * path.stat().st_size < shape.weights_bytes < path.stat().st_size  # tensor data, less the header
    assert kv_bytes_per_token(shape, parse_config("f16")) == 30 * 3 * 64 * 2 * 2


def _write_gguf(path, arch, n_layers, extra):
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_embedding_length(256)
    w.add_feed_forward_length(512)
    w.add_head_count(4)
    w.add_context_length(4096)
    w.add_vocab_size(1000)
    for key, value in extra.items():
        if isinstance(value, list):
            w.add_array(f"{arch}.{key}", value)
        else:
            w.add_uint32(f"{arch}.{key}", value)
    w.add_tensor("token_embd.weight", np.zeros((1000, 256), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_gemma3_sliding_pattern_and_key_length(tmp_path):
    path = tmp_path / "g.gguf"
    _write_gguf(path, "gemma3", 12, {"attention.head_count_kv": 2, "attention.key_length": 128,
                                     "attention.value_length": 128, "attention.sliding_window": 512})
    shape = load_shape(path)
    assert [i for i, layer in enumerate(shape.layers) if layer.window is None] == [5, 11]
    assert shape.layers[0].window == 512 and shape.layers[0].k_dim == 128
    assert shape.weights_bytes == 1000 * 256 * 2 and shape.params == 256_000


def test_gguf_per_layer_kv_heads_skip_recurrent_layers(tmp_path):
    path = tmp_path / "h.gguf"
    _write_gguf(path, "llama", 4, {"attention.head_count_kv": [2, 0, 0, 2]})
    shape = load_shape(path)
    assert shape.n_layers == 4 and shape.n_kv_layers == 2
    assert shape.layers[0].k_dim == 64  # embedding_length / head_count when key_length is absent


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_shape(bad)


GEMMA3_4B = {  # the keys google/gemma-3-4b-it's config.json sets; transformers supplies the rest
    "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "torch_dtype": "bfloat16",
    "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
                    "num_hidden_layers": 34, "sliding_window": 1024, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
    "vision_config": {"model_type": "siglip_vision_model"},
}


def test_hf_gemma3_config_matches_preset(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GEMMA3_4B))
    shape, preset = load_shape(tmp_path), load_shape("gemma-3-4b")
    assert shape.layers == preset.layers
    assert shape.weights_bytes is None and shape.weights_dtype == "bf16"


def test_hf_qwen2_max_window_layers_and_mistral_window(tmp_path):
    qwen = {"model_type": "qwen2", "num_hidden_layers": 6, "hidden_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": 300, "max_window_layers": 2}
    (tmp_path / "qwen.json").write_text(json.dumps(qwen))
    assert [layer.window for layer in load_shape(tmp_path / "qwen.json").layers] == [None, None] + [300] * 4
    mistral = {"model_type": "mistral", "num_hidden_layers": 3, "hidden_size": 256, "num_attention_heads": 4,
               "num_key_value_heads": 1, "sliding_window": 4096}
    (tmp_path / "mistral.json").write_text(json.dumps(mistral))
    shape = load_shape(tmp_path / "mistral.json")
    assert [layer.window for layer in shape.layers] == [4096] * 3 and shape.layers[0].k_dim == 64


def test_hf_hybrid_linear_attention_layers_hold_no_kv(tmp_path):
    cfg = {"model_type": "qwen3_next", "num_hidden_layers": 8}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shape = load_shape(tmp_path)
    assert shape.n_layers == 8 and shape.n_kv_layers == 2  # full attention every 4th layer


def test_hf_folder_weights_from_safetensors_headers(tmp_path):
    import torch
    from safetensors.torch import save_file

    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
           "intermediate_size": 128, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({"a": torch.zeros(10, 64, dtype=torch.bfloat16), "b": torch.zeros(5, dtype=torch.float32)},
              str(tmp_path / "model.safetensors"))
    shape = load_shape(tmp_path)
    assert shape.weights_bytes == 10 * 64 * 2 + 5 * 4 and shape.params == 645


def test_sources_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_shape(tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="not a file, folder or built-in preset"):
        load_shape("nonexistent-model-7b")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_shape(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ValueError, match="no model_type"):
        load_shape(tmp_path)
