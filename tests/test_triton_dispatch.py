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
