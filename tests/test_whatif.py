"""scripts/whatif.py (timing-only what-if builds): bad modes and arguments are refused with the accepted ones named,
before anything is patched or compiled."""

import importlib.util
import os

import pytest

pytest.importorskip("triton")

HERE = os.path.dirname(__file__)
spec = importlib.util.spec_from_file_location("whatif", os.path.join(HERE, "..", "scripts", "whatif.py"))
whatif = importlib.util.module_from_spec(spec)
spec.loader.exec_module(whatif)


@pytest.mark.parametrize("argv, says", [
    (["decode", "nosearch"], "decode mode 'nosearch': one of none, t2_nolds, t2_reg, t2_free, t3_free"),
    (["encode", "t2_reg"], "encode mode 't2_reg': one of none, nosearch, nostages"),
    (["sass", "fast"], "mode 'fast': one of none, t2_nolds"),
    (["sass", "none", "--kinds", "turbo4"], "sass takes no more arguments"),
    (["encode", "nosearch", "--kinds", "turbo5"], "--kinds 'turbo5': turbo4, turbo3 and/or turbo2"),
    (["encode", "nosearch", "--kinds", ","], "--kinds ',': turbo4, turbo3 and/or turbo2"),
])
def test_bad_modes_and_arguments_are_refused(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        whatif.main(argv)
    assert e.value.code == 2
    assert says in capsys.readouterr().err


def test_patch_functions_refuse_unknown_modes_and_leave_the_kernels_alone():
    import compactkv.attention.triton.kernels_encode as ke
    import compactkv.attention.triton.kernels_lut as kl
    before = (kl._tile_scores, kl.lut_asm_k, ke._search, ke._tile_stages)
    with pytest.raises(ValueError, match="one of none, t2_nolds, t2_reg, t2_free, t3_free"):
        whatif.patch_decode("t2")
    with pytest.raises(ValueError, match="one of none, nosearch, nostages"):
        whatif.patch_encode("free")
    whatif.patch_decode("none")
    whatif.patch_encode("none")
    assert (kl._tile_scores, kl.lut_asm_k, ke._search, ke._tile_stages) == before
