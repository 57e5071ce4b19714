"""Run the kernels that another triton release compiles, on a machine that has only this one installed.

The device machine has triton 3.6 and cannot install another; the kernels also have to work with the current releases
(3.7-3.9). Three steps, each a command:

    python scripts/triton_swap.py record REC.json -- scripts/decode_sweep.py ...      # GPU, triton 3.6
    python scripts/triton_swap.py build DIR REC.json [REC2.json ...]                    # any machine, triton 3.9
    python scripts/triton_swap.py replay DIR [--summary S.json] -- -m pytest tests/...  # GPU, triton 3.6

`record` runs a Python program (a script path, or `-m module`) with `triton.compiler.compile` wrapped: each kernel
compile it asks for (the kernel, its signature, constexprs, specialization attributes and options) is written to
REC.json. `build` compiles every record for sm_90 with the triton that runs it and stores each cubin with the
metadata that the launch needs (a cubin already in DIR is kept: after a source change, build into a fresh DIR, as
the keys name the request, not the source). `replay` runs a program with this triton's compile wrapped again: each
kernel is compiled as usual (the launcher, the cache), then its cubin and launch metadata (shared memory, scratch
sizes) are replaced by the other release's, so the program launches the other release's machine code. Kernels without a build
run this triton's own code; the summary names them and the counts go to stderr when the program ends.
Constexpr values cross releases as data: numbers, strings, tuples, triton dtypes and Gluon layouts (dataclasses,
rebuilt from their fields by the other release's classes of the same name).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import hashlib
import importlib
import json
import os
import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# launch metadata taken from the other release's build (the rest, e.g. num_warps, must already agree)
SWAP_FIELDS = ("shared", "global_scratch_size", "global_scratch_align", "profile_scratch_size",
               "profile_scratch_align", "tmem_size")
AGREE_FIELDS = ("name", "num_warps", "num_ctas", "cluster_dims")


def encode_value(v):
    """A constexpr value as JSON data that another triton release can rebuild (decode_value)."""
    import triton.language as tl
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, tl.constexpr):
        return encode_value(v.value)
    if isinstance(v, tl.dtype):
        return {"__dtype__": v.name}
    if isinstance(v, (tuple, list)):
        return {"__seq__": type(v).__name__, "items": [encode_value(x) for x in v]}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        cls = type(v)
        fields = {f.name: encode_value(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        return {"__class__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise TypeError(f"constexpr value of type {type(v).__name__} cannot cross triton releases: {v!r}")


def decode_value(v):
    import triton.language as tl
    if isinstance(v, dict):
        if "__dtype__" in v:
            return tl.dtype(v["__dtype__"])
        if "__seq__" in v:
            items = [decode_value(x) for x in v["items"]]
            return items if v["__seq__"] == "list" else tuple(items)
        if "__class__" in v:
            mod, qual = v["__class__"].split(":")
            obj = importlib.import_module(mod)
            for part in qual.split("."):
                obj = getattr(obj, part)
            return obj(**{k: decode_value(x) for k, x in v["fields"].items()})
    return v


def describe(src, options: dict) -> dict:
    """The compile request as JSON data (this release's ASTSource and options)."""
    fn = src.fn
    return {"module": fn.fn.__module__, "name": fn.fn.__qualname__, "gluon": type(src).__name__ == "GluonASTSource",
            "signature": dict(src.signature),
            "constexprs": [[list(k), encode_value(v)] for k, v in sorted(src.constants.items())],
            "attrs": [[list(k), [list(a) for a in v]] for k, v in sorted(src.attrs.items())],
            "options": {k: encode_value(v) for k, v in sorted(options.items()) if _plain(v)}}


def _plain(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (tuple, list)) and all(_plain(x) for x in v))


def request_key(rec: dict) -> str:
    """Same request, same key: on the recording machine and at replay (both this release's describe())."""
    return hashlib.sha1(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:20]


def _wrap_compile(on_compile):
    import triton.compiler
    original = triton.compiler.compile

    def compile(src, target=None, options=None, _env_vars=None):  # noqa: A001 (triton's name)
        kernel = original(src, target=target, options=options, _env_vars=_env_vars)
        if hasattr(src, "fn") and getattr(src, "signature", None) is not None:
            on_compile(src, dict(options or {}), kernel)
        return kernel

    triton.compiler.compile = compile


def _run_program(argv: list[str]) -> None:
    if argv[0] == "-m":
        sys.argv = [argv[1]] + argv[2:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, str(Path(argv[0]).resolve().parent))
        runpy.run_path(argv[0], run_name="__main__")


def record(path: str, argv: list[str]) -> None:
    seen: dict[str, dict] = {}
    skipped: dict[str, str] = {}

    def on_compile(src, options, kernel):
        try:
            rec = describe(src, options)
        except TypeError as e:  # a constexpr that cannot cross releases: that kernel stays unrecorded, named
            skipped[kernel.name] = str(e)
            return
        seen.setdefault(request_key(rec), rec)

    def save():
        Path(path).write_text(json.dumps(seen, indent=1, sort_keys=True))
        print(f"triton_swap: {len(seen)} compile requests recorded in {path}"
              + "".join(f"; {k} not recorded: {v}" for k, v in skipped.items()), file=sys.stderr)

    atexit.register(save)
    _wrap_compile(on_compile)
    _run_program(argv)


