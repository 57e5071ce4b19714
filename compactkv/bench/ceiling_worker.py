"""One measured run for `compactkv bench ceiling`, in its own process so its peak memory is its own.

Loads the model, resets the kernel's peak-RSS mark (VmHWM, via /proc/self/clear_refs), then prefills seeded random
tokens in chunks into a fresh cache, printing one JSON line per chunk: context, peak RSS so far, RSS, KV bytes held.
It stops after the first chunk whose peak passes the memory limit: a measured-RSS budget standing in for an OOM kill.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
from pathlib import Path


def proc_status(key: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no {key} in /proc/self/status")


def reset_peak() -> None:
    """Set VmHWM back to the current RSS after returning freed heap pages to the kernel."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def _emit(**record) -> None:
    print(json.dumps(record), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compactkv.bench.ceiling_worker")
    p.add_argument("--model")
    p.add_argument("--kind", required=True)
    p.add_argument("--chunk", type=int, required=True)
    p.add_argument("--max-context", type=int, required=True)
    p.add_argument("--limit", type=int, default=0, help="absolute peak-RSS limit in bytes")
    p.add_argument("--headroom", type=int, default=0, help="limit = RSS after loading + this many bytes")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    import torch

    from compactkv.engine.caches import cache_kwarg, cache_memory, make_cache
    from compactkv.engine.loader import ModelSpec, load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    lm = load_model(ModelSpec(model=a.model, device="cpu"))
    reset_peak()
    loaded = proc_status("VmRSS")
    limit = a.limit or loaded + a.headroom
    cache, kw = make_cache(lm.model, a.kind, a.kind), cache_kwarg(lm.model)
    cc = getattr(cache, "cache_config", None)
    _emit(event="loaded", rss=loaded, limit=limit, model=lm.source, dtype=lm.details.get("dtype"),
          params=lm.details.get("parameter_count"), attn=lm.attn_implementation, threads=torch.get_num_threads(),
          fp16_tokens=cc.sink_tokens + cc.residual_length if cc else None,
          cache_config=repr(cc) if cc else None)
    vocab = lm.model.config.vocab_size
    ids = torch.randint(0, vocab, (1, a.max_context), generator=torch.Generator().manual_seed(a.seed))
    with torch.inference_mode():
        for start in range(0, a.max_context, a.chunk):
            lm.model(input_ids=ids[:, start:start + a.chunk], use_cache=True, logits_to_keep=1, **{kw: cache})
            peak = proc_status("VmHWM")
            _emit(event="chunk", context=min(start + a.chunk, a.max_context), hwm=peak, rss=proc_status("VmRSS"),
                  kv_bytes=cache_memory(cache)["kv_bytes"])
            if peak > limit:
                _emit(event="limit", context=min(start + a.chunk, a.max_context))
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
