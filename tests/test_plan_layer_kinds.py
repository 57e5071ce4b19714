"""compactkv.core.policy.layer_kinds: the TURBO_LAYER_ADAPTIVE presets, layer by layer."""

import pytest

from compactkv.core.policy import PRESETS, layer_kinds, preset_name

Q8 = ("q8_0", "q8_0")


def test_uniform():
    assert layer_kinds("uniform", 3, "turbo3", "turbo4") == [("turbo3", "turbo4")] * 3
    assert layer_kinds(0, 0, "f16", "f16") == []


def test_mode1_first4_last4_q8():
    got = layer_kinds(1, 12, "turbo3", "turbo3")
    assert got[:4] == [Q8] * 4 and got[-4:] == [Q8] * 4
    assert got[4:8] == [("turbo3", "turbo3")] * 4


def test_mode2_last8_q8():
    got = layer_kinds("q8-last8", 10, "turbo4", "turbo2")
    assert got == [("turbo4", "turbo2")] * 2 + [Q8] * 8


@pytest.mark.parametrize("mode, hi", [(5, "turbo4"), (7, "q8_0")])
def test_modes_5_and_7_edges_of_two(mode, hi):
    got = layer_kinds(mode, 8, "q8_0", "f16")  # the chosen V is ignored by these presets
    assert [v for _, v in got] == [hi, hi, "turbo2", "turbo2", "turbo2", "turbo2", hi, hi]
    assert all(k == "q8_0" for k, _ in got)


def test_mode6_last8_turbo4():
    got = layer_kinds("6", 20, "turbo3", "turbo3")
    assert [v for _, v in got] == ["turbo2"] * 12 + ["turbo4"] * 8
    assert {k for k, _ in got} == {"turbo3"}


def test_fewer_layers_than_the_edges():
    assert layer_kinds(1, 6, "turbo2", "turbo2") == [Q8] * 6
    assert [v for _, v in layer_kinds(5, 3, "turbo3", "turbo3")] == ["turbo4"] * 3


def test_names_and_numbers_agree():
    for name, mode in PRESETS.items():
        assert preset_name(mode) == preset_name(str(mode)) == preset_name(name) == name
        assert layer_kinds(name, 40, "turbo3", "turbo4") == layer_kinds(mode, 40, "turbo3", "turbo4")


@pytest.mark.parametrize("bad", ["3", 4, "fancy", True, None])
def test_unknown_presets_list_the_accepted_ones(bad):
    with pytest.raises(ValueError, match="accepted: uniform"):
        layer_kinds(bad, 4, "turbo4", "turbo4")


def test_bad_kind_and_layer_count():
    with pytest.raises(ValueError, match="unknown KV kind 'turbo5'"):
        layer_kinds(0, 4, "turbo5", "turbo4")
    with pytest.raises(ValueError, match="n_kv_layers"):
        layer_kinds(0, -1, "turbo4", "turbo4")
