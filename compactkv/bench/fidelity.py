"""`compactkv bench fidelity`: per-layer attention fidelity of each KV kind on real activations vs f16.

One f16 forward of --ctx corpus tokens records every layer's post-RoPE queries, keys and values (Llama-style
attention: q_proj/k_proj/v_proj + rotary). Each kind then stores that layer's K/V in a TurboQuantLayer (every token
compressed) and reports, per layer, mean cosine vs the float32 reference of: attention outputs (compressed
attention vs exact causal attention), causal score rows (q·k̂ vs q·k), and K and V reconstructions.
Target from the original plan: attention-output cosine >= 0.995 for turbo4.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .common import DEFAULT_CORPUS, add_model_args, corpus_ids, load, table, write_json

DEFAULT_KINDS = "q8_0,turbo4,turbo3.5,turbo3,turbo2.5,turbo2,turbo4+qjl,turbo3+qjl"
TARGET = 0.995


def register(subparsers) -> None:
    p = subparsers.add_parser("fidelity", help="per-layer cosine of attention outputs, scores and K/V vs f16")
    p.add_argument("--kinds", default=DEFAULT_KINDS, help="comma-separated kinds: KIND or K/V (e.g. f16/turbo4)")
    p.add_argument("--ctx", type=int, default=512, help="tokens of real text (default 512)")
    p.add_argument("--sinks", type=int, default=4, help="first tokens kept fp16, as the cache default (4)")
    p.add_argument("--corpus", default=os.environ.get("COMPACTKV_CORPUS", DEFAULT_CORPUS))
    add_model_args(p)
    p.set_defaults(func=main)


def capture_qkv(model, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(q [1,Hq,T,D], k [1,Hkv,T,D], v [1,Hkv,T,D]) per decoder layer from one uncompressed forward of ids [1, T]."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    layers = model.model.layers
    if not all(hasattr(l.self_attn, n) for l in layers for n in ("q_proj", "k_proj", "v_proj")):
        raise ValueError("fidelity needs Llama-style attention modules with q_proj, k_proj and v_proj")
    got = [None] * len(layers)

    def hook(i):
        def fn(module, args, kwargs):
            h = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            d = module.head_dim
            shape = (*h.shape[:-1], -1, d)
            q = module.q_proj(h).view(shape).transpose(1, 2)
            k = module.k_proj(h).view(shape).transpose(1, 2)
            v = module.v_proj(h).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            got[i] = (q.float(), k.float(), v.float())
        return fn

    handles = [l.self_attn.register_forward_pre_hook(hook(i), with_kwargs=True) for i, l in enumerate(layers)]
    try:
        with torch.inference_mode():
            model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine over the last dimension."""
    return float(F.cosine_similarity(a.flatten(0, -2).double(), b.flatten(0, -2).double(), dim=-1).mean())


