"""`compactkv bench e2e`: whole-model greedy decode, fp16 DynamicCache + SDPA vs TurboQuantCache, on one GPU.

The model is a random-weight Llama-3.1-8B-shaped LlamaForCausalLM in bf16 (32 layers, hidden 4096, 32 query heads,
8 KV heads, head_dim 128, intermediate 14336, vocab 128256; default RoPE, no rope scaling), built from a LlamaConfig
straight on the device: no download, nothing loaded. `--tiny` builds a 2-layer model with small dims instead (CPU
check of the whole path).

Each cell (batch B, context T, cache): fill the cache to T tokens, then time greedy decode steps one at a time
(device synchronized before and after each step; median -> tokens/s = B / median step). Fill is either
  prefill:   random token ids prefilled in chunks of --chunk-tokens / B tokens (logits of the last token only),
             timed after an untimed 512-token prefill into a scratch cache of the same kind (kernels compiled;
             --no-prefill-warmup times it cold), or
  synthetic: the cache built directly at T tokens (random bf16 K/V for DynamicCache; valid random packed rows plus
             a full fp16 recent window for TurboQuantCache), with no model forward: for contexts whose prefill the
             time budget cannot pay. Decode cost does not depend on the values.
Peak memory is torch.cuda.max_memory_allocated over the cell (reset per cell, weights included). KV bytes are
what the cache holds (`engine.caches.cache_memory`). An OutOfMemoryError is a result: recorded, memory freed, next
cell. No CUDA graphs and no torch.compile on either side. Two fp16 baselines: "f16" (SDPA picks its backend: cuDNN
attention on recent GPUs) and "f16-flash" (cuDNN off); "x f16" divides by the faster of those run in the same cell.

`--graphs`: both sides in CUDA graphs. Each cache is preallocated (compactkv.cache.static): fp16 "f16" =
StaticDenseCache + SDPA under an exact per-row mask, "f16-nomask" = the same buffers with no mask on 1-token steps
(SDPA attends every preallocated slot, unwritten ones too: the cost of an exact attention over that length with
flash kernels, wrong values for the empty slots; a timing baseline only), turbo* = StaticTurboQuantCache (every token
compressed, no fp16 window). One greedy step of the whole model (embedding, 32 layers, argmax) is captured
(engine/graphs.GreedyStepGraph) and replayed; the cell also times the same step eager. Fill as without --graphs
(--contexts: chunked prefill through the model into the static cache; --synthetic-contexts: random buffers).
max_cache_len = context + the steps run.

`--graphs --compile`: the same, with the model's own code compiled by torch.compile on both sides
(engine/graphs.compiled_model: norms, rotary, projections, MLP and logits through inductor; compactkv's attention
function and the static caches' updates stay uncompiled on both sides), then captured. Prefill is not compiled.

`--pad N`: a left-padded batch. Batch row i of B is padded by N * i // (B - 1) tokens. Eager: the decode steps
pass an attention mask that masks those first positions off (transformers turns it into a 4D mask; fp16 SDPA
takes it as attn_mask, compactkv as an additive bias over its compressed rows). With --graphs: each static layer
records that padding after the fill, as it would from a padded prompt's mask (`record_padding`), and every step
(captured too) hides it (f16: SDPA under the layer's mask; compressed: the padding as the kernels' bias;
f16-nomask, a timing baseline without masks, cannot). The fill is the same.

`--capacity` searches the largest batch that fits at each given context (synthetic fill + one decode step; prefill
transients not included) for fp16 and turbo4.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import time

import torch

from .kernels import commit, left_pad_keep, random_rows

CONFIGS = {"f16": None, "f16-flash": None, "turbo4": ("turbo4", "turbo4"), "turbo3": ("turbo3", "turbo3"),
           "q8_0/turbo4": ("q8_0", "turbo4"), "turbo2": ("turbo2", "turbo2"), "q8_0": ("q8_0", "q8_0")}
GRAPH_KINDS = ("f16", "f16-nomask", "turbo4", "turbo3", "turbo2")  # --graphs: static caches that capture
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
                tie_word_embeddings=False)
TINY = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False)
GIB = 1 << 30


def register(subparsers) -> None:
    p = subparsers.add_parser("e2e", help="whole-model decode tokens/s and memory: fp16 DynamicCache vs "
                                          "TurboQuantCache (random Llama-3.1-8B-shaped model, GPU)")
    p.add_argument("--json", metavar="PATH", default=os.environ.get("COMPACTKV_BENCH_JSON"),
                   help="write all figures here (rewritten after every cell)")
    p.add_argument("--batches", default="1,8", help="batch sizes, run in this order (default 1,8)")
    p.add_argument("--contexts", default="32768", help="contexts filled by a real chunked prefill (default 32768)")
    p.add_argument("--synthetic-contexts", default="",
                   help="contexts filled synthetically (no forward), e.g. 131072 ('' = none)")
    p.add_argument("--kinds", default="f16,turbo4,turbo3,q8_0/turbo4",
                   help=f"caches to compare, in order; f16 = DynamicCache + SDPA ({', '.join(CONFIGS)})")
    p.add_argument("--steps", type=_at_least(1), default=32, help="timed decode steps per cell (default 32)")
    p.add_argument("--warmup", type=_at_least(0), default=3, help="untimed decode steps first (default 3)")
    p.add_argument("--chunk-tokens", type=int, default=16384,
                   help="prefill chunk size in tokens over the whole batch (chunk length = this / B, >= 256)")
    p.add_argument("--capacity", default="", help="contexts for the largest-batch search ('' = skip)")
    p.add_argument("--capacity-kinds", default="f16,turbo4")
    p.add_argument("--max-batch", type=int, default=512, help="upper bound of the capacity search")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no new cell or probe after this many seconds (they are reported as skipped)")
    p.add_argument("--no-prefill-warmup", dest="prefill_warmup", action="store_false",
                   help="time each prefill cold (by default an untimed 512-token prefill of the same cache kind runs "
                        "first, so no cell's prefill includes kernel compilation)")
    p.add_argument("--prefill-warmup-full", action="store_true",
                   help="warm up with the whole prompt in the same chunks instead (TTFT comparisons: per-shape "
                        "cuDNN/cuBLAS plans and Triton specializations are then built before the timed prefill on "
                        "both sides; needs memory for a second cache)")
    p.add_argument("--graphs", action="store_true",
                   help=f"both sides in CUDA graphs over static caches ({', '.join(GRAPH_KINDS)})")
    p.add_argument("--compile", action="store_true",
                   help="with --graphs: the model's own code through torch.compile on both sides before capture "
                        "(attention and cache writes stay uncompiled)")
    p.add_argument("--pad", type=_at_least(0), default=0,
                   help="left padding of the last batch row (row i of B: pad * i // (B - 1)); the decode steps "
                        "hide it (eager: an attention mask each step; --graphs: the static layers' recorded "
                        "padding; default 0: none)")
    p.add_argument("--tiny", action="store_true", help="2-layer small model (checks the path; CPU is fine)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.set_defaults(func=run)


def _at_least(low: int):
    """argparse type: an int >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def _ints(text: str) -> list[int]:
    """Comma-separated integers >= 1 (batch sizes, contexts)."""
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ValueError(f"batch sizes and contexts must be >= 1, got {text!r}")
    return values


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def build_model(tiny: bool, dev: torch.device):
    """Random-weight LlamaForCausalLM in bf16, initialized on `dev` (no CPU copy, no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = TINY if tiny else LLAMA_8B
    cfg = LlamaConfig(max_position_embeddings=1 << 20, **shape)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with dev:
            torch.manual_seed(0)
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    model.set_attn_implementation("sdpa")
    return model, shape


def sdpa_backends(kind: str):
    """Context for a cell's forwards: "f16-flash" runs SDPA with the cuDNN backend switched off (flash where it
    applies). The default "f16" lets torch choose (cuDNN attention on recent GPUs), whose per-call setup for every
    new key length shows up as host time in eager decode steps (docs/performance.md)."""
    if kind != "f16-flash":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def make_cache(model, kind: str):
    """A fresh DynamicCache (f16) or TurboQuantCache (default windows) for `model`, switching its attention."""
    import compactkv
    from transformers import DynamicCache

    if kind not in CONFIGS:
        raise ValueError(f"unknown cache {kind!r}; accepted: {', '.join(CONFIGS)}")
    if CONFIGS[kind] is None:
        model.set_attn_implementation("sdpa")
        return DynamicCache(config=model.config)
    compactkv.attach(model)
    k, v = CONFIGS[kind]
    return compactkv.TurboQuantCache(model.config, k=k, v=v)


def synthetic_fill(cache, shape: dict, b: int, t: int, dev: torch.device) -> None:
    """Put t tokens per batch row into `cache` without running the model."""
    hkv, d, n_layers = shape["num_key_value_heads"], shape["head_dim"], shape["num_hidden_layers"]
    if not hasattr(cache, "memory_report"):  # DynamicCache: random bf16 K/V through the public update
        for i in range(n_layers):
            k = torch.empty(b, hkv, t, d, dtype=torch.bfloat16, device=dev).normal_()
            v = torch.empty_like(k).normal_()
            cache.update(k, v, i)
            del k, v
        return
    n_recent = min(cache.cache_config.residual_length, t)
    n_comp = t - n_recent
    for layer in cache.layers:
        empty = torch.empty(b, hkv, 0, d, dtype=torch.bfloat16, device=dev)
        layer.lazy_initialization(empty, empty)
        for s in range(0, n_comp, layer.chunk_tokens):
            n = min(layer.chunk_tokens, n_comp - s)
            layer.chunks_k.append(random_rows(layer.k_codec, b, hkv, n, dev))
            layer.chunks_v.append(random_rows(layer.v_codec, b, hkv, n, dev))
        layer.n_compressed = n_comp
        layer.recent_k = torch.randn(b, hkv, n_recent, d, dtype=torch.float16, device=dev)
        layer.recent_v = torch.randn(b, hkv, n_recent, d, dtype=torch.float16, device=dev)
        if layer.center_keys:
            layer.k_mean = torch.zeros(b, hkv, 1, d, dtype=torch.float32, device=dev)
        layer.cumulative_length = t


@torch.no_grad()
def prefill(model, cache, ids: torch.Tensor, chunk: int, kw: str) -> torch.Tensor:
    """Chunked prefill of ids [B, T]; returns the greedy next token [B, 1]."""
    out = None
    for s in range(0, ids.shape[1], chunk):
        out = model(input_ids=ids[:, s:s + chunk], use_cache=True, logits_to_keep=1, **{kw: cache})
    return out.logits[:, -1].argmax(-1, keepdim=True)


def pad_mask(b: int, t: int, pad: int, dev: torch.device) -> torch.Tensor:
    """int64 [B, t] attention mask of a left-padded batch: row i's first pad * i // (B - 1) positions 0."""
    if b > 1 and pad >= t:
        raise ValueError(f"--pad {pad}: the padding must leave tokens to attend (< the context, {t})")
    return left_pad_keep(b, t, pad, dev).to(torch.int64)


