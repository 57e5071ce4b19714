"""`compactkv bench codec --mode quality`: D_mse and D_prod against the paper, and plain vs norm-corrected turboB.

All on fresh Gaussian data (seeded with --seed for a reproducible report). D_mse is the mean ‖x − x̂‖² of unit
vectors; D_prod is d · Var[estimate − ⟨y, x⟩] for independent unit x, y. The norm-correction study reports, for
plain (store ‖x‖) and corrected (store ‖x‖/‖c[idx]‖) turboB: per-vector MSE, norm bias E[‖x̂‖/‖x‖] − 1,
inner-product bias (regression slope of ⟨y, x̂⟩ on ⟨y, x⟩, minus 1) and the relative error of softmax attention.
"""

from __future__ import annotations

import math

import torch

from compactkv.core import Codec, Rotation, lloyd_max
from compactkv.core.quantizer import MSEQuantizer, QJLSketch

PAPER_DMSE = {1: 0.363, 2: 0.117, 3: 0.0345, 4: 0.0095}
PAPER_DPROD = {1: 1.57, 2: 0.56, 3: 0.18, 4: 0.047}  # printed as D_prod ≈ value / d


def _unit(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).float()


def _mse_recon(x: torch.Tensor, bits: int, norm_correction: bool) -> torch.Tensor:
    d = x.shape[-1]
    if bits == 1:  # no public 1-bit kind: the internal quantizer, plain norm
        q = MSEQuantizer(d, 1, 0)
        idx, norm, _ = q.quantize(x)
        c = q.centroids(idx)
        scale = norm / c.norm(dim=-1) if norm_correction else norm
        return scale[:, None] * q.rotation.inverse(c)
    codec = Codec(f"turbo{bits}", d, norm_correction=norm_correction)
    return codec.decode(codec.encode(x))


def dmse(n: int, g: torch.Generator, dims=(64, 128, 256)) -> list[dict]:
    rows = []
    for d in dims:
        x = _unit(n, d, g)
        for b in (1, 2, 3, 4):
            e = ((_mse_recon(x, b, False) - x).double() ** 2).sum(-1)
            ec = ((_mse_recon(x, b, True) - x).double() ** 2).sum(-1)
            rows.append({"d": d, "bits": b, "plain": float(e.mean()), "plain_se": float(e.std() / math.sqrt(n)),
                         "exact": lloyd_max(d, b).mse_per_vector, "paper": PAPER_DMSE[b],
                         "corrected": float(ec.mean())})
    return rows


def dprod(n: int, g: torch.Generator, d: int = 128) -> list[dict]:
    rows = []
    x, y = _unit(n, d, g), _unit(n, d, g)
    true = (x.double() * y.double()).sum(-1)
    for b in (1, 2, 3, 4):
        if b == 1:  # 0-bit MSE: QJL of the whole rotated unit vector
            rot, sk = Rotation(d, 0), QJLSketch(d, 0)
            signs = sk.signs(rot.forward(x)).float() * 2 - 1
            est = sk.scale * (sk.project(rot.forward(y)) * signs).sum(-1)
            est_self = sk.scale * (sk.project(rot.forward(x)) * signs).sum(-1)
        else:
            codec = Codec(f"turbo{b}+qjl", d)
            enc = codec.encode(x)
            est, est_self = codec.inner_product(y, enc), codec.inner_product(x, enc)
        err = est.double() - true
        bias = est_self.double() - 1.0
        theory = math.pi / 2 * (1.0 if b == 1 else lloyd_max(d, b - 1).mse_per_vector)
        rows.append({"d": d, "bits": b, "measured": float(err.var()) * d, "theory": theory,
                     "paper": PAPER_DPROD[b], "bias_self": float(bias.mean()),
                     "bias_self_se": float(bias.std() / math.sqrt(n))})
    return rows


def _attention(q, k, v, scale):
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v


