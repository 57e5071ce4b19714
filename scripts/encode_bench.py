"""The encode table of `compactkv bench kernels` alone (both encode kernels vs the copy bandwidth of the same run),
without the decode and prefill parts: `python scripts/encode_bench.py --json PATH` on a CUDA GPU."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from compactkv.bench.kernels import copy_bandwidth, encode_bench, encode_lines  # noqa: E402
from compactkv.bench.provenance import commit  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    dev = torch.device("cuda")
    info = {"card": torch.cuda.get_device_name(dev), "commit": commit(), "copy_gbps": copy_bandwidth(dev),
            "encode": encode_bench(dev)}
    print(f"card {info['card']}  copy {info['copy_gbps']:.0f} GB/s  commit {info['commit']}")
    print("\n".join(encode_lines(info)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