def build_one(rec: dict):
    """Compile one recorded request with this triton for sm_90; returns the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDAOptions
    fn = importlib.import_module(rec["module"])
    for part in rec["name"].split("."):
        fn = getattr(fn, part)
    if rec["gluon"]:
        from triton.experimental.gluon._runtime import GluonASTSource as Source
    else:
        Source = triton.compiler.ASTSource
    constexprs = {tuple(k): decode_value(v) for k, v in rec["constexprs"]}
    # (triton 3.6's launcher also gives string constexprs "attributes" parsed from their text, e.g. divisibility
    # where an inline-asm string holds a "D"; 3.6 ignores them, 3.9 fails on them: the arguments are constexprs)
    attrs = {tuple(k): [tuple(a) for a in v] for k, v in rec["attrs"]
             if rec["signature"][fn.arg_names[k[0]]] != "constexpr"}
    src = Source(fn, dict(rec["signature"]), constexprs, attrs)
    known = {f.name for f in dataclasses.fields(CUDAOptions)}
    options = {k: decode_value(v) for k, v in rec["options"].items() if k in known}
    for k in ("num_warps", "num_ctas", "maxnreg", "num_stages"):
        if k in rec["options"] and k not in known:
            raise ValueError(f"option {k} of the recorded request is unknown to triton {triton.__version__}")
    # options that only make sense where they were recorded (paths, the other release's defaults) stay this one's
    for k in ("extern_libs", "backend_name", "arch", "ptx_version", "supported_fp8_dtypes",
              "deprecated_fp8_dot_operand_dtypes", "default_dot_input_precision", "allowed_dot_input_precisions",
              "instrumentation_mode"):
        options.pop(k, None)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def build(paths: list[str], out: str, only: str | None, jobs: int, ptxas=None) -> int:
    import triton
    recs = {}
    for path in paths:
        recs.update(json.loads(Path(path).read_text()))
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    keys = [k for k, r in sorted(recs.items()) if only is None or only in r["name"]]
    todo = [k for k in keys if not (outdir / f"{k}.cubin").exists()]
    print(f"triton {triton.__version__}: {len(keys)} requests, {len(keys) - len(todo)} already built", flush=True)
    failed = 0
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(jobs) as pool:
            for key, err in pool.imap_unordered(_build_key, [(k, recs[k], str(outdir), ptxas) for k in todo]):
                failed += err is not None
                print(f"{key} {recs[key]['name']}: {err or 'built'}", flush=True)
    else:
        for k in todo:
            _, err = _build_key((k, recs[k], str(outdir), ptxas))
            failed += err is not None
            print(f"{k} {recs[k]['name']}: {err or 'built'}", flush=True)
    return 1 if failed else 0


def assemble(ptx: str, ptxas: str, args: list[str], fp_fusion: bool = True, version: str | None = None) -> bytes:
    """ptx for sm_90a with another ptxas or other options (the rest as triton's make_cubin: -lineinfo, -v, no
    fused multiply-adds where the kernel asked for none); version: the PTX ISA version written in its header (an
    older ptxas refuses a newer number even where the code uses nothing newer)."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        if version:
            ptx = re.sub(r"^\.version \d+\.\d+", f".version {version}", ptx, count=1, flags=re.M)
        src.write_text(ptx)
        cmd = [ptxas, "-lineinfo", *([] if fp_fusion else ["--fmad=false"]), "-v", *args, "--gpu-name=sm_90a",
               str(src), "-o", str(dst)]
        subprocess.run(cmd, check=True, capture_output=True)
        return dst.read_bytes()


def _build_key(job):
    import triton
    key, rec, outdir, ptxas = job
    try:
        kernel = build_one(rec)
        cubin = kernel.asm["cubin"]
        if ptxas is not None:  # (path, arguments): this triton's PTX, assembled another way
            cubin = assemble(kernel.asm["ptx"], ptxas[0], ptxas[1], kernel.metadata.enable_fp_fusion, ptxas[2])
    except Exception as e:  # noqa: BLE001 (reported per request; the others still build)
        return key, f"FAILED {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    meta = {k: getattr(kernel.metadata, k) for k in SWAP_FIELDS + AGREE_FIELDS if hasattr(kernel.metadata, k)}
    meta = {k: _norm(v) for k, v in meta.items()}
    meta["triton"] = triton.__version__ + ("" if ptxas is None else f" PTX ({ptxas[2] or 'its'} ISA version), "
                                                                     f"{' '.join([ptxas[0], *ptxas[1]])}")
    meta["params"] = ptx_params(kernel.asm["ptx"])
    Path(outdir, f"{key}.json").write_text(json.dumps(meta, sort_keys=True))
    Path(outdir, f"{key}.cubin").write_bytes(cubin)
    return key, None


