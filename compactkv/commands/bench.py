"""`compactkv bench NAME`: one subcommand per module in compactkv.bench listed in BENCHES.

Each bench module exposes `register(subparsers)`, adding its own parser whose `func(args)` runs it.
To add a benchmark, write compactkv/bench/NAME.py and add "NAME" here; names without a module are skipped.
"""

from __future__ import annotations

import importlib

BENCHES = ("codec", "decode", "kernels", "ceiling", "serve", "ppl", "niah", "fidelity", "prompts", "session", "e2e")


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark (prints a table; --json PATH writes the figures)")
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in BENCHES:
        try:
            module = importlib.import_module(f"compactkv.bench.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"compactkv.bench.{name}":
                continue  # benchmark not written yet in this checkout
            raise
        module.register(sub)
