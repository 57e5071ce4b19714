"""scripts/triton_swap.py on the CPU: a compile request crosses releases as data (Gluon layouts, dtypes, tuples),
the same request gives the same key, and a compiled kernel takes another build's cubin and launch metadata only
where its parameters match (the GPU runs are in docs/kernels.md, session 27)."""

from __future__ import annotations

import importlib.util
import os

import pytest

triton = pytest.importorskip("triton")
from compactkv.attention.dispatch import _triton_missing  # noqa: E402

if _triton_missing():
    pytest.skip(_triton_missing(), allow_module_level=True)

HERE = os.path.dirname(__file__)
spec = importlib.util.spec_from_file_location("triton_swap", os.path.join(HERE, "..", "scripts", "triton_swap.py"))
triton_swap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(triton_swap)


def test_constexpr_values_cross_as_data():
    import json
    import triton.language as tl
    from compactkv.attention.triton.kernels_lut import lut_layouts
    lay = lut_layouts(8, 64, 64, words=True)[0]
    values = [None, True, 7, 0.127, "prmt.b32", tl.float16, (1, [2, 3]), lay]
    data = json.loads(json.dumps([triton_swap.encode_value(v) for v in values]))
    back = [triton_swap.decode_value(v) for v in data]
    assert back[:5] == values[:5]
    assert back[5] == tl.float16 and back[6] == (1, [2, 3])
    assert type(back[7]) is type(lay) and back[7] == lay
    with pytest.raises(TypeError, match="cannot cross"):
        triton_swap.encode_value(object())


def _tiny():
    import triton.language as tl

    @triton.jit
    def tiny_swap_kernel(x_ptr, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) + 1, mask=i < n)

    from triton.backends.compiler import GPUTarget
    src = triton.compiler.ASTSource(tiny_swap_kernel, {"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                                    {(2,): 64}, {(0,): [["tt.divisibility", 16]]})
    return src, triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 2})


def test_request_key_and_swap_into_a_compiled_kernel():
    src, kernel = _tiny()
    rec = triton_swap.describe(src, {"num_warps": 2, "extern_libs": None})
    assert rec["name"].endswith("tiny_swap_kernel") and rec["constexprs"] == [[[2], 64]]
    assert triton_swap.request_key(rec) == triton_swap.request_key(triton_swap.describe(src, {"num_warps": 2,
                                                                                            "extern_libs": None}))
    assert triton_swap.request_key(rec) != triton_swap.request_key(triton_swap.describe(src, {"num_warps": 4}))
    params = triton_swap.ptx_params(kernel.asm["ptx"])
    assert params[:2] == [".u64", ".u32"]  # x_ptr, n (then the launcher's scratch pointers)
    meta = {"name": kernel.name, "num_warps": 2, "shared": kernel.metadata.shared + 1024, "params": params,
            "global_scratch_size": 0, "triton": "other"}
    with pytest.raises(RuntimeError, match="parameters"):
        triton_swap.swap_into(kernel, b"x", dict(meta, params=params + [".u64"]))
    with pytest.raises(RuntimeError, match="num_warps"):
        triton_swap.swap_into(kernel, b"x", dict(meta, num_warps=4))
    assert kernel.kernel != b"other cubin"  # (refused swaps changed nothing)
    triton_swap.swap_into(kernel, b"other cubin", meta)
    assert kernel.kernel == b"other cubin" and kernel.asm["cubin"] == b"other cubin"
    assert kernel.metadata.shared == meta["shared"]


def test_command_line_names_bad_input(tmp_path, capsys):
    cases = [(["build", str(tmp_path / "out"), str(tmp_path / "none.json")], "no such record file"),
             (["replay", str(tmp_path), "--", "-c", "pass"], "holds no builds"),
             (["record", str(tmp_path / "r.json")], "name the program after --"),
             (["build", str(tmp_path / "out"), __file__, "--ptx-version", "8.7"], "go with --ptxas")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            triton_swap.main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()  # (nothing recorded, nothing written)
