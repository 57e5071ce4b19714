"""`compactkv bench ceiling`: measured peak memory against the planner's prediction, and the largest context that
fits a memory limit, found by running until the limit is crossed.

CPU (default; the default model unless --model): each KV kind runs in its own process
(compactkv.bench.ceiling_worker) that prefills in chunks and reads the kernel's peak RSS after each chunk; its
ceiling is the last context whose peak stayed under the limit. CUDA (--device cuda): a random-weight
Llama-3.1-8B-shaped bf16 model under a --budget enforced by the CUDA allocator, prefilled in chunks until
torch.cuda.OutOfMemoryError (compactkv.bench.ceiling_cuda). Predictions use the planner with the overhead constants
fitted on the *other* kinds' runs (leave-one-out), so no run predicts itself; the fit on all kinds is shown beside.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from compactkv.plan import OverheadModel, kv_bytes, load_overhead, load_shape, parse_config, parse_memory
from compactkv.plan.overhead import PROVISIONAL
from compactkv.plan.planner import is_dense, plan_row
from compactkv.plan.units import fmt_bytes

from .provenance import commit as tree_commit


@dataclass(frozen=True)
class Run:
    """One worker's records: (context, peak RSS, RSS, KV bytes) after each chunk."""

    kind: str
    loaded: int
    limit: int
    records: tuple[tuple[int, int, int, int], ...]
    hit_limit: bool
    seconds: float
    meta: dict

    @property
    def ceiling(self) -> int:
        """Largest measured context whose peak stayed under the limit (the last one run if the limit was never hit)."""
        ok = [c for c, hwm, _, _ in self.records if hwm <= self.limit]
        return max(ok, default=0)


def split_kind(spec: str) -> tuple[str, int | None]:
    """A run's kind spec: `KIND` or `KIND@N` (TurboQuantCache with N-token row chunks) -> (config text, N or None)."""
    kind, _, chunk = spec.partition("@")
    return kind, int(chunk) if chunk else None


def _run_config(run: "Run", model: OverheadModel):
    """(KV config, the overhead model with the run's cache chunk) for one run."""
    kind, chunk = split_kind(run.kind)
    return parse_config(kind), replace(model, cache_chunk_tokens=chunk) if chunk else model


def oom_hole(run: "Run") -> int | None:
    """Bytes the CUDA allocator held reserved but unallocated when the run hit OOM (after its release-and-retry)."""
    oom = run.meta.get("oom") if run.meta else None
    if not oom:
        return None
    # torch's message gives the figure at the failed request; memory_allocated read in the handler is lower (the
    # forward's temporaries are freed by then), so it is used only when the message lacks the figure
    m = re.search(r"and ([\d.]+) (KiB|MiB|GiB) is reserved by PyTorch but unallocated", oom.get("message", ""))
    if not m:  # older records: torch's message, cut at 300 characters
        m = re.search(r"and ([\d.]+) (KiB|MiB|GiB) is reserved by", oom.get("message", ""))
    if m:
        return int(float(m.group(1)) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[m.group(2)])
    return oom["reserved_at_oom"] - oom["allocated_at_oom"] if "allocated_at_oom" in oom else None


MMAP_THRESHOLD = "65536"  # glibc: buffers above this are mmapped and go back to the kernel when freed


def run_worker(kind: str, model: str | None, chunk: int, max_context: int, limit: int, headroom: int,
               threads: int, fixed_mmap: bool = True) -> Run:
    """Run the worker for one kind; `fixed_mmap` pins glibc's mmap threshold so freed transients leave the RSS."""
    cmd = [sys.executable, "-m", "compactkv.bench.ceiling_worker", "--kind", kind, "--chunk", str(chunk),
           "--max-context", str(max_context), "--limit", str(limit), "--headroom", str(headroom),
           "--threads", str(threads)] + (["--model", model] if model else [])
    start = time.perf_counter()
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD) if fixed_mmap else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"ceiling worker for {kind} failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    head = next(r for r in lines if r["event"] == "loaded")
    recs = tuple((r["context"], r["hwm"], r["rss"], r["kv_bytes"]) for r in lines if r["event"] == "chunk")
    return Run(kind, head["rss"], head["limit"], recs, any(r["event"] == "limit" for r in lines),
               time.perf_counter() - start, head)


