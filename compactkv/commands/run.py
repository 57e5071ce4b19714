"""`compactkv run "prompt"`: chat with a model through the compressed cache, then report speed and KV bytes.

Flags default to COMPACTKV_* environment variables (flag > env > default). The answer streams to stdout; loading
messages and the closing report go to stderr, so `compactkv run ... > answer.txt` keeps only the answer.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..core.kinds import GRAPH_KINDS, KINDS, check_graph_kinds, parse_kind
from ..core.switches import env_switch


def env(name: str, default: str | None = None) -> str | None:
    """Default of a flag from $COMPACTKV_<NAME>, as text: argparse applies the flag's `type` to string defaults,
    so a bad value in the environment is reported like a bad flag."""
    return os.environ.get(f"COMPACTKV_{name}") or default


def kind_arg(text: str) -> str:
    try:
        return parse_kind(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make argparse report bad flags as a single 'compactkv VERB: error: ...' line, exit status 2."""
    def error(message: str):
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    parser.error = error
    return parser


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `run` and `serve`: which model, where, and which KV kinds."""
    p.add_argument("--model", default=env("MODEL"), help="local HF folder, GGUF file or hub id (default: SmolLM2-135M)")
    p.add_argument("--gguf-file", default=env("GGUF_FILE"), help="GGUF file name inside --model's folder or repo")
    p.add_argument("--k", type=kind_arg, default=env("K", "turbo4"), help=f"key kind: {', '.join(KINDS)}")
    p.add_argument("--v", type=kind_arg, default=env("V", "turbo4"), help="value kind (same choices)")
    p.add_argument("--policy", default=env("POLICY"),
                   help="per-layer policy: preset name or mode number, or an explicit list 'k:v,k:v,...'")
    p.add_argument("--device", default=env("DEVICE", "auto"), help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=env("DTYPE", "auto"), help="auto, float32, float16 or bfloat16")


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="generate an answer with the compressed KV cache and report its cost")
    one_line_errors(p)
    p.add_argument("prompt", help="the user message")
    add_model_flags(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=env("MAX_NEW_TOKENS", "256"))
    p.add_argument("--temperature", type=float, default=env("TEMPERATURE", "0"), help="0 means greedy")
    p.add_argument("--top-p", type=float, default=env("TOP_P", "1"))
    p.add_argument("--top-k", type=int, default=env("TOP_K", "0"))
    p.add_argument("--seed", type=int, default=env("SEED"))
    p.add_argument("--system", default=env("SYSTEM"), help="system message")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--graphs", action="store_const", const=True,
                   help="CUDA only: decode steps replayed from a CUDA graph over a static cache sized for this "
                        f"prompt + --max-new-tokens (K/V kinds {', '.join(GRAPH_KINDS)}, both f16 or both "
                        "compressed; no recent window, query-aware key scaling or policy; default: "
                        "COMPACTKV_GRAPHS, off)")
    p.add_argument("--compile", action="store_const", const=True,
                   help="with --graphs: the model's own code through torch.compile in the captured step (the first "
                        "decode step compiles, tens of seconds for an 8B model; attention and cache writes stay "
                        "compactkv's kernels; default: COMPACTKV_COMPILE, off)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..engine import Generation, ModelSpec, SamplingConfig, cache_backend, load_model, make_cache
    from ..engine.caches import parse_policy
    from ..engine.generate import stream_generate
    from ..engine.graphs import engine_static_cache
    from ..engine.text import chat_prompt_ids, text_prompt_ids

    policy = parse_policy(args.policy)
    if args.graphs is None:
        args.graphs = env_switch("GRAPHS")
    if args.compile is None:
        args.compile = env_switch("COMPILE")
    if args.compile and not args.graphs:
        raise ValueError("--compile (COMPACTKV_COMPILE) compiles the graphed decode step: add --graphs")
    if args.graphs:
        check_graph_kinds(args.k, args.v, policy, flag="--graphs")  # before the model loads
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, seed=args.seed)
    spec = ModelSpec(args.model, args.gguf_file, args.device, args.dtype)
    lm = load_model(spec)
    print(f"compactkv: loaded {lm.name} on {lm.device} in {lm.load_seconds:.1f} s", file=sys.stderr)
    if args.raw:
        ids = text_prompt_ids(lm.tokenizer, args.prompt)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        ids = chat_prompt_ids(lm.tokenizer, messages + [{"role": "user", "content": args.prompt}])
    max_context = getattr(lm.model.config, "max_position_embeddings", None)
    if args.graphs:
        new = min(args.max_new_tokens, (max_context or 1 << 62) - len(ids))
        cache = engine_static_cache(lm.model, args.k, args.v, len(ids) + max(new, 1))
    else:
        cache = make_cache(lm.model, args.k, args.v, policy)
    gen = Generation(lm, ids, sampling, cache, max_context=max_context, graphs=args.graphs, compile=args.compile)
    for event in stream_generate(gen):
        sys.stdout.write(event.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    backend = ("static, CUDA-graph" + (", compiled" if args.compile else "")) if args.graphs else cache_backend()
    print(report(gen, lm, args.k, args.v, policy, backend), file=sys.stderr)
    return 0


def report(gen, lm, k: str, v: str, policy, backend: str) -> str:
    """The closing summary: prompt and decode speed, KV bytes held vs fp16, compression ratios (overall, and of the
    compressed rows alone: the recent tokens stay in an fp16 window until they are compressed in blocks)."""
    t = gen.timings
    mem = gen.memory()
    held, fp16, comp, win = mem["kv_bytes"], mem["fp16_bytes"], mem["compressed_bytes"], mem["window_bytes"]
    comp16 = mem.get("compressed_fp16_bytes", 0)
    overall = f"{fp16 / held:.2f}x smaller, {100 * held / fp16:.1f}% of fp16" if held else "empty"
    rows = (f"compressed rows {comp / 1e6:.3f} MB vs {comp16 / 1e6:.3f} MB fp16 "
            f"({comp16 / comp:.2f}x, {100 * comp / comp16:.1f}%)" if comp and comp16 else "no compressed rows yet")
    kinds = f"K {k} / V {v}" + (f", policy {policy}" if policy else "")
    return "\n".join([
        f"--- {lm.name} on {lm.device}, {kinds}, {backend} cache, finish: {gen.finish_reason}",
        f"prompt  {t.prompt_tokens:6d} tok  {t.prompt_seconds:7.2f} s  {_rate(t.prompt_tokens, t.prompt_seconds)}",
        f"decode  {t.decode_steps:6d} tok  {t.decode_seconds:7.2f} s  {_rate(t.decode_steps, t.decode_seconds)}",
        f"KV cache {mem['tokens']} tok: {held / 1e6:.3f} MB held vs {fp16 / 1e6:.3f} MB fp16 ({overall})",
        f"         {rows}; fp16 window {win / 1e6:.3f} MB",
    ])


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.1f} tok/s" if seconds > 0 else "       - tok/s"
