"""`compactkv serve`: the OpenAI- and Ollama-compatible server on the compressed cache.

Settings come from flags > COMPACTKV_* environment > `--config profile.yaml` > defaults (see examples/profile.yaml).
On SIGTERM or Ctrl-C the engine stops taking requests, lets in-flight streams finish (cutting them after
`shutdown_timeout` seconds with finish_reason "length"), then the process exits.
"""

from __future__ import annotations

import argparse
import os

from ..core.kinds import GRAPH_KINDS
from .run import kind_arg, one_line_errors, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve OpenAI and Ollama APIs with the compressed KV cache")
    one_line_errors(p)
    p.add_argument("--config", default=os.environ.get("COMPACTKV_CONFIG"), help="YAML profile")
    p.add_argument("--model", help="local HF folder, GGUF file or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--gguf-file", dest="gguf_file", help="GGUF file name inside --model's folder or repo")
    p.add_argument("--alias", help="model name clients use (default: from the file name)")
    p.add_argument("--k", type=kind_arg, help="key kind (default turbo4)")
    p.add_argument("--v", type=kind_arg, help="value kind (default turbo4)")
    p.add_argument("--policy", help="per-layer policy: preset name or mode number, or 'k:v,k:v,...'")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", help="auto, float32, float16 or bfloat16")
    p.add_argument("--ctx-size", "--context-length", dest="context_length", type=positive_int,
                   help="context length in tokens (default 8192, capped by the model)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 11434)")
    p.add_argument("--api-key", dest="api_key", help="require 'Authorization: Bearer KEY' (all but /health)")
    p.add_argument("--parallel", type=positive_int, help="sequences decoded at once (default 8)")
    p.add_argument("--max-queue", dest="max_queue", type=int, help="requests allowed to wait (default 64)")
    p.add_argument("--prefill-chunk", dest="prefill_chunk", type=positive_int, help="prompt tokens per turn")
    p.add_argument("--prefix-cache-mb", dest="prefix_cache_mb", type=int,
                   help="budget of the prefix-reuse cache in MiB (0 disables it; default 256)")
    p.add_argument("--shutdown-timeout", dest="shutdown_timeout", type=float,
                   help="seconds in-flight requests get to finish on SIGTERM (default 30)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--graphs", action="store_const", const=True,
                   help="CUDA only: each sequence decodes from a CUDA graph over a static cache holding the whole "
                        f"context (K/V kinds {', '.join(GRAPH_KINDS)}, both f16 or both compressed; no fp16 "
                        "recent window, query-aware key scaling or policy)")
    p.add_argument("--compile", action="store_const", const=True,
                   help="with --graphs: the model's own code through torch.compile in each sequence's captured "
                        "step (compiled once, during the warm-up; default: COMPACTKV_COMPILE, off)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="run one short sequence after loading, before /health reports ready, so kernel compiles "
                        "(GPU) and first allocations do not land on the first request (default on)")
    p.add_argument("--log-level", default=os.environ.get("COMPACTKV_LOG_LEVEL", "info"),
                   choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace):
    """The ServerConfig for parsed flags (flag > env > profile > default)."""
    from ..server.config import FIELDS, build_config, load_profile

    profile = load_profile(args.config) if args.config else {}
    return build_config({name: getattr(args, name, None) for name in FIELDS}, os.environ, profile)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from ..server.app import create_app

    config = config_from_args(args)
    app = create_app(config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            scheduler = app.state.service.scheduler
            if scheduler is not None:
                scheduler.drain(config.shutdown_timeout)
            super().handle_exit(sig, frame)

    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=args.log_level,
                        timeout_graceful_shutdown=int(config.shutdown_timeout) + 5)
    server = Server(uv)
    graphs = (" (CUDA graphs, compiled)" if config.compile else " (CUDA graphs)") if config.graphs else ""
    print(f"compactkv: serving on http://{config.host}:{server.config.port} (OpenAI /v1, Ollama /api); "
          f"KV {config.k}/{config.v}{graphs}; the model loads in the background, /health says when it is ready",
          flush=True)
    server.run()
    return 0
