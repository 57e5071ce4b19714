"""Correctness of the Triton kernels on a CUDA GPU: prints one line per case and a summary, writes JSON.

    python scripts/gpu_check.py [--json PATH] [--quick]

Fresh random inputs every run. Encode: bytes differing from the CPU `Codec.encode` (must be 0). Decode attention:
relative error ‖out − ref‖/‖ref‖ against the torch reference (compressed_attention, float32) and against a float64
dense reference (decoded K/V, plain softmax), with outputs poisoned (NaN) before each run; ragged lengths not
multiples of any block; GQA 1/4/8; 1 and 3 query tokens (causal); masks; sinks/recent windows; chunked layers;
the static layer with a CUDA-graph-captured decode step; and a tiny random Llama through transformers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from functools import partial

import torch

from compactkv.attention.reference import compressed_attention, packed_dense_float64
from compactkv.attention.triton.backend import triton_attention
from compactkv.attention.triton.decode import (LOG2E, attend_packed, chunk_table, codec_maps, fast_unsupported,
                                               packed_kind)
from compactkv.attention.triton.encode import encode_into, encode_rows
from compactkv.cache.layer import TurboQuantLayer
from compactkv.cache.static import StaticTurboQuantLayer
from compactkv.core.codec import Codec

TOL = 3e-3  # fp16 tensor-core operands (query, centroids, probabilities): errors land near 3e-4
DEV = torch.device("cuda")
results: list[dict] = []


def record(check: str, ok: bool, **fields) -> None:
    fields = {"check": check, **fields, "ok": bool(ok)}
    results.append(fields)
    print(("PASS " if ok else "FAIL ") + " ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in fields.items() if k not in ("ok",)), flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_encode(kind: str, d: int, dtype) -> None:
    codec = Codec(kind, d, seed=7)
    x = (torch.randn(3, 4, 517, d, device=DEV) * torch.rand(3, 4, 517, 1, device=DEV) * 4).to(dtype)
    x[0, 0, 0] = 0  # a zero vector
    ref = codec.encode(x.cpu())
    out = torch.full((3, 4, 600, codec.row_bytes), 0xA5, dtype=torch.uint8, device=DEV)
    pos = torch.tensor([0, 11, 83], dtype=torch.int32, device=DEV)
    encode_rows(codec, x, out, positions=pos)
    got = torch.stack([out[i, :, p:p + 517] for i, p in enumerate(pos.tolist())]).cpu()
    bad = int((got != ref).sum())
    untouched = bool((out[1, :, :11] == 0xA5).all() and (out[0, :, 517:] == 0xA5).all())
    record("encode", bad == 0 and untouched, kind=kind, d=d, dtype=str(dtype).split(".")[-1],
           mismatched_bytes=bad, total_bytes=ref.numel(), untouched_ok=untouched)


def check_decode(kk: str, vk: str, d: int, g: int, tq: int, lut: bool = False, hkv: int = 2,
                 fast: bool | None = None) -> None:
    """attend_packed on ragged lengths vs float64 dense, and vs the torch reference per batch row. fast: None =
    the default kernel for the pair (decode_fast_kernel where supported), False = the split kernel."""
    kc, vc = Codec(kk, d, seed=1), Codec(vk, d, seed=2)
    lengths = [1037, 389, 3]
    b, t = len(lengths), max(lengths)
    k = torch.randn(b, hkv, t, d, device=DEV, dtype=torch.float16)
    v = torch.randn(b, hkv, t, d, device=DEV, dtype=torch.float16)
    rk, rv = kc.encode(k), vc.encode(v)
    chunk = 256
    ck = [rk[:, :, i:i + chunk].contiguous() for i in range(0, t, chunk)]
    cv = [rv[:, :, i:i + chunk].contiguous() for i in range(0, t, chunk)]
    q = torch.randn(b, hkv, g * tq, d, device=DEV)
    scaling = d ** -0.5
    fwd, _ = codec_maps(kc, DEV)
    _, adj = codec_maps(vc, DEV)
    qk = (q @ fwd if fwd is not None else q) * (scaling * LOG2E)
    out = torch.full((b, hkv, g * tq, d), float("nan"), device=DEV)
    lse = torch.full((b, hkv, g * tq), float("nan"), device=DEV)
    lens = torch.tensor(lengths, dtype=torch.int32, device=DEV)
    attend_packed(qk, chunk_table(ck), chunk_table(cv), lens, packed_kind(kc), packed_kind(vc), chunk=chunk,
                  max_len=t, tq=tq, causal=tq > 1, lut=lut, out=out, lse=lse, fast=fast)
    kernel = "split" if (fast is False or lut or fast_unsupported(packed_kind(kc), packed_kind(vc))) else "fast"
    got = out @ adj if adj is not None else out
    ref64 = packed_dense_float64(kc, vc, rk, rv, q, scaling, lengths, tq)
    ref_t = []
    for i, n in enumerate(lengths):  # torch reference on each batch row alone
        layer = StaticTurboQuantLayer(kk, vk, d, 1, hkv, n, device=DEV)
        layer.k_codec, layer.v_codec = kc, vc
        layer.write_rows(rk[i:i + 1, :, :n], rv[i:i + 1, :, :n])
        layer.cumulative_length = n
        qi = q[i:i + 1].reshape(1, hkv, g, tq, d).reshape(1, hkv * g, tq, d)
        ref_t.append(compressed_attention(layer, qi, None, scaling).transpose(1, 2).reshape(1, hkv, g * tq, d))
    ref_t = torch.cat(ref_t).float()
    e_t, e_64 = rel(got, ref_t), rel(got, ref64)
    e_ref64 = rel(ref_t, ref64)
    record("decode", e_t < TOL and e_64 < TOL and bool(torch.isfinite(lse).all()), k=kk, v=vk, d=d, gqa=g, tq=tq,
           kernel=kernel, lut=lut, lengths=lengths, err_vs_torch=e_t, err_vs_f64=e_64, torch_vs_f64=e_ref64)


def check_layer(kk: str, vk: str, d: int, g: int, tq: int, sink: int, resid: int, mask: bool, chunk: int,
                fresh: bool = False) -> None:
    """triton_attention vs compressed_attention on a TurboQuantLayer with windows, chunks and masks."""
    hkv, b = 2, 2
    layer = TurboQuantLayer(kk, vk, d, sink_tokens=sink, residual_length=resid, chunk_tokens=chunk)
    if not fresh:
        layer.update(torch.randn(b, hkv, 1500, d, device=DEV, dtype=torch.float16),
                     torch.randn(b, hkv, 1500, d, device=DEV, dtype=torch.float16))
    layer.update(torch.randn(b, hkv, tq, d, device=DEV, dtype=torch.float16),
                 torch.randn(b, hkv, tq, d, device=DEV, dtype=torch.float16))
    q = torch.randn(b, hkv * g, tq, d, device=DEV, dtype=torch.float16)
    tk = layer.stored_length()
    m = None
    if mask:
        m = torch.ones(b, 1, tq, tk, dtype=torch.bool, device=DEV)
        m[1, :, :, :29] = False  # left padding
        m &= torch.arange(tk, device=DEV)[None, :] <= (tk - tq + torch.arange(tq, device=DEV))[:, None]
    ref = compressed_attention(layer, q, m, d ** -0.5)
    got = triton_attention(layer, q, m, d ** -0.5)
    e = rel(got, ref)
    record("layer", e < TOL, k=kk, v=vk, d=d, gqa=g, tq=tq, sink=sink, recent=resid, mask=mask, chunk=chunk, fresh=fresh,
           n_compressed=layer.n_compressed, err_vs_torch=e)


def check_static_graph(kind: str, d: int = 128) -> None:
    """Static layer with the encode kernel: a captured decode step (append + attend) replayed vs eager."""
    b, hkv, g = 2, 8, 4
    layer = StaticTurboQuantLayer(kind, kind, d, b, hkv, 4096, device=DEV, encode=encode_into)
    layer.update(torch.randn(b, hkv, 3000, d, device=DEV, dtype=torch.float16),
                 torch.randn(b, hkv, 3000, d, device=DEV, dtype=torch.float16))
    kn = torch.randn(b, hkv, 1, d, device=DEV, dtype=torch.float16)
    vn = torch.randn_like(kn)
    q = torch.randn(b, hkv * g, 1, d, device=DEV, dtype=torch.float16)

    def step():
        layer.encode(layer.k_codec, kn, layer.k_target, layer.lengths)
        layer.encode(layer.v_codec, vn, layer.v_target, layer.lengths)
        layer.lengths += 1
        return triton_attention(layer, q, None, d ** -0.5)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up: compiles and caches tables (appends one token)
        layer.lengths -= 1
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_g = step()
    errs = []
    for _ in range(5):
        kn.copy_(torch.randn_like(kn))
        vn.copy_(torch.randn_like(vn))
        q.copy_(torch.randn_like(q))
        graph.replay()
        layer.cumulative_length += 1
        ref = compressed_attention(layer, q, None, d ** -0.5)
        errs.append(rel(out_g, ref))
    n = layer.cumulative_length
    rows_ok = bool((layer.chunks_k[0][:, :, n - 1:n].cpu() == layer.k_codec.encode(kn.cpu())).all())
    record("static_graph", max(errs) < TOL and rows_ok, kind=kind, d=d, replays=5, max_err_vs_torch=max(errs),
           length=int(layer.lengths[0]))


def check_model(kind: str) -> None:
    """Tiny random Llama through transformers: greedy tokens and logits, backend triton vs torch."""
    import os
    from transformers import LlamaConfig, LlamaForCausalLM
    import compactkv
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(DEV, torch.float16).eval()
    compactkv.attach(model)
    ids = torch.randint(0, 512, (2, 700), device=DEV)
    mask = torch.ones_like(ids)
    mask[1, :37] = 0  # left padding
    logits = {}
    for backend in ("torch", "triton"):
        os.environ["COMPACTKV_BACKEND"] = backend
        cache = compactkv.TurboQuantCache(model.config, k=kind, v=kind, sink_tokens=4, residual_length=32,
                                          block_size=16)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=12, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        logits[backend] = (out.sequences, torch.stack(out.logits).float())
    os.environ.pop("COMPACTKV_BACKEND")
    same = bool((logits["torch"][0] == logits["triton"][0]).all())
    e = rel(logits["triton"][1], logits["torch"][1])
    record("model", e < 1e-2, kind=kind, same_tokens=same, logits_err=e)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing checked")
        return 2
    t0 = time.time()
    print(f"device {torch.cuda.get_device_name()}", flush=True)
    dims = (64, 128) if args.quick else (64, 128, 256)
    plan = []
    for kind in ("turbo2", "turbo3", "turbo4"):
        for d in dims:
            plan.append(("encode", partial(check_encode, kind, d, torch.float16)))
        plan.append(("encode", partial(check_encode, kind, 128, torch.bfloat16)))
        plan.append(("encode", partial(check_encode, kind, 128, torch.float32)))
    pairs = [("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo2", "turbo2"), ("q8_0", "q8_0"), ("f16", "f16"),
             ("q8_0", "turbo4"), ("turbo4", "turbo2")]
    for kk, vk in pairs:
        for d in dims:
            plan.append(("decode", partial(check_decode, kk, vk, d, g=4, tq=1)))
    for g in (1, 8):
        plan.append(("decode", partial(check_decode, "turbo4", "turbo3", 128, g=g, tq=1)))
        plan.append(("decode", partial(check_decode, "turbo3", "turbo4", 64, g=g, tq=3)))
    plan.append(("decode", partial(check_decode, "turbo4", "turbo4", 128, g=4, tq=3)))
    plan.append(("decode", partial(check_decode, "q8_0", "turbo2", 256, g=8, tq=3)))
    for kind in ("turbo4", "turbo3", "turbo2"):
        plan.append(("decode", partial(check_decode, kind, kind, 128, g=4, tq=1, lut=True)))
        for d in dims:  # the split kernel on the pairs that now default to the fast kernel
            plan.append(("decode", partial(check_decode, kind, kind, d, g=4, tq=1, fast=False)))
    plan.append(("decode", partial(check_decode, "turbo2", "turbo4", 256, g=8, tq=2)))
    plan.append(("decode", partial(check_decode, "turbo4", "turbo2", 64, g=1, tq=3)))
    plan.append(("layer", partial(check_layer, "turbo4", "turbo4", 128, 4, 1, 0, 0, False, 1024)))
    plan.append(("layer", partial(check_layer, "turbo4", "turbo3", 128, 4, 1, 4, 64, True, 256)))
    for kind, g, sink, resid, chunk in (("turbo4", 4, 4, 64, 1024), ("turbo3", 8, 0, 0, 256), ("turbo2", 1, 4, 16, 64)):
        # a padded batch's one-token step: the table kernel over the rows with the mask as a bias (session 36)
        plan.append(("layer", partial(check_layer, kind, kind, 128, g, 1, sink, resid, True, chunk)))
    plan.append(("layer", partial(check_layer, "q8_0", "turbo4", 64, 8, 5, 3, 16, True, 100)))
    plan.append(("layer", partial(check_layer, "turbo2", "turbo2", 64, 1, 4, 0, 0, False, 512)))
    plan.append(("layer", partial(check_layer, "turbo4", "turbo3", 128, 4, 300, 4, 64, True, 256)))  # prefill path
    plan.append(("layer", partial(check_layer, "turbo3", "turbo4", 64, 8, 200, 0, 0, False, 1024)))
    plan.append(("layer", partial(check_layer, "turbo4", "turbo4", 128, 4, 777, 0, 0, False, 256, True)))
    plan.append(("layer", partial(check_layer, "q8_0", "turbo2", 128, 4, 333, 2, 16, True, 1024, True)))
    plan.append(("static_graph", partial(check_static_graph, "turbo4")))
    plan.append(("static_graph", partial(check_static_graph, "turbo3")))
    plan.append(("model", partial(check_model, "turbo4")))
    for name, fn in plan:
        try:
            fn()
        except Exception as e:  # one broken case must not hide the others
            traceback.print_exc()
            record(name, False, error=repr(e)[:300])
    bad = [r for r in results if not r["ok"]]
    worst = max((r.get("err_vs_f64", 0.0) for r in results), default=0.0)
    print(f"\n{len(results) - len(bad)}/{len(results)} checks passed in {time.time() - t0:.0f} s; "
          f"worst decode error vs float64 {worst:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "results": results}, f, indent=1, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
