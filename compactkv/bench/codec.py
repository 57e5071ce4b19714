"""`compactkv bench codec`: encode/decode throughput of every KV kind (and, with --mode, quality and layout).

Speed mode times `Codec.encode` (float16 [n, d] -> uint8 rows) and `Codec.decode` (rows -> float16) over n
vectors in chunks, on the CPU and on CUDA when present. vectors/s counts head vectors; GB/s counts the bytes a
call must move: float16 input read + rows written for encode, rows read + float16 output written for decode.
`x q8_0` is the ratio to the q8_0 baseline timed in the same run. Mvec/CPU-s divides by the process CPU time
(all threads), which other load on the machine barely changes; the JSON records the 1-minute load average.
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch

from compactkv.core import KINDS, Codec

from .provenance import commit as tree_commit

MODES = ("speed", "quality", "layout")


def register(subparsers) -> None:
    p = subparsers.add_parser("codec", help="codec throughput per kind (vectors/s, GB/s); --mode quality|layout")
    p.add_argument("--mode", choices=MODES, default=os.environ.get("COMPACTKV_BENCH_MODE", "speed"),
                   help="speed: encode/decode throughput; quality: D_mse, D_prod and norm correction; "
                        "layout: bytes per vector table of docs/format.md (env COMPACTKV_BENCH_MODE)")
    p.add_argument("--n", type=int, default=os.environ.get("COMPACTKV_BENCH_N"),
                   help="vectors per kind (speed, default 1000000) or samples (quality, default 65536); "
                        "env COMPACTKV_BENCH_N")
    p.add_argument("--seed", type=int, default=0, help="seed of the random data (default 0)")
    p.add_argument("--head-dim", type=int, default=128, help="head_dim of the vectors (default 128)")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds (default: all)")
    p.add_argument("--chunk", type=int, default=65536, help="vectors per encode/decode call (default 65536)")
    p.add_argument("--device", default=os.environ.get("COMPACTKV_DEVICE", "auto"),
                   help="cpu, cuda or auto (= cpu, plus cuda when available; env COMPACTKV_DEVICE)")
    p.add_argument("--threads", type=int, default=os.environ.get("COMPACTKV_THREADS"),
                   help="torch intra-op CPU threads (default: torch's; env COMPACTKV_THREADS)")
    p.add_argument("--json", metavar="PATH", help="write the figures and the machine description as JSON")
    p.set_defaults(func=main)


def machine() -> dict:
    """CPU model, threads, torch version, GPU name if any, and the git commit, for every report."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = tree_commit()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work on the machine skews timings
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "gpu": gpu, "commit": commit, "load_average_1min": load}


def _devices(spec: str) -> list[str]:
    if spec == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if spec not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or auto, got {spec!r}")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return [spec]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_kind(kind: str, x: torch.Tensor, chunk: int, bar=None) -> dict:
    """Encode then decode x [n, d] float16 in chunks; seconds, vectors/s and GB/s of each direction."""
    n, d = x.shape
    device = x.device.type
    codec = Codec(kind, d)
    codec.decode(codec.encode(x[:chunk]), dtype=torch.float16)  # warm up: caches, outlier choice, allocator
    _sync(device)
    rows = torch.empty(n, codec.row_bytes, dtype=torch.uint8, device=x.device)
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, n, chunk):
        rows[i:i + chunk] = codec.encode(x[i:i + chunk], check_finite=False)
        if bar is not None:
            bar.update(min(chunk, n - i))
    _sync(device)
    t_enc, c_enc = time.perf_counter() - t0, time.process_time() - c0
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, n, chunk):
        codec.decode(rows[i:i + chunk], dtype=torch.float16)
        if bar is not None:
            bar.update(min(chunk, n - i))
    _sync(device)
    t_dec, c_dec = time.perf_counter() - t0, time.process_time() - c0
    moved = n * (2 * d + codec.row_bytes)
    return {"kind": kind, "device": device, "n": n, "head_dim": d, "row_bytes": codec.row_bytes,
            "bits_per_value": codec.bits_per_value,
            "encode_cpu_s": c_enc, "decode_cpu_s": c_dec,  # process CPU seconds, all threads
            "encode_s": t_enc, "encode_vectors_per_s": n / t_enc, "encode_gb_per_s": moved / t_enc / 1e9,
            "decode_s": t_dec, "decode_vectors_per_s": n / t_dec, "decode_gb_per_s": moved / t_dec / 1e9}


