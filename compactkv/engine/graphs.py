"""Decode steps of a whole model captured in one CUDA graph, over a static cache.

A decode step of an 8B model is ~1,600 kernel launches (profiled, Llama-3.1-8B shapes); eager, the host issues them
more slowly than the GPU runs them (docs/performance.md). `GreedyStepGraph` captures one step, "embed the last
token, run every layer (write the token's K/V at each row's device-side length, attend), pick the argmax", and
replays it: the token ids and positions never leave the device, and the host only counts tokens.
`LogitsStepGraph` captures the same step but leaves the next-token logits in a buffer, so an engine samples on the
host (temperature, top-p, logprobs) and feeds the token back (engine/generate.py, `compactkv run --graphs`).

The cache must be a `compactkv.cache.static.StaticKVCache` (fixed addresses, device lengths) and the model must run
compactkv's attention (`compactkv.attach`). `static_cache` builds one: compressed rows written by the in-place Triton
encoder on CUDA (capturable), or uncompressed buffers ("f16") for the comparison.
"""

from __future__ import annotations

from typing import Any

import torch

from ..cache.config import CacheConfig
from ..cache.static import StaticDenseCache, StaticKVCache, StaticTurboQuantCache
from .caches import cache_kwarg

# The static cache's query-aware key scaling (session 16), on by default since its CUDA tests passed on an H200
# (session 17: tests/test_engine_graphs.py scale_keys cases, graph replay = eager, kernel rows = Codec.encode's):
# turbo4 +2.05% perplexity from f16 on the default model instead of +2.89%, ~1.5% more per graphed step.
STATIC_SCALE_KEYS = True
DENSE = ("f16", "f16-nomask")  # uncompressed static caches: exact mask / mask dropped for 1-token steps (timing)
COMPILED_ATTR = "_compactkv_compiled"  # where compiled_model keeps a model's torch.compile wrapper
RECOMPILE_LIMIT = 64


def compiled_model(model: Any) -> Any:
    """`model` wrapped by torch.compile (inductor, default mode: no CUDA graphs of its own, the step graphs below
    capture its kernels), made once per model and kept on it.

    What gets compiled is the model's own code (embedding, norms, rotary, projections, MLP, logits): inductor fuses
    its elementwise kernels, which at batch 8 are ~40 launches per layer of a graphed step. compactkv's attention
    function and a static cache's update are `torch.compiler.disable`d (interface.py, cache/static.py), so they run
    as they do uncompiled, on both sides of a comparison. Layer indices are left unspecialized so the 32 layers share
    one compiled attention block (torch._dynamo.config.allow_unspec_int_on_nn_module, process-wide), and the
    recompile limit is raised to RECOMPILE_LIMIT: transformers' decorators share one code object among the forwards
    they wrap, which holds one compiled entry per wrapped function and cache type."""
    wrapped = getattr(model, COMPILED_ATTR, None)
    if wrapped is None:
        torch._dynamo.config.allow_unspec_int_on_nn_module = True
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        wrapped = torch.compile(model)
        object.__setattr__(model, COMPILED_ATTR, wrapped)  # not a submodule: state_dict and .to() ignore it
    return wrapped


