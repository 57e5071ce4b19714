"""`compactkv bench ppl` with the static cache (what `run --graphs` / `serve --graphs` decode over) next to the
default cache: what its plain TurboQuant rows cost in quality.

    python scripts/static_quality.py --static turbo4,turbo3 -- --chunks 8 --kv f16,turbo4,turbo3 --json out.json

Everything after `--` goes to the ppl bench (its f16 row stays the reference). Each kind in --static adds a row
"static:KIND": the static cache `run --graphs` / `serve --graphs` decode over (`engine.graphs.static_cache`, the
chunk's length; on this CPU every token encoded with Codec.encode, the bytes the GPU encoder writes), fed and
scored exactly as the bench's other rows. The default cache's rows are as the bench runs them (its 4 fp16 sink
tokens, centered and scaled keys, no recent window).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from compactkv.plan.kvconfig import KVConfig


@dataclasses.dataclass(frozen=True)
class StaticConfig(KVConfig):
    """A bench config whose cache is the static one."""

    @property
    def name(self) -> str:
        return f"static:{super().name}"


def main() -> None:
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--static", default="turbo4", help="kinds for static-cache rows (turbo4, turbo3, turbo2)")
    p.add_argument("--scale-keys", choices=("default", "on", "off"), default="default",
                   help="the static cache's query-aware key scaling (default: engine.graphs.STATIC_SCALE_KEYS)")
    args = p.parse_args(own)

    from compactkv.bench import common, ppl
    from compactkv.engine.graphs import static_cache
    from compactkv.core.kinds import check_graph_kinds

    scale_keys = {"default": None, "on": True, "off": False}[args.scale_keys]
    statics = []
    for kind in args.static.split(","):
        check_graph_kinds(kind, kind, flag="--static")
        if kind == "f16":
            raise SystemExit("--static takes compressed kinds (the f16 row is the reference already)")
        statics.append(StaticConfig(kind, kind))
    parse, make = common.parse_kv_list, ppl.make_cache

    def parse_kv_list(text):
        return parse(text) + statics

    def make_cache(model, config, **options):
        if isinstance(config, StaticConfig):
            ctx = ppl_ctx[0]
            return static_cache(model, (config.k, config.v), 1, ctx, next(model.parameters()).device,
                                scale_keys=scale_keys)
        return make(model, config, **options)

    ppl_ctx = [None]
    ctx_arg = argparse.ArgumentParser(add_help=False)
    ctx_arg.add_argument("--ctx", type=int, default=1024)
    ppl_ctx[0] = ctx_arg.parse_known_args(rest)[0].ctx
    ppl.parse_kv_list, ppl.make_cache = parse_kv_list, make_cache
    from compactkv.bench.provenance import commit
    write = ppl.write_json

    def write_json(path, report):  # this script's command line and the tree it ran
        report.setdefault("command", "python " + " ".join(sys.argv))
        report.setdefault("commit", commit())
        write(path, report)
    ppl.write_json = write_json
    torch.manual_seed(0)
    ppl.run_argv(rest)


if __name__ == "__main__":
    main()