def fit_overhead(shape, runs: list[Run], chunk: int, weights: int, source: str, block: int | None,
                 fp16_tokens: int = 0, device: str = "cpu") -> OverheadModel:
    """Overhead constants from measured peaks, by least squares over every record of `runs`:
    peak - weights - KV - attention copies = a + s * min(context, block) + m * context, mapped onto the formula
    (a -> base_bytes, s -> score_bytes over `block`-token key blocks, m -> mask_bytes). The attention-copy counts
    are the device's documented ones (compactkv/plan/overhead.py), not fitted; `block` None fits no score term."""
    model = replace(PROVISIONAL[device], prefill_chunk=chunk, score_bytes=0.0, mask_bytes=0.0, base_bytes=0,
                    score_block=block)
    rows, ys = [], []
    for run in runs:
        config = parse_config(split_kind(run.kind)[0])
        dense = is_dense(shape, config)
        for context, hwm, _, _ in run.records:
            rows.append((1.0, min(context, block), context) if block else (1.0, context))
            ys.append(hwm - weights - kv_bytes(shape, config, context, 1, fp16_tokens)
                      - model.copies_bytes(shape, context, dense))
    coef, *_ = np.linalg.lstsq(np.array(rows, float), np.array(ys, float), rcond=None)
    a, s, m = coef if block else (coef[0], 0.0, coef[1])
    no_copies = replace(model, dense_kv_copies=0.0, dense_head_copies=0.0, packed_kv_copies=0.0,
                        packed_head_copies=0.0)
    fixed = no_copies.bytes(shape, chunk)  # activations + logits of one chunk under the default buffer counts
    reserve = model.alloc_reserve_bytes
    if model.small_alloc_bytes:  # allocator slack: measured holes at OOM less the computed small-block packing loss
        holes = []
        for run in runs:
            hole = oom_hole(run)
            if hole is not None:
                config, m_run = _run_config(run, replace(model, alloc_reserve_bytes=0))
                holes.append(hole - m_run.slack_bytes(shape, config, run.ceiling, 1, fp16_tokens))
        reserve = int(np.mean(holes)) if holes else reserve
    return replace(model, base_bytes=int(a - fixed), score_bytes=float(s) / (shape.n_heads * chunk) if block else 0.0,
                   mask_bytes=float(m) / chunk, alloc_reserve_bytes=reserve, source=source)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _commit() -> str:
    """The tree's commit (`provenance.commit`: $COMPACTKV_COMMIT when set), or "unknown"."""
    return tree_commit() or "unknown"


