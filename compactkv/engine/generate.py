"""One sequence from prompt ids to streamed token ids: chunked prefill into its own cache, then a decode loop.

`Generation.step()` does one unit of work (a prefill chunk or one decode step) so a scheduler can interleave many
sequences fairly; `stream_generate` drives a single one to the end for the CLI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .caches import cache_kwarg, cache_memory
from .sampling import SamplingConfig, make_generator, sample_token, token_logprobs
from .text import TextStream, eos_token_ids

FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its id, the text now safe to show, and its logprobs when asked for."""

    token: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass
class Timings:
    """Counts and wall-clock seconds of one generation (perf_counter timestamps)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    created: float = field(default_factory=time.perf_counter)
    prefill_start: float | None = None
    prefill_end: float | None = None
    last_token: float | None = None

    @property
    def prompt_seconds(self) -> float:
        return (self.prefill_end or 0.0) - (self.prefill_start or 0.0)

    @property
    def decode_seconds(self) -> float:
        return max(0.0, (self.last_token or 0.0) - (self.prefill_end or 0.0))

    @property
    def decode_steps(self) -> int:
        """Forward passes after prefill (the first token comes from the prefill's logits)."""
        return max(self.generated_tokens - 1, 0)

    @property
    def queue_seconds(self) -> float:
        return (self.prefill_start or self.created) - self.created

    def as_dict(self) -> dict:
        """llama-server-style timings (milliseconds, per-second rates), with `cache_n` reused prompt tokens."""
        evaluated = self.prompt_tokens - self.cached_tokens
        p_ms, d_ms = self.prompt_seconds * 1e3, self.decode_seconds * 1e3
        return {"prompt_n": evaluated, "prompt_ms": p_ms, "cache_n": self.cached_tokens,
                "prompt_per_token_ms": p_ms / evaluated if evaluated else 0.0,
                "prompt_per_second": evaluated / p_ms * 1e3 if p_ms else 0.0,
                "predicted_n": self.generated_tokens, "predicted_ms": d_ms,
                "predicted_per_token_ms": d_ms / self.decode_steps if self.decode_steps else 0.0,
                "predicted_per_second": self.decode_steps / d_ms * 1e3 if d_ms else 0.0}


class Generation:
    """One sequence and its cache. The cache may already hold the first `cached_tokens` prompt tokens.

    graphs: decode steps replayed from a CUDA graph (`LogitsStepGraph`, captured at the first decode step; the
    prompt is prefilled eagerly). Needs a static cache (`engine.graphs.static_cache`) of at least the prompt's
    length + max_new_tokens, on a CUDA device; the host still samples each token from the step's logits.
    compile (with graphs): the model's own code through torch.compile (`engine.graphs.compiled_model`) in the
    captured step; the first decode step then also compiles (tens of seconds for an 8B model)."""

    def __init__(self, lm: Any, prompt_ids: list[int], sampling: SamplingConfig, cache: Any,
                 cached_tokens: int = 0, max_context: int | None = None, prefill_chunk: int = 512,
                 graphs: bool = False, compile: bool = False) -> None:
        if compile and not graphs:
            raise ValueError("compile=True compiles the captured decode step: it needs graphs=True")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if not 0 <= cached_tokens < len(prompt_ids):
            raise ValueError(f"cached_tokens must be in [0, {len(prompt_ids)}), got {cached_tokens}")
        room = (max_context or 1 << 62) - len(prompt_ids)
        if room <= 0:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context holds {max_context}")
        self.model, self.tokenizer = lm.model, lm.tokenizer
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.cache = cache
        self.max_new_tokens = min(sampling.max_new_tokens, room)
        self.prefill_chunk = prefill_chunk
        self.timings = Timings(prompt_tokens=len(prompt_ids), cached_tokens=cached_tokens)
        self.output_ids: list[int] = []
        self.finish_reason: str | None = None
        self.text = TextStream(self.tokenizer, sampling.stop)
        self._eos = eos_token_ids(self.model, self.tokenizer)
        self._fed = cached_tokens
        self._kw = cache_kwarg(self.model)
        self._device = next(self.model.parameters()).device
        self._rng = make_generator(sampling.seed, self._device)  # where the logits are (torch.multinomial's rule)
        self.graphs, self.compile = graphs, compile
        self._graph = None
        if graphs:
            from ..cache.static import StaticKVCache
            if not isinstance(cache, StaticKVCache):
                raise ValueError(f"graphs=True needs a static cache (compactkv.engine.graphs.static_cache), got "
                                 f"{type(cache).__name__}")
            if self._device.type != "cuda":
                raise ValueError(f"graphs=True needs the model on a CUDA device (CUDA graphs), not {self._device}")
            need = len(prompt_ids) + self.max_new_tokens  # (the capture checks for one slot beyond its step)
            if cache.max_cache_len < need:
                raise ValueError(f"the static cache holds {cache.max_cache_len} tokens; this prompt and "
                                 f"max_new_tokens need {need}")

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def prefilling(self) -> bool:
        return self._fed < len(self.prompt_ids)

    def cancel(self) -> None:
        """Stop now; the caller should then drop the cache."""
        if not self.done:
            self.finish_reason = "cancelled"

    def _forward(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=self._device)
        with torch.inference_mode():
            out = self.model(input_ids=x, use_cache=True, logits_to_keep=1, **{self._kw: self.cache})
        return out.logits[0, -1]

    def step(self) -> TokenEvent | None:
        """Run one prefill chunk or one decode step; the new token, or None while the prompt is still prefilling."""
        if self.done:
            return None
        if self.prefilling:
            if self.timings.prefill_start is None:
                self.timings.prefill_start = time.perf_counter()
            chunk = self.prompt_ids[self._fed:self._fed + self.prefill_chunk]
            logits = self._forward(chunk)
            self._fed += len(chunk)
            if self.prefilling:
                return None
            self.timings.prefill_end = time.perf_counter()
        elif self.graphs:
            logits = self._graph_step(self.output_ids[-1])
        else:
            logits = self._forward(self.output_ids[-1:])
        return self._accept(logits)

    def _graph_step(self, token: int) -> torch.Tensor:
        """One decode step from the captured graph (captured here the first time: its warm-up is this step)."""
        with torch.inference_mode():
            if self._graph is None:
                from .graphs import LogitsStepGraph
                self._graph = LogitsStepGraph(self.model, self.cache, torch.tensor([[token]], device=self._device),
                                              compile=self.compile)
                self._graph.capture(warmup=1)
            else:
                self._graph.feed(token)
                self._graph.step()
            return self._graph.logits[0]

    def _accept(self, logits: torch.Tensor) -> TokenEvent:
        token = sample_token(logits, self.sampling, self._rng)
        lp, top = (None, [])
        if self.sampling.logprobs is not None:
            lp, top = token_logprobs(logits, token, self.sampling.logprobs)
        self.output_ids.append(token)
        self.timings.generated_tokens += 1
        self.timings.last_token = time.perf_counter()
        if token in self._eos:
            self.finish_reason = "stop"
            return TokenEvent(token, self.text.flush(), lp, tuple(top))
        piece = self.text.push(token)
        if self.text.stopped:
            self.finish_reason = "stop"
        elif len(self.output_ids) >= self.max_new_tokens:
            self.finish_reason = "length"
            piece += self.text.flush()
        return TokenEvent(token, piece, lp, tuple(top))

    def cached_ids(self) -> list[int]:
        """The token ids whose keys and values the cache holds now (the last sampled token is never fed)."""
        return (self.prompt_ids + self.output_ids)[:self.cache.get_seq_length()]

    def memory(self) -> dict:
        """Bytes the cache holds and their fp16 equivalent."""
        return cache_memory(self.cache)


def stream_generate(gen: Generation) -> Iterator[TokenEvent]:
    """Drive one generation to the end, yielding each token as it comes."""
    while not gen.done:
        event = gen.step()
        if event is not None:
            yield event