def ptx_params(ptx: str) -> list[str]:
    """The PTX types of a kernel's parameters, in order (what its launcher passes)."""
    m = re.search(r"\.entry\s+[\w$]+\s*\((.*?)\)", ptx, re.S)
    if m is None:
        raise ValueError("no .entry in the PTX")
    return [p.split()[1] for p in m.group(1).split(",") if p.strip()]


def swap_into(kernel, cubin: bytes, meta: dict) -> None:
    """Make a compiled (not yet loaded) kernel of this release launch `cubin` with `meta`'s launch metadata."""
    from triton.compiler.compiler import make_backend
    if kernel.module is not None:
        raise RuntimeError(f"{kernel.name} is already loaded; the swap must happen before its first launch")
    here = ptx_params(kernel.asm["ptx"])
    if here != meta["params"]:
        raise RuntimeError(f"{kernel.name}: parameters {here} here, {meta['params']} in the other build")
    md = kernel.metadata
    for k in AGREE_FIELDS:
        if k in meta and hasattr(md, k) and _norm(getattr(md, k)) != _norm(meta[k]):
            raise RuntimeError(f"{kernel.name}: {k} is {getattr(md, k)!r} here and {meta[k]!r} in the other build")
    md = md._replace(**{k: meta[k] for k in SWAP_FIELDS if k in meta and k in md._fields})
    kernel.metadata = md
    kernel.packed_metadata = make_backend(md.target).pack_metadata(md)
    kernel.kernel = cubin
    kernel.asm["cubin"] = cubin


def _norm(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def replay(builds: str, argv: list[str], summary: str | None) -> None:
    import triton
    state = {"swapped": {}, "missing": {}, "triton": triton.__version__, "builds": builds}

    def on_compile(src, options, kernel):
        try:
            rec = describe(src, options)
        except TypeError as e:
            state["missing"][kernel.name] = f"{kernel.name} ({e})"
            return
        key = request_key(rec)
        cubin, meta = Path(builds, f"{key}.cubin"), Path(builds, f"{key}.json")
        if not cubin.exists():
            state["missing"][key] = rec["name"]
            return
        meta = json.loads(meta.read_text())
        swap_into(kernel, cubin.read_bytes(), meta)
        state["swapped"][key] = f"{rec['name']} (triton {meta['triton']})"

    def save():
        n, m = len(state["swapped"]), len(state["missing"])
        names = sorted(set(state["missing"].values()))
        print(f"triton_swap: {n} kernels ran another release's build, {m} this release's own"
              + (f" ({', '.join(names)})" if names else ""), file=sys.stderr)
        if summary:
            Path(summary).write_text(json.dumps(state, indent=1, sort_keys=True))

    atexit.register(save)
    _wrap_compile(on_compile)
    _run_program(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run a program, record its kernel compiles")
    r.add_argument("rec")
    b = sub.add_parser("build", help="compile the records with this triton for sm_90")
    b.add_argument("out")
    b.add_argument("rec", nargs="+")
    b.add_argument("--only", help="only the kernels whose name contains this")
    b.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    b.add_argument("--ptxas", help="assemble this triton's PTX with this ptxas instead of triton's own step")
    b.add_argument("--ptxas-args", default="", help="with --ptxas: its options besides -lineinfo, -v, --fmad and "
                   "--gpu-name (e.g. --regAllocOptLevel=2, which triton 3.7-3.9 pass)")
    b.add_argument("--ptx-version", help="with --ptxas: write this PTX ISA version in the header (e.g. 8.7 for "
                   "the ptxas of CUDA 12.8, which triton 3.6 carries)")
    p = sub.add_parser("replay", help="run a program with the other release's builds swapped in")
    p.add_argument("builds")
    p.add_argument("--summary", help="JSON: which kernels ran which build")
    args = ap.parse_args(argv)
    if args.cmd in ("record", "replay") and (not rest or rest == ["-m"]):
        ap.error(f"{args.cmd}: name the program after --: a script path or -m module, and its arguments")
    if args.cmd == "record":
        record(args.rec, rest)
    elif args.cmd == "build":
        import shlex
        missing = [r for r in args.rec if not Path(r).is_file()]
        if missing:
            ap.error(f"no such record file: {', '.join(missing)} (REC.json files written by `record`)")
        if args.jobs < 1:
            ap.error(f"--jobs must be at least 1, not {args.jobs}")
        if (args.ptxas_args or args.ptx_version) and not args.ptxas:
            ap.error("--ptxas-args and --ptx-version go with --ptxas (the assembler they are for)")
        if args.ptxas and not os.access(args.ptxas, os.X_OK):
            ap.error(f"--ptxas {args.ptxas}: not an executable file")
        try:
            ptxas = (args.ptxas, shlex.split(args.ptxas_args), args.ptx_version) if args.ptxas else None
        except ValueError as e:
            ap.error(f"--ptxas-args {args.ptxas_args!r}: {e}")
        return build(args.rec, args.out, args.only, args.jobs, ptxas)
    else:
        if not any(Path(args.builds).glob("*.cubin")):
            ap.error(f"{args.builds} holds no builds (*.cubin from `build`): nothing would be swapped")
        replay(args.builds, rest, args.summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
