"""Concurrency: one worker thread serves many sequences in fair round-robin, each with its own cache.

Every turn the worker admits waiting requests (up to `max_active`), then gives each active sequence one unit of work
(a prefill chunk or one decode step), so all of them make progress and a long prompt cannot stall the others for
more than one chunk. Results go out through each request's `emit(kind, payload)` callback, from the worker thread.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.kinds import check_graph_kinds
from .caches import make_cache
from .generate import Generation
from .prefix import PrefixStore
from .sampling import SamplingConfig


class QueueFull(RuntimeError):
    """Too many requests are waiting; try again later."""


class Draining(RuntimeError):
    """The engine is shutting down and takes no new requests."""


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs: KV kinds or policy, context length (capped by the model's), concurrency, prefill chunk,
    prefix-cache budget in bytes. graphs: every sequence decodes from a CUDA graph over a static cache that holds
    the whole context (allocated when the sequence starts; CUDA only, K/V kinds of `core.kinds.GRAPH_KINDS`);
    compile: those steps run the model's own code through torch.compile (one compiled model for every sequence;
    the warm-up sequence pays the compile)."""

    k: str = "turbo4"
    v: str = "turbo4"
    policy: Any = None
    max_context: int = 8192
    max_active: int = 8
    max_queue: int = 64
    prefill_chunk: int = 256
    prefix_cache_bytes: int = 256 << 20
    graphs: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.graphs:
            check_graph_kinds(self.k, self.v, self.policy)
        if self.compile and not self.graphs:
            raise ValueError("compile compiles the graphed decode step: it needs graphs=True")
        for name in ("max_context", "max_active", "prefill_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")


@dataclass(eq=False)
class Request:
    """A submitted sequence; `emit(kind, payload)` receives ('token', TokenEvent), ('done', dict), ('error', str)."""

    id: int
    prompt_ids: list[int]
    sampling: SamplingConfig
    emit: Callable[[str, Any], None]
    cache_prompt: bool = True
    cancelled: bool = False
    gen: Generation | None = None
    kv: dict = field(default_factory=lambda: {"kv_bytes": 0, "fp16_bytes": 0, "tokens": 0})


