"""KV sizes against hand-computed figures, sliding-window counts, presets' parameter totals."""

import pytest

from compactkv.plan import kv_bytes, kv_bytes_per_token, layer_bytes, parse_config, preset_shape
from compactkv.plan.kvsize import bits_per_value
from compactkv.plan.presets import PRESETS
from compactkv.plan.shapes import KVLayer, ModelShape

MiB = 2**20


def test_seed_14b_f16_at_64k_is_10240_mib():
    # 40 layers x 8 KV heads x 128 dims x 2 bytes x (K and V) = 163,840 B/token; x 65,536 tokens = 10,240 MiB.
    shape = preset_shape("Qwen3-14B")
    assert (shape.n_kv_layers, shape.layers[0].kv_heads, shape.layers[0].k_dim) == (40, 8, 128)
    assert kv_bytes_per_token(shape, parse_config("f16")) == 163_840
    assert kv_bytes(shape, parse_config("f16"), 65_536) == 10_240 * MiB


@pytest.mark.parametrize("config, row_k, row_v", [
    ("q8_0", 136, 136),          # 4 blocks x (2 B scale + 32 B)
    ("turbo4", 66, 66),          # 2 B norm + 128 x 4 bits
    ("turbo3", 50, 50),          # 2 B norm + 128 x 3 bits
    ("turbo2", 34, 34),
    ("turbo3.5", 60, 60),        # 2 norms + 64 x 4 bits + 64 x 3 bits
    ("q8_0/turbo4", 136, 66),
])
def test_14b_at_64k_hand_computed(config, row_k, row_v):
    expected = 40 * 8 * (row_k + row_v) * 65_536
    assert kv_bytes(preset_shape("qwen3-14b"), parse_config(config), 65_536) == expected


def test_turbo4_14b_at_64k_is_2640_mib():
    assert kv_bytes(preset_shape("Qwen3-14B"), parse_config("turbo4"), 65_536) == 2_640 * MiB


def test_llama_8b_is_128_kib_per_token_and_batch_scales():
    shape, f16 = preset_shape("meta-llama/Llama-3.1-8B-Instruct"), parse_config("f16")
    assert kv_bytes_per_token(shape, f16) == 128 * 1024
    assert kv_bytes(shape, f16, 1000, batch=3) == 3 * 1000 * 128 * 1024


@pytest.mark.parametrize("name, n_layers, global_layers", [
    ("Gemma-3-4B", 34, [5, 11, 17, 23, 29]),
    ("Gemma-3-12B", 48, [5, 11, 17, 23, 29, 35, 41, 47]),
    ("Gemma-3-27B", 62, [5, 11, 17, 23, 29, 35, 41, 47, 53, 59]),
])
def test_gemma3_sliding_layers(name, n_layers, global_layers):
    shape = preset_shape(name)
    assert shape.n_kv_layers == n_layers
    assert [i for i, layer in enumerate(shape.layers) if layer.window is None] == global_layers
    assert {layer.window for layer in shape.layers} == {None, 1024}
    assert shape.n_sliding == n_layers - len(global_layers)


def test_gemma3_27b_sliding_layers_hold_window_tokens():
    shape, f16 = preset_shape("gemma-3-27b-it"), parse_config("f16")
    per_layer_token = 16 * 128 * 2 * 2
    assert kv_bytes(shape, f16, 131_072) == (10 * 131_072 + 52 * 1024) * per_layer_token
    assert kv_bytes(shape, f16, 600) == 62 * 600 * per_layer_token  # below the window every layer holds all tokens
    per = layer_bytes(shape, f16, 4096)
    assert per[5] == 4096 * per_layer_token and per[0] == 1024 * per_layer_token


def test_policy_preset_bytes_hand_computed():
    # q8-edges on 40 layers: 8 layers q8_0 (136 + 136 B per head), 32 layers turbo3 (50 + 50 B per head).
    shape = preset_shape("Qwen3-14B")
    assert kv_bytes_per_token(shape, parse_config("q8-edges:turbo3")) == 8 * (8 * 272 + 32 * 100)
    # v4-edges: K q8_0 everywhere; V turbo4 (66 B) on 4 layers, turbo2 (34 B) on 36.
    assert kv_bytes_per_token(shape, parse_config("5:q8_0")) == 8 * (40 * 136 + 4 * 66 + 36 * 34)


def test_fp16_tokens_are_counted_uncompressed():
    shape = ModelShape("t", 2, 4, 64, 128, 100, (KVLayer(2, 64, 64), KVLayer(2, 64, 64, window=300)), 1, "test")
    got = kv_bytes(shape, parse_config("turbo4"), 1000, fp16_tokens=128)
    side = 128 * 128 + (1000 - 128) * 34, 128 * 128 + (300 - 128) * 34  # f16 row 128 B, turbo4 row 2 + 32 B
    assert got == 2 * 2 * sum(side)
    assert kv_bytes(shape, parse_config("f16"), 1000, fp16_tokens=128) == 2 * 2 * 128 * 1300


def test_bits_per_value():
    shape = preset_shape("Llama-3.1-8B")
    assert bits_per_value(shape, parse_config("f16")) == 16
    assert bits_per_value(shape, parse_config("turbo4")) == pytest.approx(66 * 8 / 128)


# Published parameter totals of the checkpoints (safetensors metadata on the Hub).
PUBLISHED_PARAMS = {
    "llama-3.1-8b": 8_030_261_248, "llama-3.1-70b": 70_553_706_496,
    "qwen2.5-7b": 7_615_616_512, "qwen2.5-14b": 14_770_033_664, "qwen2.5-32b": 32_763_876_352,
    "qwen3-8b": 8_190_735_360, "qwen3-14b": 14_768_307_200, "qwen3-32b": 32_762_123_264,
    "mistral-7b": 7_248_023_552,
    "gemma-3-4b": 4_300_079_472, "gemma-3-12b": 12_187_325_040, "gemma-3-27b": 27_432_406_640,
}


def test_presets_match_published_parameter_counts():
    assert set(PRESETS) == set(PUBLISHED_PARAMS)
    for name, params in PUBLISHED_PARAMS.items():
        assert PRESETS[name].params == params, name


def test_unknown_preset_names_the_presets():
    with pytest.raises(ValueError, match="Qwen3-14B"):
        preset_shape("qwen9-1b")
