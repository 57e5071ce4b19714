"""`Codec`: one KV kind at one head_dim, turning [..., head_dim] tensors into uint8 rows and back.

Every kind is described to attention code as a list of *segments*: a channel subset of the vector, a linear map
applied to the matching query part (`query_parts`), per-row values and scales in the mapped space (`key_parts`),
and the adjoint map bringing accumulated values back (`combine`). So ⟨q, x̂⟩ = Σ_s scale_s · ⟨A_s q_s, v_s⟩ and a
softmax-weighted sum of x̂ is Σ_s scatter(A_sᵀ Σ_t p_t scale_s,t v_s,t): attention never rebuilds x̂ itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from .codebook import lloyd_max
from .kinds import Q8_BLOCK, check_head_dim, parse_kind, row_bytes
from .packing import pack_bits, packed_nbytes
from .quantizer import MSEQuantizer, QJLSketch, tree_norm

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FP16_MAX = 65504.0


@dataclass(frozen=True)
class Segment:
    """One additive part of a decoded vector: x̂[channels] += adj(scale · vals)."""

    width: int  # length of vals (the mapped space)
    fwd: Callable[[torch.Tensor], torch.Tensor]  # query part [..., m] -> [..., width]
    adj: Callable[[torch.Tensor], torch.Tensor]  # accumulated [..., width] -> [..., m]
    group: int  # index into the codec's channel groups


def _f16_bytes(t: torch.Tensor) -> torch.Tensor:
    """float [...] -> uint8 [..., 2] holding it as little-endian float16."""
    return t.to(torch.float16).unsqueeze(-1).contiguous().view(torch.uint8)


def _read_f16(rows: torch.Tensor, offset: int) -> torch.Tensor:
    """The float16 at byte `offset` of each row, as float32 [...]."""
    return rows[..., offset:offset + 2].contiguous().view(torch.float16).squeeze(-1).float()


def _expand(idx: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """Channel indices [*S, m] broadcast to [*lead, m]; ValueError when S does not broadcast to lead."""
    if idx.dim() - 1 > len(lead) or any(s not in (1, t) for s, t in zip(reversed(idx.shape[:-1]), reversed(lead))):
        raise ValueError(f"outlier channel set of shape {list(idx.shape)} does not broadcast to the leading dims "
                         f"{list(lead)} of the input")
    return idx.expand(*lead, idx.shape[-1])


@functools.lru_cache(maxsize=None)
def norm_scale(dim: int, bits: int, norm_correction: bool) -> float:
    """Factor on the stored norm that makes a turbo reconstruction unbiased along x (E[x̂·x] = ‖x‖²): with norm
    correction x̂ has x's norm and cosine sqrt(1 - D) with it, without it ‖x̂‖ ≈ sqrt(1 - D)‖x‖ as well, so
    1/sqrt(1 - D) resp. 1/(1 - D); D = the codebook's mean squared error per unit vector (exact density)."""
    d = lloyd_max(dim, bits).mse_per_vector
    f = (1.0 - d) ** -0.5 if norm_correction else 1.0 / (1.0 - d)
    return float(torch.tensor(f, dtype=torch.float32))  # a float32 value: the same product on every device