@torch.no_grad()
def decode(model, cache, tok: torch.Tensor, steps: int, kw: str, dev: torch.device,
           mask: torch.Tensor | None = None) -> list[float]:
    """Greedy decode steps one by one; seconds per step (device synchronized around each). mask: None, or the
    [B, tokens held] attention mask before the first step (`pad_mask`), grown by one attended position a step."""
    times = []
    for _ in range(steps):
        extra = {}
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            extra["attention_mask"] = mask
        _sync(dev)
        t0 = time.perf_counter()
        out = model(input_ids=tok, use_cache=True, **extra, **{kw: cache})
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(dev)
        times.append(time.perf_counter() - t0)
        del out
    return times


@contextlib.contextmanager
def cell_guard(row: dict, dev: torch.device):
    """Around one cell: memory freed and the peak counter reset first; an OutOfMemoryError or any other error is
    recorded in `row` (status, error) instead of ending the run; the peak is recorded last."""
    _free(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        yield
    except torch.OutOfMemoryError as e:
        row["status"], row["error"] = "OOM", str(e).split("\n")[0][:300]
    except Exception as e:  # noqa: BLE001 - a broken cell is a result too; the run goes on
        row["status"], row["error"] = "error", f"{type(e).__name__}: {str(e)[:300]}"
    if dev.type == "cuda":
        row["peak_bytes"] = torch.cuda.max_memory_allocated(dev)


def record_steps(row: dict, times: list[float], b: int) -> None:
    """Step-time statistics (ms) and tokens/s from the median, into `row`."""
    med = statistics.median(times)
    row.update(step_ms_median=med * 1e3, step_ms_mean=statistics.fmean(times) * 1e3, step_ms_min=min(times) * 1e3,
               step_ms_max=max(times) * 1e3, tok_s=b / med, steps=len(times))


def timed_prefill(model, cache, shape: dict, b: int, t: int, args, dev: torch.device, row: dict,
                  new_cache=None) -> torch.Tensor:
    """Chunked prefill of b random prompts of t tokens into `cache`; records its chunk and time in `row`, returns
    the greedy next token [B, 1]. new_cache (a factory of empty caches like `cache`), unless --no-prefill-warmup:
    an untimed two-chunk prefill of 512 tokens into one of them first, so the timed prefill pays no kernel
    compilation (the first compressed cell of a process otherwise includes Triton's JIT); with
    --prefill-warmup-full the untimed prefill is the same prompt in the same chunks."""
    from ..engine.caches import cache_kwarg

    g = torch.Generator(device="cpu").manual_seed(1234 + b)
    ids = torch.randint(0, shape["vocab_size"], (b, t), generator=g).to(dev)
    chunk = min(t, max(256, args.chunk_tokens // b))  # >= 256 tokens unless the prompt is shorter
    row["prefill_chunk"] = chunk
    warm = new_cache is not None and getattr(args, "prefill_warmup", True)
    full = warm and getattr(args, "prefill_warmup_full", False)
    row["prefill_warmed"] = "full" if full else bool(warm)
    if warm:
        scratch = new_cache()
        if full:
            prefill(model, scratch, ids, chunk, cache_kwarg(model))
        else:
            prefill(model, scratch, ids[:, :min(t, 512)], 256, cache_kwarg(model))
        del scratch
        _sync(dev)
    t0 = time.perf_counter()
    tok = prefill(model, cache, ids, chunk, cache_kwarg(model))
    _sync(dev)
    row["prefill_s"] = time.perf_counter() - t0
    row["prefill_tok_s"] = b * t / row["prefill_s"]
    return tok


def run_cell(model, shape: dict, kind: str, b: int, t: int, fill: str, args, dev: torch.device) -> dict:
    from ..engine.caches import cache_kwarg, cache_memory

    row = {"batch": b, "context": t, "kind": kind, "fill": fill, "status": "ok", "stage": None}
    kw = cache_kwarg(model)
    cache = tok = None
    with cell_guard(row, dev):
        row["stage"] = "fill"
        cache = make_cache(model, kind)
        t0 = time.perf_counter()
        if fill == "prefill":
            with sdpa_backends(kind):
                tok = timed_prefill(model, cache, shape, b, t, args, dev, row, lambda: make_cache(model, kind))
        else:
            synthetic_fill(cache, shape, b, t, dev)
            tok = torch.randint(0, shape["vocab_size"], (b, 1), device=dev)
            _sync(dev)
            row["fill_s"] = time.perf_counter() - t0
        row["stage"] = "decode"
        pad = getattr(args, "pad", 0)
        mask = pad_mask(b, t, pad, dev) if pad else None
        if pad:
            row["pad"] = pad
        with sdpa_backends(kind):
            times = decode(model, cache, tok, args.warmup + args.steps, kw, dev, mask)[args.warmup:]
        record_steps(row, times, b)
        mem = cache_memory(cache)
        row.update(kv_bytes=mem["kv_bytes"], kv_fp16_bytes=mem["fp16_bytes"], kv_window_bytes=mem["window_bytes"],
                   tokens_held=mem["tokens"])
        row["stage"] = None
    del cache, tok
    _free(dev)
    return row


@torch.no_grad()
def static_fill(cache, t: int) -> None:
    """t random tokens per row in a static cache (compactkv.cache.static), without running the model."""
    for layer in cache.layers:
        if getattr(layer, "dense", False):
            layer.keys[:, :, :t].normal_()
            layer.values[:, :, :t].normal_()
        else:
            b, h = layer.lengths.shape[0], layer.num_kv_heads
            layer.write_rows(random_rows(layer.k_codec, b, h, t, layer.device),
                             random_rows(layer.v_codec, b, h, t, layer.device))
    cache.fill(t)


def timed_steps(fn, n: int, dev: torch.device) -> list[float]:
    times = []
    for _ in range(n):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return times


def run_graph_cell(model, shape: dict, kind: str, b: int, t: int, fill: str, args, dev: torch.device) -> dict:
    """One --graphs cell: static cache filled to t tokens (a chunked prefill through the model, or synthetic),
    eager steps timed, then the step captured and its replays timed."""
    import compactkv
    from ..engine.caches import cache_memory
    from ..engine.graphs import GreedyStepGraph, static_cache

    row = {"batch": b, "context": t, "kind": kind, "fill": fill, "status": "ok", "stage": None,
           "cuda_graph": dev.type == "cuda"}
    cache = dec = None
    with cell_guard(row, dev):
        if kind not in GRAPH_KINDS:
            raise ValueError(f"--graphs takes caches {', '.join(GRAPH_KINDS)}; {kind!r} does not capture")
        row["stage"] = "fill"
        compactkv.attach(model)  # dense static layers run SDPA through compactkv's attention function too
        compiled = row["torch_compile"] = bool(getattr(args, "compile", False))
        skip = 2 if compiled else 1  # untimed eager steps: kernels compile (compiled: the second one recompiles)
        eager_n = max(skip + 1, args.warmup)
        capacity = t + eager_n + 1 + args.steps
        cache = static_cache(model, kind, b, capacity, dev)
        if fill == "prefill":
            # a full warm-up fills a cache of the same capacity: the buffers' shapes and strides (cuDNN plans,
            # Triton's specializations) are then the timed prefill's
            scratch_t = capacity if getattr(args, "prefill_warmup_full", False) else min(t, 512)
            tok = timed_prefill(model, cache, shape, b, t, args, dev, row,
                                lambda: static_cache(model, kind, b, scratch_t, dev))
        else:
            static_fill(cache, t)
            tok = torch.randint(0, shape["vocab_size"], (b, 1), device=dev)
        pad = getattr(args, "pad", 0)
        if pad:  # what a padded prompt's mask would leave in each layer (its last query row over the t tokens)
            row["pad"] = pad
            keep = left_pad_keep(b, t, pad, dev)[:, None, None, :]  # (run() refused a pad >= a context)
            for layer in cache.layers:
                layer.record_padding(keep)
        dec = GreedyStepGraph(model, cache, tok, compile=compiled)
        row["stage"] = "eager"
        eager = timed_steps(dec.step, eager_n, dev)[skip:]
        row["eager_step_ms_median"] = statistics.median(eager) * 1e3
        row["stage"] = "capture"
        if dev.type == "cuda":
            dec.capture(warmup=1)
        row["stage"] = "decode"
        times = timed_steps(dec.step, args.steps, dev)
        record_steps(row, times, b)
        row.update(eager_tok_s=b / statistics.median(eager),
                   graph_over_eager=statistics.median(eager) / statistics.median(times))
        mem = cache_memory(cache)
        row.update(kv_bytes=mem["kv_bytes"], kv_fp16_bytes=mem["fp16_bytes"], tokens_held=mem["tokens"])
        row["stage"] = None
    del cache, dec
    _free(dev)
    return row


def probe(model, shape: dict, kind: str, b: int, t: int, dev: torch.device) -> tuple[bool, str | None, float]:
    """Does batch b at context t fit: synthetic fill + one decode step? (fits, error, peak GiB)."""
    from ..engine.caches import cache_kwarg

    kw = cache_kwarg(model)
    cache = None
    ok, err = True, None
    _free(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        cache = make_cache(model, kind)
        synthetic_fill(cache, shape, b, t, dev)
        with sdpa_backends(kind):
            decode(model, cache, torch.zeros(b, 1, dtype=torch.long, device=dev), 1, kw, dev)
    except torch.OutOfMemoryError:
        ok, err = False, "OOM"
    peak = torch.cuda.max_memory_allocated(dev) / GIB if dev.type == "cuda" else 0.0
    del cache
    _free(dev)
    return ok, err, peak


def capacity(model, shape, kind: str, t: int, args, dev, out_of_time) -> dict:
    """Largest batch (<= --max-batch) that fits at context t: doubling, then bisection."""
    tried = []
    lo, hi = 0, None  # lo fits (0 = nothing), hi does not
    b = 1
    while True:
        if out_of_time():
            return {"kind": kind, "context": t, "max_batch": lo, "complete": False, "tried": tried}
        if hi is None:
            if b > args.max_batch:
                break
        elif hi - lo <= 1:
            break
        ok, _, peak = probe(model, shape, kind, b, t, dev)
        tried.append({"batch": b, "fits": ok, "peak_gib": peak})
        print(f"  capacity {kind} T={t} B={b}: {'fits' if ok else 'OOM'} (peak {peak:.1f} GiB)", flush=True)
        if ok:
            lo = b
        else:
            hi = b
        b = b * 2 if hi is None else (lo + hi) // 2
        if b == lo:
            break
    return {"kind": kind, "context": t, "max_batch": lo, "batch_x_context": lo * t, "complete": True,
            "capped": hi is None, "tried": tried}


def _gib(x) -> str:
    if x is None:
        return "-"
    return f"{x / GIB:.2f}" if x >= GIB / 100 or not x else f"{x / GIB:.2e}"


def _graph_note(info: dict) -> str:
    compiled = ", model code torch.compile'd on both sides" if info.get("torch_compile") else ""
    if info.get("cuda_graphs"):
        return f"CUDA graphs on both sides (static caches; 'eager ms' = the same step without the graph){compiled}"
    if info["args"].get("graphs"):
        return f"static caches, eager (--graphs captures on CUDA only){compiled}"
    return "no CUDA graphs, no torch.compile on either side"


def table(info: dict) -> str:
    head = (f"{'B':>3} {'T':>7} {'fill':>9} {'cache':>12} {'tok/s':>8} {'x f16':>6} {'step ms':>8} "
            f"{'peak GiB':>8} {'KV GiB':>7} {'prefill s':>9} {'eager ms':>8}  status")
    m = info["machine"]
    lines = [f"card {m['gpu'] or m['device']}; torch {m['torch']}, transformers {m['transformers']}, triton "
             f"{m['triton']}; commit {info['commit']}; model {info['model']}; {_graph_note(info)}; weights "
             f"{_gib(info.get('weights_bytes'))} GiB", head]
    for r in info["cells"]:
        tok = f"{r['tok_s']:.1f}" if r.get("tok_s") else "-"
        x = f"{r['x_f16']:.2f}" if r.get("x_f16") else "-"
        step = f"{r['step_ms_median']:.1f}" if r.get("step_ms_median") else "-"
        pre = f"{r['prefill_s']:.1f}" if r.get("prefill_s") else "-"
        eager = f"{r['eager_step_ms_median']:.1f}" if r.get("eager_step_ms_median") else "-"
        status = r["status"] + (f" ({r['stage']})" if r["status"] != "ok" and r.get("stage") else "")
        lines.append(f"{r['batch']:>3} {r['context']:>7} {r['fill']:>9} {r['kind']:>12} {tok:>8} {x:>6} {step:>8} "
                     f"{_gib(r.get('peak_bytes')):>8} {_gib(r.get('kv_bytes')):>7} {pre:>9} {eager:>8}  {status}")
    for c in info.get("capacity", []):
        note = "" if c.get("complete") else " (search cut short by the deadline)"
        cap = " (the --max-batch cap)" if c.get("capped") else ""
        lines.append(f"capacity {c['kind']:>7} T={c['context']}: largest batch that decodes = {c['max_batch']}{cap}, "
                     f"batch x context = {c['max_batch'] * c['context']}{note}")
    for t, ratio in info.get("capacity_ratio", {}).items():
        where = "largest batch x context over the searched contexts" if t == "best" else f"T={t}"
        lines.append(f"capacity ratio turbo4 / f16, {where}: {ratio:.2f}x")
    return "\n".join(lines)


def run(args) -> int:
    start = time.perf_counter()
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    plan = [(b, t, "prefill") for b in _ints(args.batches) for t in _ints(args.contexts)]  # bad input: before the
    plan += [(b, t, "synthetic") for b in _ints(args.batches) for t in _ints(args.synthetic_contexts)]  # model build
    capacity_contexts = _ints(args.capacity)
    for k in kinds + [k.strip() for k in args.capacity_kinds.split(",") if k.strip()]:
        accepted = GRAPH_KINDS if args.graphs and k in kinds else CONFIGS
        if k not in accepted:
            raise ValueError(f"unknown cache {k!r}{' with --graphs' if args.graphs else ''}; accepted: "
                             f"{', '.join(accepted)}")
    if getattr(args, "pad", 0) and any(args.pad >= t for b, t, _ in plan if b > 1):
        raise ValueError(f"--pad {args.pad}: the padding must leave tokens to attend (< every context)")
    if getattr(args, "compile", False) and not args.graphs:
        raise ValueError("--compile works with --graphs only (static caches); add --graphs or drop --compile")
    if getattr(args, "prefill_warmup_full", False) and not getattr(args, "prefill_warmup", True):
        raise ValueError("--prefill-warmup-full and --no-prefill-warmup contradict each other; give one of them")
    import transformers
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {"commit": commit(), "model": "tiny random Llama (2 layers)" if args.tiny else
            "random Llama-3.1-8B-shaped (bf16)", "cuda_graphs": bool(args.graphs) and dev.type == "cuda",
            "torch_compile": bool(getattr(args, "compile", False)),
            "machine": {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                        "torch": torch.__version__, "transformers": transformers.__version__, "triton": triton_version,
                        "cpu": platform.processor() or platform.machine(),
                        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")},
            "args": {k: v for k, v in vars(args).items() if k != "func"}, "cells": [], "capacity": []}

    def out_of_time() -> bool:
        return args.deadline_s is not None and time.perf_counter() - start > args.deadline_s

    def save() -> None:
        info["elapsed_s"] = time.perf_counter() - start
        if args.json:
            with open(args.json, "w") as f:
                json.dump(info, f, indent=1)

    model, shape = build_model(args.tiny, dev)
    info["shape"] = shape
    _sync(dev)
    info["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    info["build_s"] = time.perf_counter() - start
    print(f"model built in {info['build_s']:.1f} s on {dev} ({info['machine']['gpu']}), weights "
          f"{_gib(info['weights_bytes'])} GiB, commit {info['commit']}", flush=True)

    for b, t, fill in plan:
        group = []
        for kind in kinds:
            if out_of_time():
                row = {"batch": b, "context": t, "kind": kind, "fill": fill, "status": "skipped", "stage": "deadline"}
            elif args.graphs:
                row = run_graph_cell(model, shape, kind, b, t, fill, args, dev)
            else:
                row = run_cell(model, shape, kind, b, t, fill, args, dev)
            info["cells"].append(row)
            group.append(row)
            print(f"B={b} T={t} {fill} {kind}: {row['status']}"
                  + (f" {row['tok_s']:.1f} tok/s, step {row['step_ms_median']:.1f} ms" if row.get("tok_s") else "")
                  + (f", peak {_gib(row.get('peak_bytes'))} GiB, KV {_gib(row.get('kv_bytes'))} GiB")
                  + (f", prefill {row['prefill_s']:.1f} s" if row.get("prefill_s") else "")
                  + (f"  [{row['error']}]" if row.get("error") else "")
                  + f"  t+{time.perf_counter() - start:.0f}s", flush=True)
            save()
        # x f16 = tokens/s over the faster fp16 baseline (f16 / f16-flash) of the same batch and context
        bases = [r["tok_s"] for r in group if r["kind"].startswith("f16") and r.get("tok_s")]
        for r in group:
            if bases and r.get("tok_s") and not r["kind"].startswith("f16"):
                r["x_f16"] = r["tok_s"] / max(bases)
                r["x_f16_base"] = max(bases)
        save()

    if dev.type == "cuda":
        for t in capacity_contexts:
            for kind in [k.strip() for k in args.capacity_kinds.split(",") if k.strip()]:
                info["capacity"].append(capacity(model, shape, kind, t, args, dev, out_of_time))
                save()
            caps = {c["kind"]: c["max_batch"] for c in info["capacity"] if c["context"] == t}
            if caps.get("f16") and caps.get("turbo4"):
                info.setdefault("capacity_ratio", {})[str(t)] = caps["turbo4"] / caps["f16"]
        best = {}
        for c in info["capacity"]:
            if c["max_batch"]:
                best[c["kind"]] = max(best.get(c["kind"], 0), c["max_batch"] * c["context"])
        if best.get("f16") and best.get("turbo4"):
            info["capacity_ratio"]["best"] = best["turbo4"] / best["f16"]
    elif args.capacity:
        print("capacity search skipped: it measures GPU memory", flush=True)
    info["table"] = table(info)
    save()
    print(info["table"], flush=True)
    return 0
