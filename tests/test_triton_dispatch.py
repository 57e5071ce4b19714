"""Backend choice for compressed attention: runs everywhere (no GPU needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from compactkv.attention.dispatch import BACKEND_ENV, attend, resolve_backend, triton_unavailable
from compactkv.attention.reference import compressed_attention
from compactkv.cache.layer import TurboQuantLayer


def test_import_compactkv_does_not_import_triton():
    code = ("import sys, compactkv; a = 'triton' in sys.modules; import compactkv.attention; "
            "print(a, any(m.startswith('compactkv.attention.triton') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # (transformers' masking_utils may load triton via torch)


def test_resolve_backend_precedence(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend() == "auto"
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert resolve_backend() == "torch"
    assert resolve_backend("triton") == "triton"  # the explicit argument wins over the environment
    with pytest.raises(ValueError, match="accepted: auto, torch, triton"):
        resolve_backend("cuda")


def _layer():
    layer = TurboQuantLayer("turbo4", "turbo3", 64, sink_tokens=2, residual_length=8)
    torch.manual_seed(0)
    layer.update(torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64))
    return layer


def test_cpu_uses_the_reference():
    layer = _layer()
    q = torch.randn(1, 8, 1, 64)
    assert triton_unavailable(layer, q, None, None) == "the query is not on a CUDA device"
    assert torch.equal(attend(layer, q, None, 0.125), compressed_attention(layer, q, None, 0.125))


def test_forcing_triton_off_cuda_raises():
    layer = _layer()
    with pytest.raises(ValueError, match="not on a CUDA device"):
        attend(layer, torch.randn(1, 8, 1, 64), None, 0.125, backend="triton")


def _calls_encoder(layer, answer):
    """Install an encoder on `layer` that records (kind, shape) and returns answer(codec, x)."""
    seen = []

    def enc(codec, x):
        seen.append((codec.kind, tuple(x.shape)))
        return answer(codec, x)

    layer.encoder = enc
    return seen


def test_layer_encoder_hook_is_used_and_a_none_answer_falls_back_to_codec_encode():
    torch.manual_seed(1)
    k, v = torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64)
    plain = TurboQuantLayer("turbo4", "turbo3", 64, sink_tokens=2, residual_length=8, scale_keys=False)
    plain.update(k, v)
    hooked = TurboQuantLayer("turbo4", "turbo3", 64, sink_tokens=2, residual_length=8, scale_keys=False)
    # an encoder that takes only the keys' kind (as the Triton one declines kinds it lacks)
    seen = _calls_encoder(hooked, lambda codec, x: codec.encode(x) if codec.kind == "turbo4" else None)
    hooked.update(k, v)
    assert seen == [("turbo4", (1, 2, 30, 64)), ("turbo3", (1, 2, 30, 64))]
    for a, b in zip(plain.chunks_k + plain.chunks_v, hooked.chunks_k + hooked.chunks_v):
        assert torch.equal(a, b)
    # a wrong encoder is visible: its rows are what the layer stores
    wrong = TurboQuantLayer("turbo4", "turbo3", 64, sink_tokens=2, residual_length=8, scale_keys=False)
    _calls_encoder(wrong, lambda codec, x: torch.zeros(*x.shape[:-1], codec.row_bytes, dtype=torch.uint8))
    wrong.update(k, v)
    assert not torch.equal(wrong.chunks_k[0], plain.chunks_k[0])


class _PairEncoder:
    """An encoder with a `check` method (as the Triton one): rows of turbo4 only, checks recorded, a bad flag."""

    def __init__(self, bad: bool = False):
        self.calls, self.checks, self.bad = [], [], bad

    def __call__(self, codec, x, check=True):
        self.calls.append((codec.kind, check))
        return codec.encode(x) if codec.kind == "turbo4" else None

    def check(self, pairs):
        self.checks.append([(codec.kind, rows is not None) for codec, rows in pairs])
        if self.bad:
            raise ValueError("NaN or Inf")


def test_an_encoder_with_check_is_asked_once_for_k_and_v_together():
    """One check (one device sync in the Triton encoder) for both K and V, before anything is stored; rows the
    encoder declines come from codec.encode, as before."""
    torch.manual_seed(2)
    k, v = torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64)
    plain = TurboQuantLayer("turbo4", "turbo3", 64, sink_tokens=2, residual_length=8, scale_keys=False)
    plain.update(k, v)
    paired = TurboQuantLayer("turbo4", "turbo3", 64, sink_tokens=2, residual_length=8, scale_keys=False)
    paired.encoder = enc = _PairEncoder()
    paired.update(k, v)
    assert enc.calls == [("turbo4", False), ("turbo3", False)]
    assert enc.checks == [[("turbo4", True), ("turbo3", False)]]
    for a, b in zip(plain.chunks_k + plain.chunks_v, paired.chunks_k + paired.chunks_v):
        assert torch.equal(a, b)
    # a failed check raises before the layer stores anything
    before = ([c.clone() for c in paired.chunks_k], [c.clone() for c in paired.chunks_v], paired.n_compressed)
    enc.bad = True
    with pytest.raises(ValueError, match="NaN or Inf"):
        paired.update(torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64))
    assert paired.n_compressed == before[2]
    assert all(torch.equal(a, b) for a, b in zip(before[0] + before[1], paired.chunks_k + paired.chunks_v))


def test_cpu_attention_installs_no_encoder():
    layer = _layer()
    attend(layer, torch.randn(1, 4, 1, 64), None, 0.125)
    assert layer.encoder is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kinds", [("turbo4", "turbo2"), ("turbo3", "turbo3.5"), ("q8_0", "turbo4")])
def test_cuda_attention_installs_the_triton_encoder_with_identical_rows(monkeypatch, kinds):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    torch.manual_seed(2)
    k, v = torch.randn(2, 2, 100, 128, dtype=torch.float16), torch.randn(2, 2, 100, 128, dtype=torch.float16)
    q = torch.randn(2, 8, 100, 128, dtype=torch.float16)
    layers = []
    for dev, backend in (("cpu", "torch"), ("cuda", "auto")):
        layer = TurboQuantLayer(*kinds, 128, sink_tokens=4, residual_length=16)
        layer.update(k[..., :60, :].to(dev), v[..., :60, :].to(dev))
        attend(layer, q[..., :60, :].to(dev).float() if dev == "cpu" else q[..., :60, :].to(dev), None, 0.1,
               backend=backend)
        layer.update(k[..., 60:, :].to(dev), v[..., 60:, :].to(dev))
        attend(layer, q[..., 60:, :].to(dev).float() if dev == "cpu" else q[..., 60:, :].to(dev), None, 0.1,
               backend=backend)
        layers.append(layer)
    cpu, gpu = layers
    assert cpu.encoder is None and gpu.encoder is not None
    assert gpu.n_compressed == cpu.n_compressed > 0
    # keys are centered/scaled in float32 on each device: compare the rows the GPU stores with the CPU codec's
    # encoding of the same float32 inputs (bit-identical codes: one format on CPU and GPU)
    kin = (k[..., 4:4 + gpu.n_compressed, :].float().cuda() - gpu.k_mean)
    if gpu.k_scale is not None:
        kin = kin * gpu.k_scale[:, None, :]
    assert torch.equal(torch.cat(gpu.chunks_k, -2).cpu(), gpu.k_codec.encode(kin.cpu()))
    vin = v[..., 4:4 + gpu.n_compressed, :]
    assert torch.equal(torch.cat(gpu.chunks_v, -2).cpu(), gpu.v_codec.encode(vin))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_layer_encoder_rejects_non_finite_input_and_keeps_the_cache():
    from compactkv.attention.triton.encode import layer_encoder

    layer = TurboQuantLayer("turbo4", "turbo4", 64, residual_length=0, block_size=1, scale_keys=False)
    layer.encoder = layer_encoder
    layer.update(torch.randn(1, 2, 8, 64, device="cuda"), torch.randn(1, 2, 8, 64, device="cuda"))
    before = [c.clone() for c in layer.chunks_k]
    bad = torch.randn(1, 2, 4, 64, device="cuda")
    bad[0, 1, 2, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer.update(bad, torch.randn(1, 2, 4, 64, device="cuda"))
    assert all(torch.equal(a, b) for a, b in zip(before, layer.chunks_k))
    with pytest.raises(ValueError, match="NaN or Inf"):  # in V, caught by the same single check
        layer.update(torch.randn(1, 2, 4, 64, device="cuda"), bad)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.chunks_k))


def _backend():
    pytest.importorskip("triton")
    from compactkv.attention.triton import backend
    return backend


def test_query_map_and_chunk_tables_are_kept_per_layer_until_the_layer_changes():
    backend = _backend()
    torch.manual_seed(6)
    layer = TurboQuantLayer("turbo4", "turbo4", 64, sink_tokens=2, residual_length=0, block_size=8,
                            chunk_tokens=64, scale_keys=True)
    layer.update(torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64))
    layer.observe(torch.randn(1, 4, 40, 64))  # fits the key scale, compresses
    assert layer.n_compressed == 32 and layer.k_scale is not None
    q = torch.randn(1, 2, 4, 64)
    w = backend._query_maps(layer, 0.125, q.device)
    fwd, _ = backend.codec_maps(layer.k_codec, q.device)
    want = (q / layer.k_scale[None, :, None, :]) @ fwd * (0.125 * backend.LOG2E)
    assert torch.allclose(q @ w, want, atol=1e-5)
    assert backend._query_maps(layer, 0.125, q.device) is w  # kept
    assert backend._query_maps(layer, 0.5, q.device) is not w  # another scaling: rebuilt
    src = backend._packed_source(layer, 1, q.device)
    assert backend._packed_source(layer, 1, q.device) is src
    layer.update(torch.randn(1, 2, 16, 64), torch.randn(1, 2, 16, 64))  # a new compression replaces the chunk
    src2 = backend._packed_source(layer, 1, q.device)
    assert src2 is not src and int(src2[2][0]) == layer.n_compressed == 48
    odd = TurboQuantLayer("turbo4", "turbo4", 64, residual_length=0, block_size=8, chunk_tokens=40,
                          scale_keys=False)  # 40-token chunks are not a multiple of the kernel tile: one copy
    odd.update(torch.randn(1, 2, 96, 64), torch.randn(1, 2, 96, 64))
    assert len(odd.chunks_k) == 3 and backend._packed_source(odd, 1, q.device)[3] == backend.ONE_CHUNK
    assert "triton_source" not in odd.backend_state  # the concatenated copy is not held beside the cache
    layer.batch_select_indices(torch.tensor([0]))  # replaced tensors: nothing derived from the old ones is kept
    assert layer.backend_state == {}
    layer.reset()
    assert layer.backend_state == {}


@pytest.mark.parametrize("g", [1, 3])
def test_prefill_after_history_is_bottom_right_causal(g):
    """A prompt chunk after earlier tokens (tq < tk, no mask) attends causally aligned to the end, with GQA; here
    over fp16 windows only, so it runs without a GPU (the compressed part is covered by the CUDA tests)."""
    pytest.importorskip("triton")
    from compactkv.attention.triton.prefill import prefill_attention

    torch.manual_seed(7)
    layer = TurboQuantLayer("turbo4", "turbo4", 64, sink_tokens=4, residual_length=512)
    layer.update(torch.randn(1, 2, 100, 64), torch.randn(1, 2, 100, 64))
    layer.update(torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64))
    assert layer.n_compressed == 0
    q = torch.randn(1, 2 * g, 40, 64)
    got = prefill_attention(layer, q, None, 0.125, None).double()
    k = torch.cat([layer.sink_k, layer.recent_k], -2).double().repeat_interleave(g, 1)
    v = torch.cat([layer.sink_v, layer.recent_v], -2).double().repeat_interleave(g, 1)
    s = (q.double() @ k.transpose(-1, -2)) * 0.125
    keep = torch.arange(140)[None, :] <= torch.arange(100, 140)[:, None]
    want = (torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v).transpose(1, 2)
    assert torch.allclose(got, want, atol=2e-3)


def test_launch_options_out_of_range_are_refused_before_any_launch():
    pytest.importorskip("triton")
    from compactkv.attention.triton.decode import chunk_table, launch_splits, packed_kind
    from compactkv.core.codec import Codec
    pk = packed_kind(Codec("turbo4", 64))
    rows = torch.zeros(1, 2, 64, pk.row_bytes, dtype=torch.uint8)
    tab = chunk_table([rows])
    q, lengths = torch.zeros(1, 2, 4, 64), torch.full((1,), 64, dtype=torch.int32)
    with pytest.raises(ValueError, match="row_prefetch must be 0, 1 or 2"):
        launch_splits(q, tab, tab, lengths, pk, pk, chunk=64, max_len=64, tq=1, row_prefetch=3)
    for bad in (1, "kv", "K"):
        with pytest.raises(ValueError, match="table_regs must be None, False, True, 'k' or 'v'"):
            launch_splits(q, tab, tab, lengths, pk, pk, chunk=64, max_len=64, tq=1, table_regs=bad)
    with pytest.raises(ValueError, match="not a multiple of the block"):
        launch_splits(q, tab, tab, lengths, pk, pk, chunk=100, max_len=64, tq=1)


def test_a_cuda_layer_gets_its_encoder_at_its_first_update(monkeypatch):
    """The attention package installs the cache layers' encoder factory: a layer's first update (before any
    attention call) is encoded by the Triton encoder on CUDA, never on CPU or with COMPACTKV_BACKEND=torch."""
    from compactkv.attention import dispatch
    from compactkv.cache import layer as layer_mod

    assert layer_mod._ENCODER_FOR is dispatch.encoder_for
    cpu = TurboQuantLayer("turbo4", "turbo4", 64, scale_keys=False)
    cpu.update(torch.randn(1, 2, 8, 64), torch.randn(1, 2, 8, 64))
    assert cpu.encoder is None  # CPU: Codec.encode

    class _CudaLike:  # what the factory reads of x
        is_cuda = True

    monkeypatch.setattr(dispatch, "_has_triton", lambda: True)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert dispatch.encoder_for(_CudaLike()) is None
    monkeypatch.setattr(dispatch, "_has_triton", lambda: False)
    monkeypatch.delenv(BACKEND_ENV)
    assert dispatch.encoder_for(_CudaLike()) is None
    pytest.importorskip("triton", reason="the Triton encoder needs triton")
    monkeypatch.setattr(dispatch, "_has_triton", lambda: True)
    from compactkv.attention.triton.encode import layer_encoder
    assert dispatch.encoder_for(_CudaLike()) is layer_encoder


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_layer_encodes_its_first_update_with_the_kernel(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    layer = TurboQuantLayer("turbo4", "turbo4", 128, scale_keys=False)
    k, v = torch.randn(1, 2, 40, 128, device="cuda"), torch.randn(1, 2, 40, 128, device="cuda")
    layer.update(k, v)
    assert layer.encoder is not None and layer.n_compressed > 0
    assert torch.equal(torch.cat(layer.chunks_v, -2).cpu(), layer.v_codec.encode(v[..., :layer.n_compressed, :].cpu()))


def test_a_triton_older_than_the_kernels_is_named_and_not_used(monkeypatch):
    """triton older than dispatch.TRITON_MIN (no Gluon API as the kernels use it): `auto` keeps the torch
    reference and says why; a current or development release is taken."""
    import sys
    import types
    from compactkv.attention import dispatch

    for version, want in (("3.4.1", "older than 3.6"), ("3.6.0", None), ("3.9.0", None), ("3.10.0+git1a2b", None),
                          ("main", None)):
        monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__=version))
        dispatch._triton_missing.cache_clear()
        why = dispatch._triton_missing()
        assert (why is None) if want is None else (want in why and version in why), (version, why)
        assert dispatch._has_triton() == (want is None)
        cuda_query = types.SimpleNamespace(is_cuda=True)  # (what triton_unavailable reads first)
        if want is not None:  # the reason reaches the backend choice (auto: torch; triton: a ValueError naming it)
            assert dispatch.triton_unavailable(None, cuda_query, None, None) == why
    monkeypatch.setitem(sys.modules, "triton", None)  # an import that fails
    dispatch._triton_missing.cache_clear()
    assert dispatch._triton_missing() == "triton is not installed"
    monkeypatch.undo()
    dispatch._triton_missing.cache_clear()