def norm_study(n: int, g: torch.Generator, d: int = 128, tokens: int = 1024, queries: int = 32) -> list[dict]:
    """Plain vs norm-corrected turbo2/3/4 (plus the other turbo kinds at their defaults, for reference)."""
    x = torch.randn(n, d, generator=g) * torch.exp(0.5 * torch.randn(n, 1, generator=g))
    y = torch.randn(n, d, generator=g)
    trials = max(1, n // tokens)
    K = torch.randn(trials, tokens, d, generator=g)
    V = torch.randn(trials, tokens, d, generator=g)
    Q = torch.randn(trials, queries, d, generator=g)
    variants = [(f"turbo{b}", nc) for b in (2, 3, 4) for nc in (False, True)]
    variants += [(k, True) for k in ("turbo2.5", "turbo3.5", "turbo2+qjl", "turbo3+qjl", "turbo4+qjl")]
    rows = []
    for kind, nc in variants:
        codec = Codec(kind, d, norm_correction=nc)
        codec.encode(torch.randn(4096, d, generator=g))  # fractional kinds: outliers from a first batch
        xh = codec.decode(codec.encode(x))
        u = torch.nn.functional.normalize(x, dim=-1)
        uh = codec.decode(codec.encode(u))
        ip, iph = (y * x).sum(-1).double(), codec.inner_product(y, codec.encode(x)).double()
        row = {"kind": kind, "norm_correction": nc if codec.spec.family in ("mse", "frac") else None,
               "mse_unit": float(((uh - u).double() ** 2).sum(-1).mean()),
               "norm_bias": float((xh.norm(dim=-1) / x.norm(dim=-1)).mean() - 1),
               "ip_slope_bias": float((ip * iph).sum() / (ip * ip).sum() - 1)}
        kh, vh = codec.decode(codec.encode(K)), codec.decode(codec.encode(V))
        for name, temp in (("attn_rel_err", 1.0), ("attn_rel_err_sharp", 4.0)):
            s = temp / math.sqrt(d)
            o, oh = _attention(Q, K, V, s), _attention(Q, kh, vh, s)
            row[name] = float(((oh - o).norm(dim=-1) / o.norm(dim=-1)).mean())
        rows.append(row)
    return rows


def tables(report: dict) -> str:
    out = ["D_mse (mean ‖x − x̂‖² of unit vectors), plain vs exact codebook vs paper, and norm-corrected:",
           "| d | b | measured plain | ± SE | exact (codebook) | paper | norm-corrected |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["dmse"]:
        out.append(f"| {r['d']} | {r['bits']} | {r['plain']:.5f} | {r['plain_se']:.5f} | {r['exact']:.5f} "
                   f"| {r['paper']} | {r['corrected']:.5f} |")
    out += ["", "D_prod · d (variance of the +qjl inner-product error × d), independent unit x, y:",
            "| b | kind | measured | theory (π/2)·D_mse(b−1) | paper | bias at y = x | ± SE |",
            "|---:|---|---:|---:|---:|---:|---:|"]
    for r in report["dprod"]:
        kind = "internal (0-bit MSE)" if r["bits"] == 1 else f"turbo{r['bits']}+qjl"
        out.append(f"| {r['bits']} | {kind} | {r['measured']:.4f} | {r['theory']:.4f} | {r['paper']} "
                   f"| {r['bias_self']:+.5f} | {r['bias_self_se']:.5f} |")
    out += ["", "Norm correction (d=128; attention: 1024 keys, 32 queries, logits q·k/√d and 4·q·k/√d):",
            "| kind | norm corr. | MSE (unit) | norm bias | ⟨y,x̂⟩ slope − 1 | attn rel. err | attn rel. err (sharp) |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["norm_study"]:
        nc = "-" if r["norm_correction"] is None else ("yes" if r["norm_correction"] else "no")
        out.append(f"| {r['kind']} | {nc} | {r['mse_unit']:.5f} | {r['norm_bias']:+.5f} | {r['ip_slope_bias']:+.5f} "
                   f"| {r['attn_rel_err']:.4f} | {r['attn_rel_err_sharp']:.4f} |")
    return "\n".join(out)


def quality(args) -> dict:
    from compactkv.bench.codec import machine

    g = torch.Generator().manual_seed(args.seed)
    n = args.n
    report = {"bench": "codec", "mode": "quality", "machine": machine(), "n": n, "seed": args.seed,
              "dmse": dmse(n, g), "dprod": dprod(n, g), "norm_study": norm_study(n, g)}
    print(tables(report))
    return report