def layer_fidelity(kind: str, q, k, v, seed: int = 0, scale_keys: bool = True, sink_tokens: int = 0,
                   unbiased_keys: bool = True) -> dict:
    """Cosines of one layer's attention output, causal score rows, K and V for `kind` (KIND or K/V) vs float32."""
    from compactkv.attention.dispatch import attend
    from compactkv.cache.layer import TurboQuantLayer

    d, t = q.shape[-1], q.shape[-2]
    scale = d ** -0.5
    k_kind, _, v_kind = kind.partition("/")
    layer = TurboQuantLayer(k_kind, v_kind or k_kind, d, residual_length=0, block_size=1, seed=seed,
                            scale_keys=scale_keys, sink_tokens=sink_tokens, unbiased_keys=unbiased_keys)
    layer.update(k, v)
    out = attend(layer, q, None, scale, backend="torch").transpose(1, 2)
    g = q.shape[1] // k.shape[1]
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=True,
                                         scale=scale)
    rows_k, rows_v = torch.cat(layer.chunks_k, -2), torch.cat(layer.chunks_v, -2)
    k_hat = torch.cat([layer.sink_k.float(), layer.decode_keys(rows_k)], -2)  # sinks stay fp16
    v_hat = torch.cat([layer.sink_v.float(), layer.v_codec.decode(rows_v)], -2)
    qg = q.reshape(1, k.shape[1], g * t, d)
    s_hat = None
    qs = qg / layer.k_scale[None, :, None, :] if layer.k_scale is not None else qg
    for qp, (vals, sc) in zip(layer.k_codec.query_parts(qs), layer.k_codec.key_parts(rows_k)):
        part = qp @ vals.transpose(-1, -2)
        part = part * sc.unsqueeze(-2) if sc is not None else part
        s_hat = part if s_hat is None else s_hat + part
    if layer.k_mean is not None:
        s_hat = s_hat + qg @ layer.k_mean.transpose(-1, -2)
    s_hat = torch.cat([qg @ layer.sink_k.float().transpose(-1, -2), s_hat], -1)
    s = qg @ k.transpose(-1, -2)
    causal = torch.ones(t, t, dtype=torch.bool).tril().repeat(g, 1)  # rows of s: group member * t + position
    keep = causal.sum(-1) > 1  # cosine of a 1-element row is trivially 1
    score_cos = F.cosine_similarity((s_hat * causal).double(), (s * causal).double(), dim=-1)[..., keep]
    return {"attn_cos": _cos(out, ref), "score_cos": float(score_cos.mean()),
            "k_cos": _cos(k_hat, k), "v_cos": _cos(v_hat, v)}


def summarize(rows: list[dict]) -> list[dict]:
    """Per kind: mean and worst layer of each cosine, and whether attention meets the target on every layer."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        s = {"kind": kind}
        for key in ("attn_cos", "score_cos", "k_cos", "v_cos"):
            s[key] = sum(r[key] for r in mine) / len(mine)
            s[key + "_min"] = min(r[key] for r in mine)
        s["worst_layer"] = min(mine, key=lambda r: r["attn_cos"])["layer"]
        s["target"] = "PASS" if s["attn_cos_min"] >= TARGET else "MISS"
        out.append(s)
    return out


COLUMNS = [("kind", "kind", "{}"), ("attn_cos", "attn out cos", "{:.5f}"), ("attn_cos_min", "worst layer", "{:.5f}"),
           ("worst_layer", "layer", "{}"), ("score_cos", "score cos", "{:.5f}"), ("k_cos", "K cos", "{:.5f}"),
           ("v_cos", "V cos", "{:.5f}"), ("target", f">= {TARGET}", "{}")]


def main(args) -> dict:
    if args.sinks < 0:
        raise ValueError(f"--sinks must be >= 0, got {args.sinks}")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    from compactkv.core.kinds import parse_kind

    for kind in kinds:
        for part in kind.split("/", 1):
            parse_kind(part)
    model, tokenizer, name = load(args.model, args.gguf_file, args.device)
    ids = corpus_ids(tokenizer, args.corpus, args.ctx).view(1, -1)
    qkv = capture_qkv(model, ids)
    rows = []
    for kind in tqdm(kinds, desc="fidelity"):
        for i, (q, k, v) in enumerate(qkv):
            rows.append({"kind": kind, "layer": i, **layer_fidelity(kind, q, k, v, sink_tokens=args.sinks)})
    summary = summarize(rows)
    print(f"{name}, {ids.shape[1]} tokens of {os.path.basename(args.corpus)}, {len(qkv)} layers; "
          f"cosines vs float32, mean over layers (worst layer shown)")
    print(table(summary, COLUMNS))
    report = {"bench": "fidelity", "model": name, "ctx": ids.shape[1], "target_attn_cos": TARGET,
              "sink_tokens": args.sinks,
              "summary": summary, "layers": rows}
    write_json(args.json, report)
    return 0