class Codec:
    """Encoder/decoder for one kind at one head_dim.

    kind: one of compactkv.KINDS. seed: rotation / QJL seed (same seed, same codes on any device).
    norm_correction: for turboB kinds, store ‖x‖/‖c[idx]‖ instead of ‖x‖ so x̂ keeps x's exact norm.
    unbiased: also multiply the stored norm by 1/sqrt(1 - D) (1/(1 - D) without norm correction), D the codebook's
    distortion per unit vector, so that E[x̂·x] = ‖x‖²: scores q·k̂ are then unbiased instead of shrunk by
    sqrt(1 - D) (the cache uses it for keys; docs/codec.md). Same row format, the norm field scaled.
    outliers: for turboB.5 kinds, long tensor [*S, head_dim/2] of the channels given B+1 bits, S broadcastable
    to the leading dims of the inputs (e.g. [H, 1, d/2] for per-head sets on [B, H, T, d]); when None, the
    first `encode` picks the d/2 channels of largest mean square over everything it sees and keeps them.
    """

    def __init__(self, kind: str, head_dim: int, seed: int = 0, norm_correction: bool = True,
                 outliers: torch.Tensor | None = None, unbiased: bool = False):
        check_head_dim(kind, head_dim)
        self.spec = parse_kind(kind)
        self.kind, self.head_dim, self.seed = kind, head_dim, int(seed)
        self.norm_correction = bool(norm_correction)
        self.unbiased = bool(unbiased)
        self.row_bytes = row_bytes(kind, head_dim)
        d, fam, b = head_dim, self.spec.family, self.spec.bits
        self._groups = [None]  # channel index tensors; None = all channels
        if fam == "mse":
            self._mse = [MSEQuantizer(d, b, seed)]
        elif fam == "frac":
            self._mse = [MSEQuantizer(d // 2, b + 1, seed), MSEQuantizer(d // 2, b, seed + 1)]
            self._groups = [None, None]
            if outliers is not None:
                self.set_outliers(outliers)
        elif fam == "prod":
            self._mse = [MSEQuantizer(d, b, seed)] if b else []
            self._qjl = QJLSketch(d, seed)

    # -- sizes ---------------------------------------------------------------------------------------------------
    @property
    def bits_per_value(self) -> float:
        """Stored bits per element, norms and scales included (= 8 * row_bytes / head_dim)."""
        return self.row_bytes * 8 / self.head_dim

    def nbytes(self, n_vectors: int) -> int:
        """Bytes taken by n stored vectors."""
        return int(n_vectors) * self.row_bytes

    def __repr__(self) -> str:
        return f"Codec({self.kind!r}, head_dim={self.head_dim}, seed={self.seed})"

    # -- outlier channels (fractional kinds) ---------------------------------------------------------------------
    @property
    def outliers(self) -> torch.Tensor | None:
        return self._groups[0] if self.spec.family == "frac" else None

    def set_outliers(self, hi: torch.Tensor) -> None:
        """Fix the B+1-bit channel set: long [*S, d/2], distinct values in [0, d)."""
        d = self.head_dim
        hi = torch.as_tensor(hi).long()
        if hi.shape[-1] != d // 2 or hi.min() < 0 or hi.max() >= d:
            raise ValueError(f"outliers must be [..., {d // 2}] channel indices in [0, {d})")
        hi = hi.sort(-1).values
        mask = torch.zeros(*hi.shape[:-1], d, dtype=torch.int8, device=hi.device).scatter(-1, hi, 1)
        if int(mask.sum(-1).min()) != d // 2:
            raise ValueError("outlier channel indices must be distinct")
        lo = torch.argsort(mask, dim=-1, stable=True)[..., : d // 2]
        self._groups = [hi, lo]

    def fit_outliers(self, x: torch.Tensor, keep_dims: tuple[int, ...] = ()) -> torch.Tensor:
        """Choose the d/2 channels of largest mean square, averaging over all dims but `keep_dims` and the last."""
        if x.numel() == 0:
            raise ValueError("cannot choose outlier channels from an empty tensor")
        x = x.float()
        dims = [i for i in range(x.dim() - 1) if i not in {k % x.dim() for k in keep_dims}]
        energy = (x * x).mean(dim=dims, keepdim=True) if dims else x * x
        hi = energy.topk(self.head_dim // 2, dim=-1).indices
        while hi.dim() > 1 and hi.shape[0] == 1:  # [1, H, 1, d/2] -> [H, 1, d/2]: broadcasts to any rank
            hi = hi[0]
        self.set_outliers(hi)
        return self._groups[0]

    def group_parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [..., head_dim] split into the channel groups its segments quantize (turboB.5: the B+1-bit outlier
        channels, then the rest, each [..., head_dim/2]; other kinds: [x])."""
        return [self._gather(x, g) for g in range(len(self._groups))]

    def _gather(self, x: torch.Tensor, g: int) -> torch.Tensor:
        idx = self._groups[g]
        if idx is None:
            return x
        return torch.gather(x, -1, _expand(idx.to(x.device), x.shape[:-1]))

    # -- encode / decode -----------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, check_finite: bool) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in INPUT_DTYPES:
            raise ValueError(f"unsupported dtype {x.dtype}; accepted: float16, bfloat16, float32, float64")
        if x.dim() < 1 or x.shape[-1] != self.head_dim:
            raise ValueError(f"expected shape [..., {self.head_dim}], got {list(x.shape)}")
        if check_finite and x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError("input contains NaN or Inf; only finite values can be encoded")

    def encode(self, x: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
        """x: [..., head_dim] float16/bfloat16/float32/float64 -> uint8 [..., row_bytes]."""
        self._check_input(x, check_finite)
        fam = self.spec.family
        xf = x.float()
        if fam == "f16":
            if check_finite and xf.numel() and float(xf.abs().max()) > FP16_MAX:
                raise ValueError(f"values beyond ±{FP16_MAX} overflow the f16 kind; use q8_0 or a turbo kind")
            return xf.to(torch.float16).contiguous().view(torch.uint8)
        if fam == "q8_0":
            return self._encode_q8(xf)
        if fam == "frac" and self._groups[0] is None:
            if xf.numel() == 0:  # nothing to choose the outlier channels from: wait for real data
                return torch.empty(*xf.shape[:-1], self.row_bytes, dtype=torch.uint8, device=xf.device)
            self.fit_outliers(xf)
        parts_hdr, parts_codes = [], []
        for g, q in enumerate(self._mse):
            idx, norm, y = q.quantize(self._gather(xf, g))
            stored = norm
            if fam == "prod":
                r = y - q.centroids(idx)
                gamma = tree_norm(r)
            elif self.norm_correction:
                cn = tree_norm(q.centroids(idx))
                stored = torch.where(cn > 0, norm / torch.where(cn > 0, cn, torch.ones_like(cn)), norm)
            if fam != "prod" and self.unbiased:
                stored = stored * norm_scale(q.dim, q.bits, self.norm_correction)
            self._check_norm(stored)
            parts_hdr.append(_f16_bytes(stored))
            parts_codes.append(pack_bits(idx, q.bits))
        if fam == "prod":
            if not self._mse:  # 0-bit MSE: the whole unit vector is the residual
                norm = tree_norm(xf)
                safe = torch.where(norm > 0, norm, torch.ones_like(norm)).unsqueeze(-1)
                r = self._mse_free_rotation().forward(xf) / safe
                gamma = torch.where(norm > 0, torch.ones_like(norm), torch.zeros_like(norm))
                self._check_norm(norm)
                parts_hdr.append(_f16_bytes(norm))
            parts_hdr.append(_f16_bytes(gamma))
            parts_codes.append(pack_bits(self._qjl.signs(r), 1))
        return torch.cat(parts_hdr + parts_codes, dim=-1)

    def _mse_free_rotation(self):
        from .rotation import get_rotation
        return get_rotation(self.head_dim, self.seed)

    @staticmethod
    def _check_norm(n: torch.Tensor) -> None:
        if n.numel() and float(n.max()) > FP16_MAX:
            raise ValueError(f"a vector norm exceeds the float16 range (±{FP16_MAX}); cannot store it")

    def _encode_q8(self, xf: torch.Tensor) -> torch.Tensor:
        blocks = xf.reshape(*xf.shape[:-1], self.head_dim // Q8_BLOCK, Q8_BLOCK)
        amax = blocks.abs().amax(-1)
        scale = amax / 127.0
        inv = torch.where(scale > 0, 1.0 / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(scale))
        q = torch.round(blocks * inv.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
        self._check_norm(scale)
        rows = torch.cat([_f16_bytes(scale), q.view(torch.uint8)], dim=-1)
        return rows.reshape(*xf.shape[:-1], self.row_bytes)

    def _check_rows(self, rows: torch.Tensor) -> None:
        if not isinstance(rows, torch.Tensor) or rows.dtype != torch.uint8 or rows.shape[-1] != self.row_bytes:
            got = f"{rows.dtype} {list(rows.shape)}" if isinstance(rows, torch.Tensor) else type(rows).__name__
            raise ValueError(f"expected uint8 rows [..., {self.row_bytes}] of {self.kind}, got {got}")

    def decode(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 [..., row_bytes] -> [..., head_dim] in `dtype`."""
        self._check_rows(rows)
        parts = [seg.adj(vals * scale.unsqueeze(-1)) if scale is not None else seg.adj(vals)
                 for seg, (vals, scale) in zip(self.segments(), self.key_parts(rows))]
        return self.combine_groups(parts).to(dtype)

    # -- the segment view used by attention ----------------------------------------------------------------------
    def segments(self) -> list[Segment]:
        """The additive parts of this kind (see the module docstring)."""
        fam, d = self.spec.family, self.head_dim
        ident = lambda t: t  # noqa: E731
        if fam in ("f16", "q8_0"):
            return [Segment(d, ident, ident, 0)]
        segs = [Segment(q.dim, q.rotation.forward, q.rotation.inverse, g) for g, q in enumerate(self._mse)]
        if fam == "prod":
            rot = self._mse[0].rotation if self._mse else self._mse_free_rotation()
            qjl = self._qjl
            segs.append(Segment(d, lambda t: qjl.project(rot.forward(t)),
                                lambda t: rot.inverse(t @ qjl.matrix(t.device, t.dtype)), 0))
        return segs

    def query_parts(self, q: torch.Tensor) -> list[torch.Tensor]:
        """q: [..., head_dim] float -> per segment the mapped query part, float32 [..., width]."""
        qf = q.float()
        return [seg.fwd(self._gather(qf, seg.group)) for seg in self.segments()]

    def key_parts(self, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """rows: uint8 [..., row_bytes] -> per segment (vals float32 [..., width], scale float32 [...] or None)."""
        fam, d = self.spec.family, self.head_dim
        if fam == "f16":
            return [(rows.contiguous().view(torch.float16).float(), None)]
        if fam == "q8_0":
            blk = rows.reshape(*rows.shape[:-1], d // Q8_BLOCK, 2 + Q8_BLOCK)
            scale = blk[..., :2].contiguous().view(torch.float16).float()
            vals = blk[..., 2:].contiguous().view(torch.int8).float() * scale
            return [(vals.reshape(*rows.shape[:-1], d), None)]
        n_hdr = 2 * len(self._mse) + (2 if fam == "prod" and self._mse else 0) + (4 if fam == "prod" and not self._mse else 0)
        off, out = n_hdr, []
        for g, q in enumerate(self._mse):
            nb = packed_nbytes(q.dim, q.bits)
            out.append((q.centroids_packed(rows[..., off:off + nb]), _read_f16(rows, 2 * g)))
            off += nb
        if fam == "prod":
            norm = _read_f16(rows, 0)
            gamma = _read_f16(rows, 2)
            signs = self._qjl.signs_packed(rows[..., off:off + d // 8])
            out.append((signs, norm * gamma * self._qjl.scale))
        return out

    def combine_groups(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Sum per-segment parts already mapped back (adj) into full [..., head_dim] vectors."""
        if self.spec.family != "frac":
            out = parts[0]
            for p in parts[1:]:
                out = out + p
            return out
        lead = parts[0].shape[:-1]
        out = torch.zeros(*lead, self.head_dim, dtype=parts[0].dtype, device=parts[0].device)
        if self._groups[0] is None:
            if out.numel() == 0:
                return out
            raise ValueError(f"{self.kind} rows need the outlier channel set: pass outliers= or encode first")
        hi, lo = (g.to(parts[0].device) for g in self._groups)
        out = out.scatter(-1, _expand(hi, lead), parts[0])
        return out.scatter(-1, _expand(lo, lead), parts[1])

    def combine(self, accs: list[torch.Tensor]) -> torch.Tensor:
        """Per-segment accumulators in the mapped spaces [..., width] -> [..., head_dim] (applies each adj once)."""
        return self.combine_groups([seg.adj(a) for seg, a in zip(self.segments(), accs)])

    def inner_product(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """⟨q, x̂⟩ computed on the compressed rows (for +qjl kinds, the unbiased TurboQuant-prod estimator).

        q: [..., head_dim], rows: [..., row_bytes] with broadcastable leading dims -> float32 [...].
        """
        self._check_rows(rows)
        total = None
        for qp, (vals, scale) in zip(self.query_parts(q), self.key_parts(rows)):
            s = (qp * vals).sum(-1)
            s = s * scale if scale is not None else s
            total = s if total is None else total + s
        return total


def estimate_inner_product(codec: Codec, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """⟨y,x⟩ ≈ ‖x‖(⟨Πy, c[idx]⟩ + γ·√(π/2)/d·⟨SΠy, sign(Sr)⟩) for +qjl kinds; ⟨y, x̂⟩ for the others."""
    return codec.inner_product(q, rows)
