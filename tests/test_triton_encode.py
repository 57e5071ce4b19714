"""The encode kernels against `Codec.encode`, byte for byte, on fresh random inputs and on rows built to land
within a few ulps of every codebook boundary, for every supported head_dim, bit width, input dtype and layout.

On CUDA the kernels run compiled; elsewhere (CI) the same checks run in Triton's interpreter in a subprocess
(TRITON_INTERPRET=1 must be set before triton is imported), so the row kernel's arithmetic (thresholds from
float64 products instead of a division, bit-reversed tree sums, packed words) is checked on every machine.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from compactkv.core.codebook import lloyd_max
from compactkv.core.codec import Codec
from compactkv.cache.static import centered_scaled
from compactkv.core.rotation import get_rotation

KINDS = ("turbo2", "turbo3", "turbo4")
ENCODE_TESTED = ("row", "lanes", "half")  # encode_rows' kernels


def _near_boundaries(codec: Codec, rows_per_boundary: int, gen: torch.Generator) -> torch.Tensor:
    """float32 rows whose rotated, normalised coordinate 0 sits within a few float32 ulps of each boundary of
    the codec's codebook (both sides), at random scales: where a kernel that rounds differently would differ."""
    d, bits = codec.head_dim, codec.spec.bits
    rot = get_rotation(d, codec.seed)
    out = []
    for b in lloyd_max(d, bits).boundaries:
        y = torch.randn(rows_per_boundary, d, generator=gen, dtype=torch.float64)
        y[:, 0] = 0
        y = y / y.norm(dim=-1, keepdim=True) * math.sqrt(max(1 - b * b, 0.0))
        ulps = torch.randint(-4, 5, (rows_per_boundary,), generator=gen).double()
        y[:, 0] = b + ulps * max(abs(b), 1e-30) * 2.0 ** -23
        scale = torch.exp(torch.randn(rows_per_boundary, 1, generator=gen, dtype=torch.float64) * 3).clamp(max=1e4)
        out.append((rot.inverse(y) * scale).float())
    return torch.cat(out)


def _special_rows(d: int) -> torch.Tensor:
    """Rows at the edges: zero, one tiny value, cancellations leaving denormal coordinates next to large ones,
    a single spike, large values whose norm still fits float16."""
    rows = torch.zeros(6, d)
    rows[1, 3] = 1e-7
    rows[2, 0], rows[2, 1], rows[2, 2] = 1000.0, 1000.0, 1e-40
    rows[3, 5] = -3.5
    rows[4] = torch.linspace(-2000, 2000, d) / math.sqrt(d)
    rows[5, ::2], rows[5, 1::2] = 1e-30, -1e-30
    return rows


def _cases(kernel: str) -> list[tuple]:
    dims = {"row": (32, 64, 128), "half": (64, 128)}.get(kernel, (32, 64, 128, 256))
    cases = []
    for d in dims:
        for kind in KINDS:
            cases.append((kind, d, torch.float16, {}, "codec"))
        cases.append(("turbo4", d, torch.bfloat16, {"seed": 3}, "codec"))
        cases.append(("turbo3", d, torch.float32, {"unbiased": True}, "codec"))
        cases.append(("turbo2", d, torch.float16, {"norm_correction": False}, "planar"))
        # a centered (and key-scaled) cache's keys
        cases.append(("turbo4", d, torch.bfloat16, {"unbiased": True}, "codec+center+scale"))
        cases.append(("turbo3", d, torch.float16, {}, "planar+center"))
        cases.append(("turbo2", d, torch.float32, {}, "codec+scale"))
    return cases


