"""The engine as the routes see it: loading state, model names, prompts, sampling and async token streams.

The scheduler's worker thread hands events to the event loop with `call_soon_threadsafe`; a stream that is
abandoned (client gone, task cancelled) cancels its request, which drops its cache on the worker's next turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from jinja2.exceptions import TemplateError

from ..engine.loader import LoadedModel, ModelSpec, load_model
from ..engine.sampling import SamplingConfig
from ..engine.scheduler import Draining, EngineConfig, QueueFull, Scheduler
from ..engine.text import chat_prompt_ids, text_prompt_ids
from .config import ServerConfig
from .errors import ApiError
from .metrics import Metrics

log = logging.getLogger("compactkv.server")
JSON_HINT = "Respond only with a valid JSON object."


@dataclass
class Outcome:
    """What a finished generation produced, for final chunks and non-streamed bodies."""

    text: str = ""
    tokens: list = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_ids: list = field(default_factory=list)
    timings: Any = None
    ttft: float | None = None
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.output_ids) or len(self.tokens)


class TokenStream:
    """One submitted request: iterate `events()` for ('token', TokenEvent) then ('done', Outcome)."""

    def __init__(self, service: "Service", prompt_ids: list[int], sampling: SamplingConfig,
                 cache_prompt: bool = True) -> None:
        self.service = service
        self.outcome = Outcome(prompt_tokens=len(prompt_ids))
        self._queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        emit: Callable[[str, Any], None] = lambda kind, payload: loop.call_soon_threadsafe(
            self._queue.put_nowait, (kind, payload))
        try:
            self._req = service.scheduler.submit(prompt_ids, sampling, emit, cache_prompt)
        except QueueFull as e:
            raise ApiError(503, f"server busy: {e}", code="queue_full") from None
        except Draining as e:
            raise ApiError(503, str(e), code="shutting_down") from None
        except ValueError as e:
            raise ApiError(400, str(e), "messages", "context_length_exceeded") from None
        self._finished = False

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        out = self.outcome
        try:
            while True:
                kind, payload = await self._queue.get()
                if kind == "token":
                    if out.ttft is None:
                        out.ttft = time.perf_counter() - out.started
                    out.tokens.append(payload)
                    out.text += payload.text
                    yield kind, payload
                elif kind == "done":
                    self._finished = True
                    self._close(payload)
                    yield kind, out
                    return
                else:
                    self._finished = True
                    raise RuntimeError(payload)
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Abandon the request unless it has finished (the client is gone); idempotent."""
        if not self._finished:
            self._finished = True
            self.service.scheduler.cancel(self._req)
            self.service.metrics.cancelled.inc()

    def _close(self, summary: dict) -> None:
        out = self.outcome
        out.finish_reason = summary["finish_reason"]
        out.timings = summary["timings"]
        out.output_ids = list(summary.get("output_ids") or [])
        out.ended = time.perf_counter()
        t = out.timings
        if t is not None:
            out.cached_tokens = t.cached_tokens
        rate = t.decode_steps / t.decode_seconds if t is not None and t.decode_seconds > 0 else None
        self.service.metrics.observe_generation(out.prompt_tokens, out.cached_tokens, out.completion_tokens,
                                                out.ttft, rate)


