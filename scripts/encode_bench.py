"""The encode table of `compactkv bench kernels` alone (both encode kernels vs the copy bandwidth of the same run),
without the decode and prefill parts: `python scripts/encode_bench.py --json PATH` on a CUDA GPU."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from compactkv.bench.kernels import HKV, copy_bandwidth, encode_bench  # noqa: E402
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
    for e in info["encode"]:
        print(f"encode {e['kind']} {e['kernel']:5s} block_rows {e['block_rows']:3d}: {e['us']:7.1f} us "
              f"{e['gbps']:6.0f} GB/s ({100 * e['gbps'] / info['copy_gbps']:.0f}% of copy)"
              f"{'' if e['same_bytes'] else '  BYTES DIFFER'}  ({e['tokens']} tokens x {HKV} heads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