def _one(kernel: str, kind: str, d: int, dtype: torch.dtype, opts: dict, layout: str, device: str,
         gen: torch.Generator) -> int:
    """Mismatching bytes between the kernel and Codec.encode for one case (plus untouched-slot checks)."""
    from compactkv.attention.triton.encode import encode_rows
    codec = Codec(kind, d, **opts)
    b, h = 2, 3
    rnd = torch.randn(b * h * 37, d, generator=gen) * torch.rand(b * h * 37, 1, generator=gen) * 3
    rows = torch.cat([rnd, _special_rows(d), _near_boundaries(codec, 8, gen)])
    t = math.ceil(rows.shape[0] / (b * h))
    rows = torch.cat([rows, torch.randn(b * h * t - rows.shape[0], d, generator=gen)])
    x = rows.reshape(b, h, t, d).to(dtype)
    if dtype == torch.bfloat16 and device == "cpu":
        # Triton 3.6's interpreter converts bf16 subnormals to float32 wrongly (9.18e-41 -> 0, 1.001e-38 ->
        # 8.27e-39); compiled kernels convert them exactly, so only the interpreter run leaves them out
        x = torch.where(x.float().abs() < torch.finfo(torch.float32).tiny, 0, x)
    # a float32 center [b, h, 1, d] as large as the rows, a per-head channel scale [h, d] in [1/16, 16]:
    # the rows of Codec.encode of centered_scaled(x, center, scale)
    center = torch.randn(b, h, 1, d, generator=gen) * 2 if "+center" in layout else None
    scale = torch.exp(torch.randn(h, d, generator=gen)).clamp(1 / 16, 16) if "+scale" in layout else None
    ref = codec.encode(centered_scaled(x, center, scale))
    pos = torch.tensor([0, 5], dtype=torch.int32, device=device)
    planar = layout.startswith("planar")
    width = codec.row_bytes - 2 if planar else codec.row_bytes
    out = torch.full((b, h, t + 7, width), 0x5A, dtype=torch.uint8, device=device)
    norms = torch.full((b, h, t + 7), 7.0, dtype=torch.float16, device=device) if planar else None
    encode_rows(codec, x.to(device), out, positions=pos, norms=norms, kernel=kernel,
                center=center.to(device) if center is not None else None,
                scale=scale.to(device) if scale is not None else None)
    got = out.cpu()
    if planar:
        got = torch.cat([norms.cpu().unsqueeze(-1).view(torch.uint8), got], dim=-1)
    bad = int((got[0, :, :t] != ref[0]).sum()) + int((got[1, :, 5:5 + t] != ref[1]).sum())
    untouched = bool((out[1, :, :5] == 0x5A).all()) and bool((out[0, :, t:] == 0x5A).all())
    return bad + (0 if untouched else 10 ** 6)


def _mismatches(kernel: str, device: str) -> dict[str, int]:
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    return {f"{kind} d={d} {str(dtype)[6:]} {opts} {layout}": _one(kernel, kind, d, dtype, opts, layout, device, gen)
            for kind, d, dtype, opts, layout in _cases(kernel)}


SPLIT_CASES = [("row", "turbo4", 64, torch.float16, {}, "planar+center+scale"),
               ("row", "turbo3", 32, torch.bfloat16, {"seed": 3}, "codec"),
               ("half", "turbo3", 128, torch.float16, {}, "codec+center"),
               ("lanes", "turbo2", 256, torch.float16, {}, "codec+center")]


def _split_mismatches(device: str) -> dict[str, int]:
    """Both kernels with the batch launched in slices (encode.GRID_Y made 3: one batch row of 3 heads per
    launch), as batch x heads beyond CUDA's grid-y limit are."""
    from compactkv.attention.triton import encode
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encode, "GRID_Y", 3)
        return {f"{kernel} split {kind} d={d} {layout}": _one(kernel, kind, d, dtype, opts, layout, device, gen)
                for kernel, kind, d, dtype, opts, layout in SPLIT_CASES}


# (k kind, v kind, head_dim, dtype, key codec options, layout, tokens): one pair launch for a layer's keys and values
PAIR_CASES = [("turbo4", "turbo4", 128, torch.bfloat16, {"unbiased": True}, "planar+center+scale", 1),
              ("turbo4", "turbo2", 64, torch.float16, {}, "codec+center", 3),
              ("turbo3", "turbo3", 128, torch.float32, {"unbiased": True}, "codec+scale", 1),
              ("turbo2", "turbo4", 256, torch.bfloat16, {}, "planar", 2),
              ("turbo3", "turbo4", 32, torch.float16, {"seed": 3}, "codec", 37),
              ("turbo2", "turbo3", 256, torch.float16, {}, "codec+center+scale", 21)]


def _rows_for(codec: Codec, n: int, gen: torch.Generator) -> torch.Tensor:
    """n float32 rows: random, the special rows, then rows near the codec's boundaries, cycled to n."""
    rnd = torch.randn(n, codec.head_dim, generator=gen) * torch.rand(n, 1, generator=gen) * 3
    rows = torch.cat([_special_rows(codec.head_dim), _near_boundaries(codec, 2, gen), rnd])
    return rows[torch.randperm(rows.shape[0], generator=gen)[:n]] if rows.shape[0] >= n else rows


