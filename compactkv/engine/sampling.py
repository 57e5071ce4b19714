"""Sampling settings and the next-token sampler: greedy at temperature 0, else temperature, top-k, top-p."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_STOPS = 16
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingConfig:
    """How one request samples. `top_k=0` and `top_p=1` disable those filters; `logprobs=None` skips them."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not _is_num(self.temperature) or not 0 <= self.temperature <= 100:
            raise ValueError(f"temperature must be a number in [0, 100], got {self.temperature!r}")
        if not _is_num(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer or null, got {self.seed!r}")
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOPS or \
                not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be up to {MAX_STOPS} non-empty strings, got {self.stop!r}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(f"logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}] or null, got {self.logprobs!r}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator:
    """A private RNG for one request: seeded when `seed` is given, else from fresh entropy."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed % (1 << 63))
    return gen


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits [V] with everything outside the top-k and the top-p nucleus set to -inf (the best token always kept)."""
    out = logits.clone()
    if 0 < top_k < out.numel():
        kth = torch.topk(out, top_k).values[-1]
        out[out < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
        out[order[before >= top_p]] = float("-inf")
    return out


def sample_token(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator) -> int:
    """Next token id from logits [V]: argmax at temperature 0, else a draw from the filtered distribution (on the
    generator's device: logits elsewhere are moved there first)."""
    logits = logits.float()
    if cfg.temperature != 0 and logits.device != generator.device:
        logits = logits.to(generator.device)
    if cfg.temperature == 0:
        return int(torch.argmax(logits))
    scores = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """(log-probability of `token`, the `top` most likely (id, logprob)) under the unmodified model distribution."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logp, top) if top else None
    pairs = [(int(i), float(v)) for v, i in zip(best.values, best.indices)] if best is not None else []
    return float(logp[token]), pairs
