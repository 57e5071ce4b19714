"""One decode step and one encode launch for a profiler (ncu): the shapes of `compactkv bench kernels`.

    ncu --clock-control none --kernel-name regex:"decode_split|encode_mse" --launch-skip 3 --launch-count 2 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis python scripts/profile_decode.py [KIND] [BATCH] [CONTEXT] [KERNEL-JSON]

KERNEL-JSON: keyword options of the decode step (bench.kernels.decode_step), e.g. '{"gluon": true, "prefetch": 2}'
for the Gluon kernel over planar codes. Each step is its query map, kernel, split merge and inverse map launches.
"""

from __future__ import annotations

import json
import sys

import torch

from compactkv.attention.triton.encode import encode_rows
from compactkv.bench.kernels import HKV, HEAD_DIM, decode_step
from compactkv.core.codec import Codec


def main(argv: list[str]) -> int:
    kind = argv[0] if argv else "turbo4"
    b = int(argv[1]) if len(argv) > 1 else 8
    t = int(argv[2]) if len(argv) > 2 else 32768
    try:
        kernel = json.loads(argv[3]) if len(argv) > 3 else {}
    except json.JSONDecodeError as e:
        print(f"KERNEL-JSON must be a JSON object of decode_step options, e.g. '{{\"gluon\": true}}': {e}",
              file=sys.stderr)
        return 2
    if not isinstance(kernel, dict):
        print("KERNEL-JSON must be a JSON object, e.g. '{\"gluon\": true, \"lut\": true}'", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    step, _ = decode_step(kind, b, t, dev, **kernel)
    codec = Codec(kind, HEAD_DIM) if kind.startswith("turbo") else Codec("turbo4", HEAD_DIM)
    x = torch.randn(8, HKV, 8192, HEAD_DIM, device=dev, dtype=torch.float16)
    for _ in range(4):
        step()
        encode_rows(codec, x)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