def _pair_one(k_kind: str, v_kind: str, d: int, dtype: torch.dtype, k_opts: dict, layout: str, t: int,
              device: str, gen: torch.Generator) -> int:
    """Mismatching bytes of one encode_pair_kernel launch against Codec.encode of the keys (centered and scaled as
    the layout says) and of the values, at per-row positions, plus untouched-slot checks."""
    from compactkv.attention.triton.encode import launch_pair
    kc, vc = Codec(k_kind, d, **k_opts), Codec(v_kind, d, seed=1)
    b, h = 2, 3
    xs = []
    for codec in (kc, vc):
        x = _rows_for(codec, b * h * t, gen).reshape(b, h, t, d).to(dtype)
        if dtype == torch.bfloat16 and device == "cpu":  # the interpreter's bf16 subnormals (see _one)
            x = torch.where(x.float().abs() < torch.finfo(torch.float32).tiny, 0, x)
        xs.append(x)
    center = torch.randn(b, h, 1, d, generator=gen) * 2 if "+center" in layout else None
    scale = torch.exp(torch.randn(h, d, generator=gen)).clamp(1 / 16, 16) if "+scale" in layout else None
    refs = (kc.encode(centered_scaled(xs[0], center, scale)), vc.encode(xs[1]))
    pos = torch.tensor([0, 5], dtype=torch.int32, device=device)
    planar = layout.startswith("planar")
    targets = []
    for codec in (kc, vc):
        width = codec.row_bytes - 2 if planar else codec.row_bytes
        out = torch.full((b, h, t + 7, width), 0x5A, dtype=torch.uint8, device=device)
        targets.append((out, torch.full((b, h, t + 7), 7.0, dtype=torch.float16, device=device)) if planar else out)
    launch_pair(kc, xs[0].to(device), targets[0], vc, xs[1].to(device), targets[1], pos,
                center=center.to(device) if center is not None else None,
                scale=scale.to(device) if scale is not None else None)
    bad = 0
    for target, ref in zip(targets, refs):
        out = target[0] if planar else target
        got = out.cpu()
        if planar:
            got = torch.cat([target[1].cpu().unsqueeze(-1).view(torch.uint8), got], dim=-1)
        bad += int((got[0, :, :t] != ref[0]).sum()) + int((got[1, :, 5:5 + t] != ref[1]).sum())
        if not ((out[1, :, :5] == 0x5A).all() and (out[0, :, t:] == 0x5A).all()):
            bad += 10 ** 6
    return bad


def _pair_mismatches(device: str) -> dict[str, int]:
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    return {f"pair {k}/{v} d={d} {str(dt)[6:]} {o} {lay} t={t}": _pair_one(k, v, d, dt, o, lay, t, device, gen)
            for k, v, d, dt, o, lay, t in PAIR_CASES}


def _interpreter_main() -> None:
    for kernel in ENCODE_TESTED:
        for case, bad in _mismatches(kernel, "cpu").items():
            print(f"{kernel} {case}: mismatched bytes {bad}")
    for case, bad in _split_mismatches("cpu").items():
        print(f"{case}: mismatched bytes {bad}")
    for case, bad in _pair_mismatches("cpu").items():
        print(f"{case}: mismatched bytes {bad}")


CUDA_CASES = [(kernel,) + case for kernel in ENCODE_TESTED for case in _cases(kernel)]


@pytest.mark.parametrize("kernel,kind,d,dtype,opts,layout", CUDA_CASES,
                         ids=[f"{c[0]}-{c[1]}-d{c[2]}-{str(c[3])[6:]}-{c[5]}-{len(c[4])}opts" for c in CUDA_CASES])
def test_encode_kernels_bit_identical_on_cuda(kernel, kind, d, dtype, opts, layout):
    pytest.importorskip("triton", reason="triton is not installed")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (the interpreter test covers the CPU)")
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    assert _one(kernel, kind, d, dtype, opts, layout, "cuda", gen) == 0


def test_encode_kernels_in_batch_slices_on_cuda():
    pytest.importorskip("triton", reason="triton is not installed")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (the interpreter test covers the CPU)")
    assert not any(_split_mismatches("cuda").values())


@pytest.mark.parametrize("case", PAIR_CASES, ids=[f"{c[0]}-{c[1]}-d{c[2]}-{c[5]}-t{c[6]}" for c in PAIR_CASES])
def test_pair_kernel_bit_identical_on_cuda(case):
    pytest.importorskip("triton", reason="triton is not installed")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (the interpreter test covers the CPU)")
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    assert _pair_one(*case, "cuda", gen) == 0