def evaluate(shape, runs: list[Run], chunk: int, weights: int, machine: str, block: int | None, fp16_tokens: int,
             device: str = "cpu", commit: str | None = None, given: OverheadModel | None = None) -> dict:
    """Ceilings and peaks, measured vs predicted, each kind predicted from the others' calibration (and, for
    comparison, from the fit on all kinds); `fp16_tokens` per layer are counted as the cache's uncompressed sink
    and recent window."""
    fitted = fit_overhead(shape, runs, chunk, weights, f"measured: compactkv bench ceiling on {machine}, "
                          f"{shape.name}, kinds {', '.join(r.kind for r in runs)}, commit {commit or _commit()}", block,
                          fp16_tokens, device)
    ceilings, peaks = [], []
    for run in runs:
        others = [r for r in runs if r is not run]
        several = len({r.limit for r in runs}) > 1
        names = [f"{r.kind} ({fmt_bytes(r.limit)})" if several else r.kind for r in others]
        if others:
            model = fit_overhead(shape, others, chunk, weights, f"fitted on {', '.join(names)}", block,
                                 fp16_tokens, device)
        else:
            model = load_overhead(device, prefill_chunk=chunk)
        config, model = _run_config(run, model)
        dense = is_dense(shape, config)

        def predicted_ceiling(m):
            row = plan_row(shape, config, run.limit, chunk, 1, weights, m, fp16_tokens)
            return row.max_context, (row.max_context // chunk) * chunk if row.max_context is not None else None

        tokens, predicted = predicted_ceiling(model)
        tokens_all, predicted_all = predicted_ceiling(_run_config(run, fitted)[1])
        if given is not None:
            given_run = _run_config(run, replace(given, prefill_chunk=chunk))[1]
            tokens_given, predicted_given = predicted_ceiling(given_run)
        ok = run.hit_limit and run.ceiling
        ceilings.append({"kind": run.kind, "limit": run.limit, "measured": run.ceiling, "hit_limit": run.hit_limit,
                         "predicted_tokens": tokens, "predicted": predicted, "calibration": model.source,
                         "error": predicted / run.ceiling - 1 if ok and predicted else None,
                         "error_tokens": tokens / run.ceiling - 1 if ok and tokens else None,
                         "predicted_fit_all_tokens": tokens_all, "predicted_fit_all": predicted_all,
                         "error_fit_all": predicted_all / run.ceiling - 1 if ok and predicted_all else None,
                         "slack_predicted": model.slack_bytes(shape, config, run.ceiling, 1, fp16_tokens),
                         "hole_at_oom": oom_hole(run),
                         "stopped_by": ("OOM" if run.meta.get("oom") else "reserved over the budget, no OOM raised"
                                        if run.meta.get("over_budget_without_oom") else
                                        "the limit" if run.hit_limit else "not reached")})
        if given is not None:
            ceilings[-1].update(predicted_given_tokens=tokens_given, predicted_given=predicted_given,
                                given_source=given.source,
                                error_given=predicted_given / run.ceiling - 1 if ok and predicted_given else None)
        for context, hwm, rss, kv in run.records:
            kv_plan = kv_bytes(shape, config, context, 1, fp16_tokens)
            total = weights + kv_plan + model.bytes(shape, context, 1, dense)
            peaks.append({"kind": run.kind, "context": context, "measured_peak": hwm, "predicted": total,
                          "error": total / hwm - 1, "kv_measured": kv, "kv_predicted": kv_plan,
                          "growth_since_load": hwm - run.loaded,
                          "overhead_measured": hwm - weights - kv_plan,
                          "overhead_predicted": model.bytes(shape, context, 1, dense),
                          "slack_predicted": model.slack_bytes(shape, config, context, 1, fp16_tokens)})
            if given is not None:
                alloc = weights + kv_plan + given_run.bytes(shape, context, 1, dense)
                peaks[-1].update(predicted_given=alloc, error_given=alloc / hwm - 1)
    return {"ceilings": ceilings, "peaks": peaks, "calibration": asdict(fitted)}


def print_tables(result: dict, max_rows: int = 24) -> None:
    """Ceilings, then peaks (at most `max_rows` per kind: evenly spaced records plus the last)."""
    print(f"\nmachine {result['machine']}  model {result['model']}  chunk {result['chunk']}  commit {result['commit']}")
    print(f"\n{'kind':8} {'limit':>10} {'measured ceiling':>17} {'predicted':>10} {'error':>7} {'fit-all':>8} "
          f"{'error':>7}  calibration")
    for c in result["ceilings"]:
        err = "n/a" if c["error"] is None else f"{c['error']:+.1%}"
        err_all = "n/a" if c.get("error_fit_all") is None else f"{c['error_fit_all']:+.1%}"
        measured = f"{c['measured']:,}" + ("" if c["hit_limit"] else "+") + ("*" if "no OOM" in c.get(
            "stopped_by", "") else "")
        print(f"{c['kind']:8} {fmt_bytes(c['limit']):>10} {measured:>17} {c['predicted'] or 0:>10,} {err:>7} "
              f"{c.get('predicted_fit_all') or 0:>8,} {err_all:>7}  {c['calibration']}")
    if any("no OOM" in c.get("stopped_by", "") for c in result["ceilings"]):
        print("  * stopped when the allocator's reserved peak passed the budget without raising OOM "
              "(not an OOM ceiling)")
    for c in result["ceilings"]:
        if "predicted_given" in c:
            err = "n/a" if c["error_given"] is None else f"{c['error_given']:+.1%}"
            print(f"  {c['kind']:12} with {c['given_source']}: predicted {c['predicted_given'] or 0:,} ({err})")
    print(f"\n{'kind':8} {'context':>8} {'peak':>10} {'predicted':>10} {'error':>7} {'KV held':>10} "
          f"{'KV planned':>10} {'growth':>10}")
    for kind in dict.fromkeys(p["kind"] for p in result["peaks"]):
        rows = [p for p in result["peaks"] if p["kind"] == kind]
        step = max(1, -(-len(rows) // max_rows))
        for i, p in enumerate(rows):
            if i % step and i != len(rows) - 1:
                continue
            print(f"{p['kind']:8} {p['context']:>8,} {fmt_bytes(p['measured_peak']):>10} "
                  f"{fmt_bytes(p['predicted']):>10} {p['error']:>+7.1%} {fmt_bytes(p['kv_measured']):>10} "
                  f"{fmt_bytes(p['kv_predicted']):>10} {fmt_bytes(p['growth_since_load']):>10}")
    holes = [c for c in result["ceilings"] if c.get("hole_at_oom") is not None]
    if holes:
        print("\nallocator at OOM: reserved but unallocated (measured) vs slack the plan counts at the ceiling")
        for c in holes:
            print(f"{c['kind']:12} {fmt_bytes(c['hole_at_oom']):>10} {fmt_bytes(c['slack_predicted']):>10}")
    worst = max((abs(p["error"]) for p in result["peaks"]), default=0.0)
    print(f"largest peak error over all {len(result['peaks'])} records: {worst:.2%}")
    if any("error_given" in p for p in result["peaks"]):
        worst = max(abs(p["error_given"]) for p in result["peaks"])
        print(f"largest peak error with the given calibration: {worst:.2%}")


def measure(args, model: str) -> list[Run]:
    """One worker run per kind in --kinds."""
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in kinds:
        parse_config(kind)
    headrooms = [parse_memory(h) for h in args.headroom.split(",")]
    if len(headrooms) not in (1, len(kinds)):
        raise ValueError(f"--headroom takes one size or one per kind ({len(kinds)}), got {len(headrooms)}")
    limit = parse_memory(args.memory_limit) if args.memory_limit else 0
    runs = []
    for kind, headroom in zip(kinds, headrooms * len(kinds) if len(headrooms) == 1 else headrooms):
        print(f"ceiling: running {kind} (chunk {args.chunk}, up to {args.max_context:,} tokens)...", file=sys.stderr)
        runs.append(run_worker(kind, model, args.chunk, args.max_context, limit, headroom, args.threads,
                               not args.glibc_default))
    return runs


def run(args) -> int:
    if args.device == "cuda":
        return run_cuda(args)
    from compactkv.cache.config import CacheConfig
    from compactkv.engine.model_files import ensure_default_model

    model = args.model or str(ensure_default_model())
    shape = load_shape(model)
    weights = shape.params * 4  # the engine loads weights as float32 on CPU
    cache = CacheConfig()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        runs, chunk = [Run(**r) for r in saved["runs"]], saved["chunk"]
        head = {k: saved[k] for k in ("command", "glibc_mmap_threshold", "machine", "commit")}
        head["evaluated_by"] = "compactkv " + " ".join(sys.argv[1:])
    else:
        head = {"command": "compactkv " + " ".join(sys.argv[1:]), "machine": _cpu_name(), "commit": _commit(),
                "glibc_mmap_threshold": None if args.glibc_default else int(MMAP_THRESHOLD),
                "tree_dirty": _dirty()}
        runs, chunk = measure(args, model), args.chunk
    fp16_tokens = _fp16_tokens(args, runs, cache)
    result = {**head, "model": shape.name, "chunk": chunk, "weights_bytes": weights, "fp16_tokens": fp16_tokens,
              "runs": [asdict(r) for r in runs],
              **evaluate(shape, runs, chunk, weights, head["machine"], cache.chunk_tokens, fp16_tokens, "cpu",
                         head["commit"], _given(args, "cpu"))}
    _finish(args, result, "cpu")
    return 0


def _given(args, device: str) -> OverheadModel | None:
    """--predict-with: a calibration file whose constants also predict every run (an out-of-sample check)."""
    return load_overhead(device, args.predict_with) if args.predict_with else None


def _dirty() -> bool | None:
    """Whether the package's files differ from the commit (others may be editing the shared tree)."""
    out = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent)
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _token_count(text: str) -> int:
    """argparse type: an integer >= 0 (rejected before anything is measured)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a token count >= 0, got {text!r}")
    return n


def _fp16_tokens(args, runs: list[Run], cache) -> int:
    """Tokens per layer the caches kept in fp16: --fp16-tokens, else what the workers recorded, else the default."""
    if args.fp16_tokens is not None:
        return args.fp16_tokens
    seen = {r.meta.get("fp16_tokens") for r in runs if r.meta and r.meta.get("fp16_tokens") is not None}
    if len(seen) == 1:
        return seen.pop()
    if seen:
        raise ValueError(f"the runs kept different fp16 windows {sorted(seen)}; pass --fp16-tokens")
    return cache.sink_tokens + cache.residual_length


def _finish(args, result: dict, device: str) -> None:
    print_tables(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.write_calibration:
        Path(args.write_calibration).write_text(json.dumps({device: result["calibration"]}, indent=2) + "\n")


def _llama_shape(tiny: bool):
    """The planner's shape of bench e2e's model: the Llama-3.1-8B preset, or the --tiny model from its config."""
    from compactkv.plan.shapes import ModelShape, estimate_params, kv_layers

    from .e2e import TINY
    if not tiny:
        return load_shape("llama-3.1-8b")
    c = TINY
    return ModelShape("tiny random Llama", c["num_hidden_layers"], c["num_attention_heads"], c["hidden_size"],
                      c["intermediate_size"], c["vocab_size"],
                      kv_layers(c["num_hidden_layers"], c["num_key_value_heads"], c["head_dim"]),
                      estimate_params(c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"],
                                      c["num_key_value_heads"], c["head_dim"], c["intermediate_size"],
                                      c["vocab_size"], tied=False), "bench e2e TINY")


def run_cuda(args) -> int:
    """GPU: random-weight Llama-3.1-8B-shaped bf16 model, budget enforced by the CUDA allocator, OOM caught."""
    import platform

    import torch

    from compactkv.cache.config import CacheConfig

    from .ceiling_cuda import measure_cuda

    cache = CacheConfig()
    fp16_tokens = _fp16_tokens(args, [], cache)  # the CUDA runs record no window: --fp16-tokens, else the default
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        runs, chunk = [Run(**r) for r in saved["runs"]], saved["chunk"]
        head = {k: saved[k] for k in ("command", "machine", "commit", "versions", "alloc_conf")}
        head["evaluated_by"] = "compactkv " + " ".join(sys.argv[1:])
        shape = _llama_shape(saved.get("tiny", False))
        weights, tiny = saved["weights_bytes"], saved.get("tiny", False)
    else:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        for kind in kinds:
            parse_config(split_kind(kind)[0])
        budget = parse_memory(args.budget)
        chunk, tiny = args.chunk, args.tiny
        def save_partial(done, w):
            if args.json:
                Path(args.json + ".partial").write_text(json.dumps({"weights_bytes": w, "chunk": chunk,
                                                                    "runs": [asdict(r) for r in done]}) + "\n")

        runs, _, weights = measure_cuda(kinds, budget, chunk, args.max_context, tiny, args.torch_device,
                                        args.deadline_s, log=lambda m: print(m, file=sys.stderr, flush=True),
                                        on_run=save_partial)
        shape = _llama_shape(tiny)
        import transformers
        try:
            import triton
            tv = triton.__version__
        except ImportError:
            tv = None
        head = {"command": "compactkv " + " ".join(sys.argv[1:]), "machine": runs[0].meta["card"] if runs else "?",
                "commit": _commit(), "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "triton": tv,
                             "python": platform.python_version()}}
    planned = shape.params * 2
    if planned != weights:
        print(f"note: the model holds {weights:,} B of weights, the planner's bf16 count is {planned:,} B",
              file=sys.stderr)
    result = {**head, "model": shape.name + " (random weights, bf16)", "tiny": tiny, "chunk": chunk,
              "weights_bytes": weights, "planned_weights_bytes": planned, "fp16_tokens": fp16_tokens,
              "runs": [asdict(r) for r in runs],
              **evaluate(shape, runs, chunk, weights, head["machine"], None, fp16_tokens, "cuda", head["commit"],
                         _given(args, "cuda"))}
    _finish(args, result, "cuda")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("ceiling", help="peak memory and largest context vs the planner (CPU or CUDA)",
                              description=__doc__)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: the default model, peak RSS against a limit; cuda: a random-weight Llama-3.1-8B-shaped "
                        "bf16 model, torch.cuda.max_memory_allocated, OOM under --budget [cpu]")
    p.add_argument("--budget", default="20GiB", help="cuda: memory the CUDA allocator may hold, weights included "
                   "(set with torch.cuda.set_per_process_memory_fraction) [20GiB]")
    p.add_argument("--tiny", action="store_true", help="cuda: bench e2e's 2-layer model (checks the path, CPU ok)")
    p.add_argument("--torch-device", help="cuda: torch device [cuda when available, else cpu]")
    p.add_argument("--deadline-s", type=float, help="cuda: start no chunk after this many seconds")
    p.add_argument("--model", help="GGUF file or HF folder [the default model]")
    p.add_argument("--kinds", default="f16,turbo4", help="comma-separated KV kinds, one run each [f16,turbo4]")
    p.add_argument("--chunk", type=int, default=256, help="prefill chunk in tokens (ceiling granularity) [256]")
    p.add_argument("--max-context", type=int, default=8192, help="stop a run here if the limit is not hit [8192]")
    p.add_argument("--memory-limit", help="absolute peak-RSS limit, e.g. 1.2GiB [RSS after loading + headroom]")
    p.add_argument("--headroom", default="160MiB", help="limit above each run's RSS after loading; one size or one "
                   "per kind, comma-separated [160MiB]")
    p.add_argument("--threads", type=int, default=0, help="torch threads [torch's default]")
    p.add_argument("--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold (freed buffers "
                   "stay in the heap; peaks vary run to run) instead of MALLOC_MMAP_THRESHOLD_=65536")
    p.add_argument("--json", metavar="PATH", help="write all records and results as JSON")
    p.add_argument("--from-json", metavar="PATH", help="re-evaluate the runs saved in an earlier --json file "
                   "instead of measuring")
    p.add_argument("--fp16-tokens", type=_token_count, help="tokens per layer the measured caches kept in fp16 (sinks + "
                   "recent window) [recorded by the workers, else TurboQuantCache's default]")
    p.add_argument("--predict-with", metavar="PATH", help="also predict every run with this calibration file's "
                   "constants (e.g. fitted on an earlier run)")
    p.add_argument("--write-calibration", metavar="PATH", help="write the fitted overhead calibration JSON (one "
                   "object, keyed by the device)")
    p.set_defaults(func=run)