class Scheduler:
    """Owns the model and every cache; the only thread that runs the model."""

    def __init__(self, lm: Any, cfg: EngineConfig) -> None:
        self.lm, self.cfg = lm, cfg
        model_ctx = getattr(lm.model.config, "max_position_embeddings", None) or cfg.max_context
        self.max_context = min(cfg.max_context, model_ctx)
        self._new_cache()  # bad kinds, policy or (graphs) device fail here, before any request
        self.prefix = PrefixStore(cfg.prefix_cache_bytes)
        self._pending: deque[Request] = deque()
        self._active: list[Request] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._draining = False
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="compactkv-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], sampling: SamplingConfig, emit: Callable[[str, Any], None],
               cache_prompt: bool = True) -> Request:
        """Queue a sequence. `cache_prompt=False` neither reuses nor stores a prefix. ValueError if the prompt does
        not fit; QueueFull / Draining when refused."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= self.max_context:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens but the context holds {self.max_context}")
        with self._cond:
            if self._draining:
                raise Draining("the server is shutting down")
            if len(self._pending) >= self.cfg.max_queue + max(0, self.cfg.max_active - len(self._active)):
                raise QueueFull(f"{len(self._pending)} requests are already waiting")
            req = Request(next(self._ids), list(prompt_ids), sampling, emit, cache_prompt)
            self._pending.append(req)
            self._cond.notify()
        return req

    def warm_up(self, prompt_tokens: int = 200, new_tokens: int = 4, timeout: float = 600.0) -> float:
        """Run one short greedy sequence through the worker (prefill, decode steps and, with graphs, a capture),
        so that kernel compiles and first-use allocations happen before the first real request; its cache is
        neither reused nor kept. 200 prompt tokens: more than the default cache's fp16 sinks and recent window
        (4 + 128), so rows are compressed and decode steps read them. Returns the seconds it took; RuntimeError
        if it fails or takes over `timeout`."""
        vocab = getattr(self.lm.model.config, "vocab_size", None) or 2
        n = max(1, min(prompt_tokens, self.max_context - new_tokens - 1))
        ids = [1 + i % (vocab - 1) for i in range(n)]
        done, out = threading.Event(), {}

        def emit(kind: str, payload: Any) -> None:
            if kind in ("done", "error"):
                out[kind] = payload
                done.set()
        start = time.perf_counter()
        self.submit(ids, SamplingConfig(max_new_tokens=new_tokens), emit, cache_prompt=False)
        if not done.wait(timeout):
            raise RuntimeError(f"the warm-up sequence did not finish in {timeout:.0f} s")
        if "error" in out:
            raise RuntimeError(f"the warm-up sequence failed: {out['error']}")
        return time.perf_counter() - start

    def cancel(self, req: Request) -> None:
        """Stop a request (client gone); its cache is dropped on the worker's next turn."""
        req.cancelled = True
        with self._cond:
            self._cond.notify()

    def stats(self) -> dict:
        """Queue depth, active sequences, and KV bytes held by active sequences and by the prefix store."""
        with self._cond:
            active = list(self._active)
            pending = len(self._pending)
        prefix = self.prefix.stats()
        return {"queued": pending, "active": len(active),
                "kv_bytes": sum(r.kv["kv_bytes"] for r in active),
                "kv_fp16_bytes": sum(r.kv["fp16_bytes"] for r in active),
                "prefix_entries": prefix.entries, "prefix_kv_bytes": prefix.kv_bytes,
                "prefix_fp16_bytes": prefix.fp16_bytes, "prefix_hits": prefix.hits,
                "prefix_reused_tokens": prefix.reused_tokens, "draining": self._draining}

    def drain(self, timeout: float) -> None:
        """Refuse new requests; let active and queued ones finish, cutting them ('length') after `timeout` s."""
        with self._cond:
            self._draining = True
            deadline = time.monotonic() + timeout
            self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
            self._cond.notify()

    def idle(self) -> bool:
        with self._cond:
            return not self._pending and not self._active

    def close(self, timeout: float = 5.0) -> None:
        """Drain with `timeout` and wait for the worker to exit."""
        self.drain(timeout)
        self._thread.join(timeout + 5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._active and not self._draining:
                    self._cond.wait()
                if self._draining and not self._pending and not self._active:
                    return
                while self._pending and len(self._active) < self.cfg.max_active:
                    self._active.append(self._pending.popleft())
                turn = list(self._active)
            cut = self._deadline is not None and time.monotonic() > self._deadline
            for req in turn:
                self._work(req, cut)

    def _work(self, req: Request, cut: bool) -> None:
        """One unit of work for `req`; a finished request leaves the active list before it is told so."""
        try:
            if req.cancelled or cut:
                self._finish(req, "cancelled" if req.cancelled else "length")
                return
            if req.gen is None:
                req.gen = self._start(req)
            event = req.gen.step()
            req.kv = req.gen.memory()
            if event is not None:
                req.emit("token", event)
            if req.gen.done:
                self._finish(req, req.gen.finish_reason)
        except Exception as e:  # a failing request must not take the worker down with it
            self._retire(req)
            _safe_emit(req, "error", f"{type(e).__name__}: {e}")

    def _retire(self, req: Request) -> None:
        """Drop `req` and its cache from the active set."""
        req.gen = None
        req.kv = {"kv_bytes": 0, "fp16_bytes": 0, "tokens": 0}
        with self._cond:
            if req in self._active:
                self._active.remove(req)

    def _new_cache(self):
        """An empty cache for one sequence: dynamic, or (graphs) static with room for the whole context (a prefix
        is stored at its own length and given that room again when it is reused)."""
        cfg = self.cfg
        if cfg.graphs:
            from .graphs import engine_static_cache
            return engine_static_cache(self.lm.model, cfg.k, cfg.v, self.max_context)
        return make_cache(self.lm.model, cfg.k, cfg.v, cfg.policy)

    def _start(self, req: Request) -> Generation:
        cfg = self.cfg
        cache, reused = self.prefix.lookup(req.prompt_ids) if req.cache_prompt else (None, 0)
        if cache is None:
            cache = self._new_cache()
        elif cfg.graphs:  # a stored prefix is kept at its own length (_finish): room for the whole context again
            cache = cache.resized(self.max_context)
        return Generation(self.lm, req.prompt_ids, req.sampling, cache, cached_tokens=reused,
                          max_context=self.max_context, prefill_chunk=cfg.prefill_chunk, graphs=cfg.graphs,
                          compile=cfg.compile)

    def _finish(self, req: Request, reason: str) -> None:
        gen = req.gen
        summary = {"finish_reason": reason, "timings": None, "memory": dict(req.kv)}
        self._retire(req)
        if gen is not None:
            summary["timings"] = gen.timings
            summary["output_ids"] = gen.output_ids
            if reason != "cancelled" and req.cache_prompt:
                cache, ids = gen.cache, gen.cached_ids()
                if self.cfg.graphs and self.prefix.budget and len(ids) >= self.prefix.min_tokens:
                    # a static cache holds the whole context: the store keeps only what it holds
                    cache = cache.resized(len(ids))
                self.prefix.insert(ids, cache)
        _safe_emit(req, "done", summary)


def _safe_emit(req: Request, kind: str, payload: Any) -> None:
    try:
        req.emit(kind, payload)
    except Exception:  # the receiver is gone (event loop closed); nothing left to tell
        req.cancelled = True
