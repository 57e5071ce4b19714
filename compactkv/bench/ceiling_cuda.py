"""CUDA half of `compactkv bench ceiling`: the largest context that prefills without running out of GPU memory.

The model is e2e's random-weight Llama-3.1-8B-shaped bf16 LlamaForCausalLM (built from a config on the device, no
download; `--tiny` = its 2-layer model, for checking the path on CPU). The memory budget is enforced by the CUDA
caching allocator itself (`torch.cuda.set_per_process_memory_fraction(budget / card memory)`), so running out is
a real torch.cuda.OutOfMemoryError. For each kind, in one process: a fresh cache (f16 = DynamicCache + SDPA,
others = TurboQuantCache with the Triton path, as in `bench e2e`), seeded random token ids prefilled in chunks of
`chunk` tokens (logits of the last token only, the engine's setting) until OOM or `max_context`; after every chunk
the peak allocated during that chunk (torch.cuda.max_memory_allocated, reset before the chunk), the allocated bytes,
the peak reserved and the KV bytes the cache holds. The ceiling is the last context whose chunk completed. Should
the allocator ever let its reserved peak pass the budget without raising, the run stops there too (recorded as
`over_budget_without_oom`) and that chunk does not count.
"""

from __future__ import annotations

import gc
import time

import torch


def _mem(dev: torch.device) -> tuple[int, int, int]:
    """(peak since the last reset, allocated now, reserved now); on CPU (the --tiny check) the RSS figures."""
    if dev.type == "cuda":
        return (torch.cuda.max_memory_allocated(dev), torch.cuda.memory_allocated(dev),
                torch.cuda.memory_reserved(dev))
    from .ceiling_worker import proc_status
    return proc_status("VmHWM"), proc_status("VmRSS"), proc_status("VmRSS")


def _reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        from .ceiling_worker import reset_peak
        reset_peak()


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _make_cache(model, spec: str, make_cache):
    """f16: DynamicCache + SDPA (bench e2e's); any other config: TurboQuantCache with the compactkv attention, its
    default windows, and `KIND@N` -> N-token row chunks."""
    import compactkv

    from ..plan import parse_config
    from .ceiling import split_kind

    kind, chunk = split_kind(spec)
    if kind == "f16":
        return make_cache(model, "f16")
    config = parse_config(kind)
    compactkv.attach(model)
    options = {"chunk_tokens": chunk} if chunk else {}
    return compactkv.TurboQuantCache(model.config, k=config.k, v=config.v,
                                     policy=None if config.policy == "uniform" else config.policy, **options)


def measure_cuda(kinds: list[str], budget: int, chunk: int, max_context: int, tiny: bool = False,
                 device: str | None = None, deadline_s: float | None = None, log=print, on_run=None):
    """One Run per kind (see ceiling.Run); `budget` = bytes the allocator may hold (weights included).
    `on_run(runs, weights)` is called after each kind (to save partial results)."""
    from ..engine.caches import cache_kwarg, cache_memory
    from .ceiling import Run
    from .e2e import build_model, make_cache

    start = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None:  # the memory-fraction call wants an index
        dev = torch.device("cuda", torch.cuda.current_device())
    model, shape = build_model(tiny, dev)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (path check only)"
    total = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), dev)
    kw = cache_kwarg(model)
    ids = torch.randint(0, shape["vocab_size"], (1, max_context), generator=torch.Generator().manual_seed(0)).to(dev)
    log(f"model built in {time.perf_counter() - start:.1f} s on {card}: weights {weights:,} B; budget {budget:,} B"
        + (f" = {budget / total:.4f} of {total:,} B" if total else ""))
    runs = []
    for kind in kinds:
        _free(dev)
        _reset(dev)
        loaded = _mem(dev)[1]
        t0 = time.perf_counter()
        records, reserved, oom, stopped, over = [], [], None, None, None
        cache = out = None
        try:
            cache = _make_cache(model, kind, make_cache)
            with torch.no_grad():
                for s in range(0, max_context, chunk):
                    if deadline_s is not None and time.perf_counter() - start > deadline_s:
                        stopped = f"deadline at {s} tokens"
                        break
                    _reset(dev)
                    out = model(input_ids=ids[:, s:s + chunk], use_cache=True, logits_to_keep=1, **{kw: cache})
                    del out
                    out = None
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    peak, alloc, res = _mem(dev)
                    context = min(s + chunk, max_context)
                    rec = (context, peak, alloc, cache_memory(cache)["kv_bytes"])
                    res_peak = torch.cuda.max_memory_reserved(dev) if dev.type == "cuda" else res
                    if dev.type == "cuda" and res_peak > budget:  # the allocator did not enforce the fraction
                        over = {"record": rec, "reserved_peak": res_peak}
                        break
                    records.append(rec)
                    reserved.append(res_peak)
                    if len(records) % 16 == 0:
                        log(f"  {kind} {context:,} tokens: peak {peak / 2**30:.3f} GiB, reserved {res / 2**30:.3f} "
                            f"GiB, t+{time.perf_counter() - t0:.0f}s")
        except torch.OutOfMemoryError as e:
            oom = {"context_tried": (records[-1][0] if records else 0) + chunk,
                   "message": str(e).split("\n")[0][:600]}
            if dev.type == "cuda":
                oom.update(peak_at_oom=torch.cuda.max_memory_allocated(dev),
                           reserved_at_oom=torch.cuda.memory_reserved(dev),
                           allocated_at_oom=torch.cuda.memory_allocated(dev))
        seconds = time.perf_counter() - t0
        del cache, out
        _free(dev)
        meta = {"card": card, "device": str(dev), "model": "tiny random Llama (2 layers)" if tiny else
                "random Llama-3.1-8B-shaped (bf16)", "weights_bytes": weights, "budget": budget,
                "card_memory": total, "oom": oom, "stopped": stopped, "reserved_peaks": reserved,
                "over_budget_without_oom": over,
                "path": "DynamicCache + SDPA" if kind == "f16" else "TurboQuantCache + Triton"}
        run = Run(kind, loaded, budget, tuple(records), oom is not None or over is not None, seconds, meta)
        runs.append(run)
        if on_run:
            on_run(runs, weights)
        what = ("OOM at " + format(oom["context_tried"], ",") if oom else
                "reserved over the budget without an OOM" if over else stopped or "no OOM")
        log(f"{kind}: {what}; ceiling "
            f"{run.ceiling:,} tokens; {seconds:.1f} s")
    return runs, shape, weights
