"""The encode row kernel over the same bytes as rows of 128, 64 and 32 values: how its speed depends on the row
length a thread handles (code size and registers per thread; docs/kernels.md, session 35).

    python scripts/encode_dims.py [--kinds turbo4,turbo3,turbo2] [--json PATH]

fp16 input of 8 x 8 heads x 1 M values (8192 tokens of 128, 16384 of 64, 32768 of 32), 64 and 128 rows per
program; each configuration's bytes checked against `Codec.encode` on two heads first. Needs a CUDA GPU."""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from compactkv.attention.triton.encode import encode_rows  # noqa: E402
from compactkv.bench.common import write_json  # noqa: E402
from compactkv.bench.kernels import copy_bandwidth  # noqa: E402
from compactkv.bench.provenance import commit  # noqa: E402
from compactkv.core.codec import Codec  # noqa: E402

HEAD_DIMS = (128, 64, 32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="turbo4,turbo3,turbo2", help="comma-separated turbo2/3/4 kinds")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in ("turbo2", "turbo3", "turbo4")]
    if bad or not kinds:
        raise SystemExit(f"--kinds takes turbo2, turbo3, turbo4 (comma-separated); got {args.kinds!r}")
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    import triton.testing as tt
    dev = torch.device("cuda")
    copy = copy_bandwidth(dev)
    print(f"card {torch.cuda.get_device_name(dev)}  copy {copy:.0f} GB/s  commit {commit()}")
    rows_out = []
    for kind in kinds:
        for d in HEAD_DIMS:
            t = 8192 * 128 // d
            x = torch.randn(8, 8, t, d, device=dev, dtype=torch.float16)
            codec = Codec(kind, d)
            ref = codec.encode(x[:1, :2].cpu().float())
            out = torch.empty(8, 8, t, codec.row_bytes, dtype=torch.uint8, device=dev)
            for rows in (64, 128):
                out.fill_(0xA5)
                encode_rows(codec, x, out, kernel="row", block_rows=rows)
                torch.cuda.synchronize()
                same = bool(torch.equal(out[:1, :2].cpu(), ref))
                ms = tt.do_bench(lambda: encode_rows(codec, x, out, kernel="row", block_rows=rows), warmup=25,
                                 rep=200, return_mode="median")
                moved = x.numel() * 2 + out.numel()
                r = dict(kind=kind, head_dim=d, tokens=t, block_rows=rows, us=ms * 1e3, gbps=moved / ms / 1e6,
                         pct_copy=100 * moved / ms / 1e6 / copy, same_bytes=same)
                rows_out.append(r)
                print(f"{kind} head_dim {d} ({t} tokens x 8 x 8) rows {rows}: {r['us']:.1f} us {r['gbps']:.0f} GB/s "
                      f"({r['pct_copy']:.0f}% of copy), bytes = Codec.encode: {same}", flush=True)
    info = {"card": torch.cuda.get_device_name(dev), "commit": commit(), "copy_gbps": copy, "rows": rows_out,
            "command": "python " + " ".join(sys.argv)}
    write_json(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