def speed(args) -> dict:
    from tqdm import tqdm

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        Codec(k, args.head_dim)  # fail fast on a bad kind or head_dim
    if args.n < 1 or args.chunk < 1:
        raise ValueError("--n and --chunk must be positive")
    devices = _devices(args.device)
    results = []
    with tqdm(total=2 * args.n * len(kinds) * len(devices), unit="vec", unit_scale=True, desc="codec") as bar:
        for device in devices:
            g = torch.Generator(device=device).manual_seed(args.seed)
            x = torch.randn(args.n, args.head_dim, generator=g, device=device, dtype=torch.float16)
            for kind in kinds:
                bar.set_postfix_str(f"{device} {kind}")
                results.append(time_kind(kind, x, args.chunk, bar))
            del x
    for r in results:
        base = next((b for b in results if b["kind"] == "q8_0" and b["device"] == r["device"]), None)
        r["encode_vs_q8_0"] = base["encode_s"] / r["encode_s"] if base else None
        r["decode_vs_q8_0"] = base["decode_s"] / r["decode_s"] if base else None
    print(speed_table(results))
    return {"bench": "codec", "mode": "speed", "machine": machine(), "n": args.n, "head_dim": args.head_dim,
            "chunk": args.chunk, "results": results}


def speed_table(results: list[dict]) -> str:
    """Markdown table of speed results; Mvec/CPU-s divides by process CPU time (robust on a busy machine)."""
    lines = ["| device | kind | bytes/vec | bits/value | encode Mvec/s | encode GB/s | x q8_0 | encode Mvec/CPU-s "
             "| decode Mvec/s | decode GB/s | x q8_0 | decode Mvec/CPU-s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ratio = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in results:
        per_cpu = [r["n"] / r[f"{k}_cpu_s"] / 1e6 if r[f"{k}_cpu_s"] > 0 else float("nan") for k in ("encode", "decode")]
        lines.append(f"| {r['device']} | {r['kind']} | {r['row_bytes']} | {r['bits_per_value']:.3f} "
                     f"| {r['encode_vectors_per_s'] / 1e6:.3f} | {r['encode_gb_per_s']:.3f} | {ratio(r['encode_vs_q8_0'])} "
                     f"| {per_cpu[0]:.3f} | {r['decode_vectors_per_s'] / 1e6:.3f} | {r['decode_gb_per_s']:.3f} "
                     f"| {ratio(r['decode_vs_q8_0'])} | {per_cpu[1]:.3f} |")
    return "\n".join(lines)


def layout_table(dims: tuple[int, ...] = (64, 128, 256)) -> str:
    """Markdown table of bytes per stored vector for every kind (the one in docs/format.md)."""
    from compactkv.core.kinds import row_bytes

    head = "| kind | " + " | ".join(f"d={d} bytes" for d in dims) + " | " + \
        " | ".join(f"d={d} bits/value" for d in dims) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(dims))]
    for kind in KINDS:
        sizes = [row_bytes(kind, d) for d in dims]
        lines.append(f"| {kind} | " + " | ".join(str(s) for s in sizes) + " | "
                     + " | ".join(f"{8 * s / d:g}" for s, d in zip(sizes, dims)) + " |")
    return "\n".join(lines)


def main(args) -> int:
    if args.n is None:
        args.n = 65536 if args.mode == "quality" else 1_000_000
    args.n = int(args.n)
    if args.threads is not None:
        if int(args.threads) < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(int(args.threads))
    if args.mode == "layout":
        print(layout_table())
        report = None
    elif args.mode == "quality":
        from compactkv.bench.codec_quality import quality

        report = quality(args)
    else:
        report = speed(args)
    if args.json and report is not None:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0
