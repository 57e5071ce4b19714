"""`compactkv plan`: what fits in a memory budget, at what context and batch, with which KV configs."""

from __future__ import annotations

import argparse
import os

EPILOG = """\
MODEL is a GGUF file, a HF config.json or model folder, or a built-in preset (case-insensitive, hub owner and
-Instruct/-it optional): Llama-3.1-8B, Llama-3.1-70B, Qwen2.5-7B/14B/32B, Qwen3-8B/14B/32B, Mistral-7B,
Gemma-3-4B/12B/27B. KV configs are spelled KIND, K/V (q8_0/turbo4), PRESET or PRESET:K/V, where PRESET is
uniform, q8-edges (1), q8-last8 (2), v4-edges (5), v4-last8 (6) or vq8-edges (7). See docs/planning.md.

examples:
  compactkv plan --model qwen3-14b --memory 24GiB --context 128K --weights q4_k_m
  compactkv plan --model ./model.gguf --memory auto --k q8_0 --v turbo4 --json plan.json
"""


def _env(name: str, default=None):
    return os.environ.get(f"COMPACTKV_{name}", default)


def _chunk(text: str) -> int | None:
    if text.lower() in ("none", "all", "0"):
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a token count or 'none', got {text!r}")
    return int(text)


def _cache_fp16_tokens() -> int:
    """Tokens per layer TurboQuantCache keeps in fp16 by default (sinks + recent window), 0 without the cache."""
    try:
        from compactkv.cache.config import CacheConfig
    except ImportError:
        return 0
    config = CacheConfig()
    return config.sink_tokens + config.residual_length


def _default_model() -> str | None:
    try:
        from compactkv.engine.model_files import default_gguf_path
    except ImportError:
        return None
    path = default_gguf_path()
    return str(path) if path else None


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="what fits in memory, at what context, with which KV kinds",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=_env("MODEL"), help="GGUF file, config.json / folder, or preset name "
                   "[$COMPACTKV_MODEL; default: the default model's GGUF]")
    p.add_argument("--memory", default=_env("MEMORY", "auto"), help="budget, e.g. 32GiB, 24GB, or auto (free GPU "
                   "memory, else MemAvailable) [$COMPACTKV_MEMORY; auto]")
    p.add_argument("--context", default=_env("CONTEXT", "131072"), help="tokens per sequence, e.g. 131072 or 128K "
                   "[$COMPACTKV_CONTEXT; 131072]")
    p.add_argument("--batch", type=int, default=_env("BATCH", "1"), help="sequences at once [$COMPACTKV_BATCH; 1]")
    p.add_argument("--k", default=_env("K", "turbo4"), help="K kind of the selected config [$COMPACTKV_K; turbo4]")
    p.add_argument("--v", default=_env("V"), help="V kind of the selected config [$COMPACTKV_V; = --k]")
    p.add_argument("--policy", default=_env("POLICY"), help="per-layer preset for the selected config, e.g. "
                   "q8-edges or 1 [$COMPACTKV_POLICY]")
    p.add_argument("--configs", default=_env("PLAN_CONFIGS"), help="comma-separated configs to compare instead of "
                   "the default list [$COMPACTKV_PLAN_CONFIGS]")
    p.add_argument("--weights", default=_env("WEIGHTS"), help="weights size: file (exact, default when known), a "
                   "dtype or GGUF type (bf16, f32, q8_0, q4_k_m, ...), or a size like 18GiB [$COMPACTKV_WEIGHTS]")
    p.add_argument("--device", choices=("cpu", "cuda"), default=_env("DEVICE"), help="overhead model to use "
                   "[$COMPACTKV_DEVICE; the device --memory auto found, else cpu]")
    p.add_argument("--prefill-chunk", type=_chunk, default=-1, help="tokens per prefill forward, or none for the "
                   "whole prompt at once [the calibration's: 512]")
    p.add_argument("--fp16-tokens", type=int, default=_env("FP16_TOKENS"), help="tokens per layer the cache keeps "
                   "uncompressed (sinks + recent window) [$COMPACTKV_FP16_TOKENS; TurboQuantCache's default]")
    p.add_argument("--calibration", default=_env("PLAN_CALIBRATION"), help="overhead calibration JSON "
                   "(written by `compactkv bench ceiling`) [$COMPACTKV_PLAN_CALIBRATION]")
    p.add_argument("--ranking", default=_env("PLAN_RANKING"), help="quality ranking JSON [$COMPACTKV_PLAN_RANKING; "
                   "the shipped compactkv/plan/quality_ranking.json]")
    p.add_argument("--json", metavar="PATH", help="also write the plan as JSON to PATH")
    p.set_defaults(func=run)


def run(args) -> int:
    from compactkv.plan import PlanSettings, build_plan
    from compactkv.plan.report import print_plan, write_json

    model = args.model or _default_model()
    if not model:
        raise ValueError("no --model given and the default model is not downloaded; pass --model PATH_OR_PRESET")
    configs = tuple(c for c in args.configs.split(",") if c.strip()) if args.configs else None
    settings = PlanSettings(model=model, memory=args.memory, context=args.context, k=args.k, v=args.v,
                            policy=args.policy, configs=configs, batch=args.batch, weights=args.weights,
                            device=args.device, calibration=args.calibration, prefill_chunk=args.prefill_chunk,
                            fp16_tokens=_cache_fp16_tokens() if args.fp16_tokens is None else args.fp16_tokens,
                            ranking=args.ranking)
    plan, chosen = build_plan(settings)
    print_plan(plan, selected=chosen.name)
    if args.json:
        write_json(plan, args.json)
    return 0