def engine_static_cache(model: Any, k: str, v: str, capacity: int) -> StaticKVCache:
    """An engine's static cache for one sequence of up to `capacity` tokens on the model's device; ValueError off
    CUDA (the graphs it is for need CUDA)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ValueError(f"graphed decoding needs a CUDA device (CUDA graphs); the model is on {device}")
    return static_cache(model, k if k == v else (k, v), 1, capacity, device)


def static_cache(model: Any, kind: str | tuple[str, str], batch_size: int, max_cache_len: int,
                 device: str | torch.device | None = None, sink_tokens: int | None = None,
                 center_keys: bool = True, scale_keys: bool | None = None) -> StaticKVCache:
    """A static cache for `model`: kind "f16" / "f16-nomask" (uncompressed, the model's dtype) or a (k, v) pair of
    codec kinds (a single kind means k = v). On CUDA with Triton, compressed layers encode with the in-place kernel,
    so a decode step over them can be captured, and turbo2/turbo4 (turbo3 at head_dim 128) are stored as planes for
    the Gluon/table decode kernels where Gluon is usable; elsewhere with Codec.encode (eager only). Compressed
    caches keep the default cache's fp16 attention sinks (sink_tokens=None; a count overrides it) and unbiased
    keys (CacheConfig) and center keys (StaticTurboQuantLayer; center_keys=False: plain rows, for comparisons).
    scale_keys: query-aware key scaling as the default cache's (None: STATIC_SCALE_KEYS)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(kind, str) and kind in DENSE:
        dtype = next(model.parameters()).dtype
        return StaticDenseCache(model.config, batch_size=batch_size, max_cache_len=max_cache_len, device=device,
                                dtype=dtype, exact_mask=kind == "f16")
    k, v = (kind, kind) if isinstance(kind, str) else kind
    encode, planar = None, False
    if device.type == "cuda":
        try:
            from ..attention.triton.encode import encode_into
            from ..attention.triton.gluon import gluon_usable
        except ImportError:  # no triton: Codec.encode (eager only), rows
            encode_into, gluon_usable = None, lambda device=None: False
        encode = encode_into
        planar = None if gluon_usable(device) else False  # planes only where the Gluon kernel can read them
    defaults = CacheConfig()  # what the default cache does where a static one can: fp16 sinks, unbiased keys
    return StaticTurboQuantCache(model.config, k, v, batch_size=batch_size, max_cache_len=max_cache_len,
                                 device=device, encode=encode, planar=planar,
                                 sink_tokens=defaults.sink_tokens if sink_tokens is None else sink_tokens,
                                 unbiased_keys=defaults.unbiased_keys, center_keys=center_keys,
                                 scale_keys=STATIC_SCALE_KEYS if scale_keys is None else scale_keys)


class GreedyStepGraph:
    """One greedy decode step of `model` over `cache`, eager or replayed from a CUDA graph.

    tokens: int64 [B, 1], each row's last token (not yet in the cache). Every `step()` feeds `self.tokens`, writes
    their K/V, and overwrites `self.tokens` with the argmax of the next-token logits (the same tensor every time).
    `capture()` records the step after `warmup` eager steps on a side stream (those steps are real decode steps:
    their tokens are returned). Positions are each row's stored length, read on the device (a padded batch's prompt
    is then prefilled at the slots' own positions, transformers' default without position_ids; its padding, which
    the cache records from the prompt's mask, stays hidden).
    compile=True runs the model through `compiled_model` (torch.compile). Its first two steps compile (the second
    because the cache's token count becomes a dynamic size), and a compile must not happen inside a capture
    (inductor benchmarks kernels when it first runs them), so `capture` then runs one more eager step just before
    capturing, at the same counts the capture sees, and undoes it (`rewound_step`): the sequence is not changed.
    """

    def __init__(self, model: Any, cache: StaticKVCache, tokens: torch.Tensor, compile: bool = False):
        if not isinstance(cache, StaticKVCache):
            raise ValueError(f"GreedyStepGraph needs a static cache (compactkv.cache.static), got "
                             f"{type(cache).__name__}")
        if tokens.dim() != 2 or tokens.shape[1] != 1 or tokens.shape[0] != cache.lengths.shape[0]:
            raise ValueError(f"tokens must be [batch={cache.lengths.shape[0]}, 1], got {list(tokens.shape)}")
        self.model, self.cache = model, cache
        self.compiled = bool(compile)
        self.forward_model = compiled_model(model) if compile else model
        self.kwarg = cache_kwarg(model)
        self.tokens = tokens.to(device=cache.lengths.device, dtype=torch.long).clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        self._captured_padding: tuple[bool, ...] | None = None

    def _padding(self) -> tuple[bool, ...]:
        """Which layers hold a padded batch's padding (`pad_bias`): a captured step reads the buffers it found, and
        the attention it recorded is the one for that state (the unpadded one takes no padding buffer at all)."""
        return tuple(getattr(layer, "pad_bias", None) is not None for layer in self.cache.layers)

    def _logits(self) -> torch.Tensor:
        """The model on `self.tokens` at each row's stored length: next-token logits [B, vocab]."""
        positions = self.cache.lengths.long()[:, None]
        out = self.forward_model(input_ids=self.tokens, position_ids=positions, use_cache=True, logits_to_keep=1,
                         **{self.kwarg: self.cache})
        return out.logits[:, -1]

    def _forward(self) -> torch.Tensor:
        self.tokens.copy_(self._logits().argmax(-1, keepdim=True))
        return self.tokens

    def _outputs(self) -> list[torch.Tensor]:
        """The buffers a step overwrites (the next tokens)."""
        return [self.tokens]

    @torch.no_grad()
    def rewound_step(self) -> None:
        """Run one step eagerly and undo it: the cache's token counts and the output buffers are restored (the
        K/V it wrote sit after the stored tokens, where the next step writes). Needs a non-empty cache."""
        if min(self.cache.host_lengths()) == 0:
            raise ValueError("rewound_step needs tokens in the cache (the first update sets sinks and key center)")
        self._check_room()
        counts = self.cache.counts_snapshot()
        kept = [t.clone() for t in self._outputs()]
        self._forward()
        self.cache.restore_counts(counts)
        for t, old in zip(self._outputs(), kept):
            t.copy_(old)

    def _check_room(self) -> None:
        if self.cache.room() < 1:
            raise ValueError(f"the static cache is full ({self.cache.max_cache_len} tokens); build it with a larger "
                             f"max_cache_len")

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Advance one token; returns `self.tokens` (the new tokens, on the device)."""
        self._check_room()
        if self.graph is None:
            return self._forward()
        if self._padding() != self._captured_padding:
            raise ValueError("the cache took a padded batch's prompt after this step was captured, and the captured "
                             "step does not read its padding: capture the step again (a new GreedyStepGraph) after "
                             "the prompt")
        self.graph.replay()
        self.cache.set_host_lengths([n + 1 for n in self.cache.host_lengths()])
        return self.tokens

    @torch.no_grad()
    def capture(self, warmup: int = 2) -> list[torch.Tensor]:
        """Run `warmup` (>= 1) eager steps on a side stream (compiles kernels, builds per-layer tables), then capture
        the step. Returns the warm-up steps' tokens (copies)."""
        if not self.tokens.is_cuda:
            raise ValueError("CUDA graphs need the model and cache on a CUDA device")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the first step compiles and allocates), got {warmup}")
        if self.cache.room() < warmup + 1:  # (a compiled model's rewound step writes the slot the capture writes)
            raise ValueError(f"the static cache has room for {self.cache.room()} tokens; warm-up and capture need "
                             f"{warmup + 1}")
        produced = []
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                produced.append(self._forward().clone())
            if self.compiled:  # any (re)compile now, eagerly, at the counts the capture will see
                self.rewound_step()
        torch.cuda.current_stream().wait_stream(side)
        counts = self.cache.host_lengths()  # capture runs the host code once but moves no device state
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._forward()
        self.cache.set_host_lengths(counts)
        self.graph, self._captured_padding = graph, self._padding()
        return produced


class LogitsStepGraph(GreedyStepGraph):
    """One decode step of `model` over `cache` that leaves the next-token logits, float32 [B, vocab], in
    `self.logits` (the same tensor every step) instead of picking the token: `feed(token)` sets the input (a fill
    on the device, outside the graph), `step()` runs or replays the step. The first eager step (capture's
    warm-up) allocates the buffer."""

    logits: torch.Tensor | None = None

    def _outputs(self) -> list[torch.Tensor]:
        return [self.logits] if self.logits is not None else []

    def feed(self, token: int) -> None:
        """Every batch row's next input token (one id: the engine decodes one sequence per cache)."""
        self.tokens.fill_(int(token))

    def _forward(self) -> torch.Tensor:
        last = self._logits().float()
        if self.logits is None:
            self.logits = torch.empty_like(last)
        self.logits.copy_(last)
        return self.logits
