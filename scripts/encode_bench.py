"""The encode table of `compactkv bench kernels` alone (both encode kernels vs the copy bandwidth of the same run),
without the decode and prefill parts: `python scripts/encode_bench.py --json PATH [--warm N]` on a CUDA GPU.

--warm N compiles every configuration of the table first, in N processes at once (Triton's disk cache then
serves the timed run; the row kernel compiles for seconds per configuration on one core)."""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from compactkv.bench.kernels import copy_bandwidth, encode_bench, encode_lines  # noqa: E402
from compactkv.bench.common import write_json  # noqa: E402
from compactkv.bench.provenance import commit  # noqa: E402


def _compile_one(job: tuple[str, str, int]) -> str:
    """Run (so compile) one configuration of the table on a small input with the bench's specialization."""
    from compactkv.attention.triton.encode import encode_rows
    from compactkv.bench.kernels import HEAD_DIM, HKV
    from compactkv.core.codec import Codec
    kind, kernel, rows = job
    x = torch.randn(8, HKV, 64, HEAD_DIM, device="cuda", dtype=torch.float16)
    encode_rows(Codec(kind, HEAD_DIM), x, block_rows=rows, kernel=kernel)
    torch.cuda.synchronize()
    return f"{kind} {kernel} {rows}"


def warm(processes: int) -> None:
    import multiprocessing as mp
    from compactkv.bench.kernels import ENCODE_CONFIGS, ENCODE_KINDS
    jobs = [(kind, kernel, rows) for kind in ENCODE_KINDS for kernel, rows in ENCODE_CONFIGS]
    with mp.get_context("spawn").Pool(processes) as pool:
        for done in pool.imap_unordered(_compile_one, jobs):
            print(f"compiled {done}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--warm", type=int, default=0, help="compile every configuration first in this many processes")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    if args.warm > 0:
        warm(args.warm)
    dev = torch.device("cuda")
    info = {"card": torch.cuda.get_device_name(dev), "commit": commit(), "copy_gbps": copy_bandwidth(dev),
            "encode": encode_bench(dev)}
    print(f"card {info['card']}  copy {info['copy_gbps']:.0f} GB/s  commit {info['commit']}")
    print("\n".join(encode_lines(info)))
    info["command"] = "python " + " ".join(sys.argv)  # (write_json's default names the compactkv CLI)
    write_json(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
