"""Prometheus metrics on a private registry (one per app, so tests can run several servers in one process)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_RATE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Metrics:
    """The counters, histograms and gauges of one server."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("compactkv_requests", "HTTP requests served", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("compactkv_prompt_tokens", "prompt tokens received", registry=r)
        self.cached_tokens = Counter("compactkv_prompt_cached_tokens", "prompt tokens reused from the prefix cache",
                                     registry=r)
        self.completion_tokens = Counter("compactkv_completion_tokens", "tokens generated", registry=r)
        self.cancelled = Counter("compactkv_cancelled", "generations stopped because the client went away",
                                 registry=r)
        self.ttft = Histogram("compactkv_time_to_first_token_seconds", "request arrival to first token",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.decode_rate = Histogram("compactkv_decode_tokens_per_second", "decode speed of each finished request",
                                     buckets=_RATE_BUCKETS, registry=r)
        self.kv_bytes = Gauge("compactkv_kv_bytes", "KV cache bytes really held", ["pool"], registry=r)
        self.kv_fp16_bytes = Gauge("compactkv_kv_fp16_equivalent_bytes", "fp16 bytes of the same cached tokens",
                                   ["pool"], registry=r)
        self.queue_depth = Gauge("compactkv_queue_depth", "requests waiting for a decode slot", registry=r)
        self.active = Gauge("compactkv_active_requests", "requests being prefilled or decoded", registry=r)
        self.load_seconds = Gauge("compactkv_model_load_seconds", "model load time (cold start)", registry=r)
        self.warmup_seconds = Gauge("compactkv_warmup_seconds", "the warm-up sequence run after loading (kernel "
                                    "compiles, first allocations; 0 when turned off)", registry=r)

    def bind(self, stats: Callable[[], dict]) -> None:
        """Read the live gauges from `stats()` (the engine's) at scrape time."""
        for pool, held, fp16 in (("active", "kv_bytes", "kv_fp16_bytes"),
                                 ("prefix", "prefix_kv_bytes", "prefix_fp16_bytes")):
            self.kv_bytes.labels(pool=pool).set_function(lambda key=held: stats()[key])
            self.kv_fp16_bytes.labels(pool=pool).set_function(lambda key=fp16: stats()[key])
        self.queue_depth.set_function(lambda: stats()["queued"])
        self.active.set_function(lambda: stats()["active"])

    def observe_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def observe_generation(self, prompt_tokens: int, cached: int, completion: int, ttft: float | None,
                           decode_rate: float | None) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.cached_tokens.inc(cached)
        self.completion_tokens.inc(completion)
        if ttft is not None:
            self.ttft.observe(ttft)
        if decode_rate:
            self.decode_rate.observe(decode_rate)

    def render(self) -> bytes:
        return generate_latest(self.registry)