def test_encode_kernels_bit_identical_in_interpreter():
    pytest.importorskip("triton", reason="triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [ln for ln in run.stdout.splitlines() if "mismatched bytes" in ln]
    assert len(lines) == sum(len(_cases(k)) for k in ENCODE_TESTED) + len(SPLIT_CASES) + len(PAIR_CASES), run.stdout
    bad = [ln for ln in lines if not ln.endswith("mismatched bytes 0")]
    assert not bad, bad


def test_auto_takes_the_lanes_kernel_for_decode_sized_writes(monkeypatch):
    """A few tokens per batch row and head (decode steps) go to the lanes kernel, prompts to the half-row kernel
    where HALF_DEFAULT lists the head_dim and bits (every kind at 128), else to the row kernel."""
    pytest.importorskip("triton", reason="triton is not installed")
    from compactkv.attention.triton import encode
    launched = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kw: launched.append((self.name, grid, kw.get("BLOCK_R")))
    monkeypatch.setattr(encode, "encode_row_kernel", Fake("row"))
    monkeypatch.setattr(encode, "encode_half_kernel", Fake("half"))
    monkeypatch.setattr(encode, "encode_mse_kernel", Fake("lanes"))
    monkeypatch.setattr(encode, "_row_constants", lambda *a: (0, (), None))
    monkeypatch.setattr(encode, "_constants", lambda *a: (None, None, None))
    for kind in KINDS:
        for d in (32, 64, 128, 256):
            for t in (1, 4, encode.ROW_MIN_TOKENS - 1, encode.ROW_MIN_TOKENS, 300):
                launched.clear()
                encode.encode_rows(Codec(kind, d), torch.zeros(2, 3, t, d))
                prompt = d in encode.ROW_HEAD_DIMS and t >= encode.ROW_MIN_TOKENS
                half = (d, int(kind[-1])) in encode.HALF_DEFAULT
                want = ("half" if half else "row") if prompt else "lanes"
                rows = {"half": encode.HALF_ROWS[int(kind[-1])], "row": 64}.get(want, 16)
                assert launched == [(want, (math.ceil(t / rows), 6), rows)], (kind, d, t, launched)
    assert encode.HALF_DEFAULT >= {(128, 2), (128, 3), (128, 4)}  # (every kind's prompts at head_dim 128)


def test_encode_pair_takes_decode_steps_on_cuda_only(monkeypatch):
    """encode_pair launches once where encode_rows would take the lanes kernel for both operands (CUDA, under
    ROW_MIN_TOKENS tokens or COMPACTKV_ENCODE_KERNEL=lanes, PAIR on), with as many rows per program as tokens up
    to 16, and declines, writing nothing, elsewhere."""
    pytest.importorskip("triton", reason="triton is not installed")
    from compactkv.attention.triton import encode
    launched = []

    class Fake:
        def __getitem__(self, grid):
            return lambda *args, **kw: launched.append((grid, kw["K_BITS"], kw["V_BITS"], kw["CENTER"], kw["BLOCK_R"]))
    monkeypatch.setattr(encode, "encode_pair_kernel", Fake())
    monkeypatch.setattr(encode, "_constants", lambda *a: (None, None, None))
    kc, vc = Codec("turbo4", 128), Codec("turbo2", 128, seed=1)

    def pair(t):
        x = torch.zeros(2, 3, t, 128)
        k_out = torch.zeros(2, 3, 40, kc.row_bytes, dtype=torch.uint8)
        v_out = torch.zeros(2, 3, 40, vc.row_bytes, dtype=torch.uint8)
        return encode.encode_pair(kc, x, k_out, vc, x.clone(), v_out, torch.zeros(2, dtype=torch.int32))
    assert pair(1) is False and not launched  # CPU tensors
    monkeypatch.setattr(encode, "_on_cuda", lambda x: True)  # (no GPU needed: the fake kernel runs nothing)
    assert pair(1) is True and launched == [((1, 6, 2), 4, 2, False, 1)]  # one token: one row per program
    launched.clear()
    assert pair(3) is True and launched[-1][0] == (1, 6, 2) and launched[-1][-1] == 4
    launched.clear()
    assert pair(encode.ROW_MIN_TOKENS - 1) is True and launched[0][0] == (1, 6, 2) and launched[0][-1] == 16
    launched.clear()
    assert pair(encode.ROW_MIN_TOKENS) is False and not launched  # a prompt: the row kernel, per operand
    monkeypatch.setenv("COMPACTKV_ENCODE_KERNEL", "lanes")
    assert pair(encode.ROW_MIN_TOKENS + 1) is True and launched == [((2, 6, 2), 4, 2, False, 16)]
    launched.clear()
    monkeypatch.setattr(encode, "PAIR", False)
    assert pair(1) is False and not launched


def test_launch_pair_names_bad_input():
    pytest.importorskip("triton", reason="triton is not installed")
    from compactkv.attention.triton.encode import launch_pair
    kc, vc = Codec("turbo4", 128), Codec("turbo4", 128, seed=1)
    x = torch.zeros(1, 2, 1, 128)
    rows = torch.zeros(1, 2, 8, kc.row_bytes, dtype=torch.uint8)
    planes = (torch.zeros(1, 2, 8, kc.row_bytes - 2, dtype=torch.uint8), torch.zeros(1, 2, 8, dtype=torch.float16))
    pos = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="both go to rows buffers or both to"):
        launch_pair(kc, x, rows, vc, x, planes, pos)
    with pytest.raises(ValueError, match="must have one shape"):
        launch_pair(kc, x, rows, vc, torch.zeros(1, 2, 2, 128), rows.clone(), pos)
    with pytest.raises(ValueError, match="positions"):
        launch_pair(kc, x, rows, vc, x, rows.clone(), None)
    with pytest.raises(ValueError, match="power of two"):
        launch_pair(kc, x, rows, vc, x, rows.clone(), pos, block_rows=3)
    with pytest.raises(ValueError, match=r"center must be float32 \[1, 2, 1, 128\]"):
        launch_pair(kc, x, rows, vc, x, rows.clone(), pos, center=torch.zeros(1, 2, 1, 64))
    with pytest.raises(ValueError, match=r"out must be uint8 \[1, 2, T, 66\]"):
        launch_pair(kc, x, rows, vc, x, torch.zeros(1, 2, 8, 60, dtype=torch.uint8), pos)
    with pytest.raises(ValueError, match="turbo4\\+qjl|qjl|not"):
        launch_pair(Codec("turbo4+qjl", 128), x, rows, vc, x, rows.clone(), pos)


