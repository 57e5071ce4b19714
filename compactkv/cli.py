"""The `compactkv` command: one entry point, subcommands registered by the modules in compactkv.commands.

Each module in COMMANDS exposes `register(subparsers)`, adding its own subparser whose `func(args)` runs it.
Flags read environment variables (COMPACTKV_*) as defaults: precedence is flag > env > config file > default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

COMMANDS = ("run", "serve", "plan", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compactkv", description="TurboQuant KV-cache compression for LLM inference")
    parser.add_argument("--version", action="version", version=f"compactkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"compactkv.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("compactkv.commands"):
                continue  # subcommand not built yet in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except ValueError as e:  # bad user input: one clear line, no traceback
        print(f"compactkv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
