"""`compactkv bench ppl` with another rotation seed and/or the key norm unbiasing switched (issue 4): how much
the figures move with the seed, next to the effect of a change.

    python scripts/seed_spread.py --seed 1 --unbiased-keys 0 -- --chunks 16 --kv f16,turbo4,turbo3 --json out.json

Everything after `--` goes to the ppl bench. Sets one torch thread (two of these run side by side on 2 cores).
"""

from __future__ import annotations

import argparse
import sys

import torch


def main() -> None:
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="TurboQuantLayer rotation seed (default 0)")
    p.add_argument("--unbiased-keys", type=int, choices=(0, 1), default=1, help="CacheConfig.unbiased_keys")
    args = p.parse_args(own)
    torch.set_num_threads(1)

    from compactkv.bench import ppl
    from compactkv.cache import layer as layer_mod

    init = layer_mod.TurboQuantLayer.__init__

    def __init__(self, *a, **k):
        k["seed"], k["unbiased_keys"] = args.seed, bool(args.unbiased_keys)
        init(self, *a, **k)

    layer_mod.TurboQuantLayer.__init__ = __init__
    print(f"seed {args.seed}, unbiased_keys {bool(args.unbiased_keys)}")
    ppl.run_argv(rest)


if __name__ == "__main__":
    main()