def test_encode_rows_names_bad_input():
    pytest.importorskip("triton", reason="triton is not installed")
    from compactkv.attention.triton.encode import encode_rows
    codec = Codec("turbo4", 128)
    x = torch.zeros(1, 1, 4, 128)
    with pytest.raises(ValueError, match="kernel must be one of"):
        encode_rows(codec, x, kernel="fast")
    with pytest.raises(ValueError, match="row kernel takes"):
        encode_rows(Codec("turbo4", 256), torch.zeros(1, 1, 4, 256), kernel="row")
    with pytest.raises(ValueError, match="half-row kernel takes"):
        encode_rows(Codec("turbo4", 32), torch.zeros(1, 1, 4, 32), kernel="half")
    with pytest.raises(ValueError, match="multiple of 32"):
        encode_rows(codec, torch.zeros(1, 1, 16, 128), block_rows=48, kernel="row")
    with pytest.raises(ValueError, match="multiple of 16"):
        encode_rows(codec, torch.zeros(1, 1, 16, 128), block_rows=40)  # (16 tokens: auto takes the half-row kernel)
    with pytest.raises(ValueError, match="multiple of 16 from 16 to 128"):
        encode_rows(codec, torch.zeros(1, 1, 16, 128), block_rows=256, kernel="half")
    with pytest.raises(ValueError, match="power of two"):
        encode_rows(codec, x, block_rows=12, kernel="lanes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPACTKV_ENCODE_KERNEL", "fastest")
        with pytest.raises(ValueError, match="COMPACTKV_ENCODE_KERNEL must be 'auto' or 'lanes'"):
            encode_rows(codec, x)
        mp.setenv("COMPACTKV_ENCODE_KERNEL", "row")
        with pytest.raises(ValueError, match="COMPACTKV_ENCODE_KERNEL must be 'auto' or 'lanes'"):
            encode_rows(codec, x)
    with pytest.raises(ValueError, match=r"center must be float32 \[1, 1, 1, 128\]"):
        encode_rows(codec, x, center=torch.zeros(1, 1, 1, 128, dtype=torch.float16))
    with pytest.raises(ValueError, match="center must be float32"):
        encode_rows(codec, x, center=torch.zeros(1, 1, 4, 128))
    with pytest.raises(ValueError, match=r"scale must be float32 \[1, 128\]"):
        encode_rows(codec, x, scale=torch.ones(128))
    with pytest.raises(ValueError, match="even byte addresses"):
        encode_rows(codec, x, torch.zeros(1, 1, 4, 67, dtype=torch.uint8)[..., 1:])
    with pytest.MonkeyPatch.context() as mp:  # more heads than a grid's second dimension takes
        from compactkv.attention.triton import encode
        mp.setattr(encode, "GRID_Y", 2)
        with pytest.raises(ValueError, match="3 heads: the encode kernel takes at most 2"):
            encode_rows(codec, torch.zeros(1, 3, 4, 128))


if __name__ == "__main__":
    _interpreter_main()