class Service:
    """Holds the config, the loaded model and the scheduler; `state` is 'loading', 'ready' or 'failed'."""

    def __init__(self, config: ServerConfig, loader: Callable[[ModelSpec], LoadedModel] = load_model) -> None:
        self.config = config
        self.loader = loader
        self.metrics = Metrics()
        self.state = "loading"
        self.error: str | None = None
        self.lm: LoadedModel | None = None
        self.scheduler: Scheduler | None = None
        self.started_at = time.time()
        self.loaded_at: float | None = None

    def load(self) -> None:
        """Load the model and start the engine (blocking; run it in a thread)."""
        c = self.config
        if c.threads:
            import torch

            torch.set_num_threads(c.threads)
        try:
            lm = self.loader(ModelSpec(c.model, c.gguf_file, c.device, c.dtype))
            engine = EngineConfig(k=c.k, v=c.v, policy=c.policy, max_context=c.context_length,
                                  max_active=c.parallel, max_queue=c.max_queue, prefill_chunk=c.prefill_chunk,
                                  prefix_cache_bytes=c.prefix_cache_mb << 20, graphs=c.graphs,
                                  compile=c.compile)
            self.scheduler = Scheduler(lm, engine)
            if c.warmup:  # compiles and first allocations now, not in the first client's request
                warm = self.scheduler.warm_up()
                self.metrics.warmup_seconds.set(warm)
                log.info("warm-up sequence in %.1f s", warm)
        except Exception as e:  # reported by /health, the server stays up to say so
            log.exception("model load failed")
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            return
        self.lm = lm
        self.metrics.bind(self.scheduler.stats)
        self.metrics.load_seconds.set(lm.load_seconds)
        self.loaded_at = time.time()
        self.state = "ready"
        log.info("model %s ready in %.1f s (attention %s)", self.model_name, lm.load_seconds, lm.attn_implementation)

    @property
    def model_name(self) -> str:
        return self.config.alias or (self.lm.name if self.lm else "loading")

    @property
    def context_length(self) -> int:
        return self.scheduler.max_context if self.scheduler else self.config.context_length

    def require_ready(self) -> None:
        if self.state == "loading":
            raise ApiError(503, "the model is still loading", code="model_loading")
        if self.state != "ready":
            raise ApiError(503, f"the model failed to load: {self.error}", code="model_failed")

    def check_model(self, name: str) -> None:
        """404 unless `name` is the served model (Ollama's ':latest' tag accepted)."""
        self.require_ready()
        if name not in (self.model_name, f"{self.model_name}:latest"):
            raise ApiError(404, f"model {name!r} not found; this server serves {self.model_name!r}", "model",
                           "model_not_found")

    def chat_ids(self, messages: list[dict], json_mode: bool = False) -> list[int]:
        if json_mode:
            messages = [{"role": "system", "content": JSON_HINT}] + list(messages)
        try:
            return chat_prompt_ids(self.lm.tokenizer, messages)
        except ValueError as e:
            raise ApiError(400, str(e), "messages") from None
        except (TemplateError, TypeError) as e:  # a template that rejects this conversation (roles out of order)
            raise ApiError(400, f"the chat template rejected these messages: {e}", "messages") from None

    def text_ids(self, text: str) -> list[int]:
        return text_prompt_ids(self.lm.tokenizer, text)

    def sampling(self, prompt_len: int, max_tokens: int | None, temperature: float | None, top_p: float | None,
                 top_k: int | None, seed: int | None, stop: Any, logprobs: int | None = None,
                 num_ctx: int | None = None) -> SamplingConfig:
        """SamplingConfig from request values (None = server default); 400 for values we cannot honour."""
        d = self.config.defaults
        ctx = self.context_length
        if num_ctx is not None:
            if num_ctx <= 0 or num_ctx > ctx:
                raise ApiError(400, f"num_ctx must be in [1, {ctx}] (the server's context length), got {num_ctx}",
                               "options.num_ctx")
            ctx = num_ctx
        if prompt_len >= ctx:
            raise ApiError(400, f"the prompt has {prompt_len} tokens but the context holds {ctx}", "messages",
                           "context_length_exceeded")
        if max_tokens is not None and max_tokens <= 0:
            raise ApiError(400, f"max_tokens must be a positive integer, got {max_tokens}", "max_tokens")
        room = ctx - prompt_len
        wanted = max_tokens if max_tokens is not None else (d.max_tokens or room)
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        try:
            return SamplingConfig(max_new_tokens=min(wanted, room),
                                  temperature=d.temperature if temperature is None else temperature,
                                  top_p=d.top_p if top_p is None else top_p,
                                  top_k=d.top_k if top_k is None else top_k,
                                  seed=d.seed if seed is None else seed, stop=stops, logprobs=logprobs)
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    def submit(self, prompt_ids: list[int], sampling: SamplingConfig, cache_prompt: bool = True) -> TokenStream:
        self.require_ready()
        vocab = self.lm.model.config.vocab_size
        if any(not 0 <= i < vocab for i in prompt_ids):
            raise ApiError(400, f"token ids must be in [0, {vocab})", "prompt", "invalid_value")
        return TokenStream(self, prompt_ids, sampling, cache_prompt)

    async def run_to_end(self, stream: TokenStream, is_disconnected: Callable) -> Outcome | None:
        """Consume a whole stream for a non-streamed response; None (and the request cancelled) if the client left."""
        async def consume():
            async for kind, payload in stream.events():
                if kind == "done":
                    return payload
        task = asyncio.ensure_future(consume())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    return task.result()
                if await is_disconnected():
                    task.cancel()
                    stream.cancel()
                    return None
        finally:
            if not task.done():
                task.cancel()
                stream.cancel()

    def token_text(self, token_id: int) -> str:
        return self.lm.tokenizer.decode([token_id], skip_special_tokens=False)
