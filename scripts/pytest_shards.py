"""Run pytest test files as N shards in parallel (GPU tests are mostly Triton compile time, one CPU core each).

    python scripts/pytest_shards.py --shards 12 --timeout 480 --out OUT tests/test_a.py tests/test_b.py [-k EXPR]
    python scripts/pytest_shards.py --ids FILE ...   # node ids (one per line) from FILE as well
    python scripts/pytest_shards.py --wrap "scripts/triton_swap.py record OUT/rec.{shard}.json --" ...

Collects the node ids once, deals them round-robin into the shards (so the slow cases of one file spread out),
runs one pytest process per shard with a time limit, writes the shards' logs one after the other to
OUT/pytest_shards.txt and prints one line per shard and a total: passed / failed / skipped / errors, and how many node ids the shards cut
by their time limit did not reach (counted from pytest's -v result lines, which also name a cut shard's
failures; their ids go to
OUT/pytest_unreached.txt, for the next call's --ids). Exit status 1 if any test failed
or errored or any shard was cut, else 0 (and 1 when nothing was collected: an empty run does not pass).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time


def collect(files: list[str], expr: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:warnings", *files]
    if expr:
        cmd += ["-k", expr]
    run = subprocess.run(cmd, capture_output=True, text=True)
    ids = [ln.strip() for ln in run.stdout.splitlines() if "::" in ln and not ln.startswith(" ")]
    if run.returncode not in (0, 5):
        sys.exit(f"collection failed (exit {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    return ids


COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected)")
RESULT = re.compile(r"^(.+::.+?) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
STATES = {"PASSED": "passed", "XFAIL": "passed", "XPASS": "passed", "FAILED": "failed", "SKIPPED": "skipped",
          "ERROR": "error"}


def progress(text: str) -> tuple[dict[str, int], int, list[str]]:
    """What a cut shard's -v result lines say it ran: (passed / failed / skipped / error counts, node ids reached,
    "FAILED <id>" / "ERROR <id>" lines), so a shard cut by its time limit still names its failures."""
    got, nodes, bad = dict(passed=0, failed=0, skipped=0, error=0), set(), []
    for m in map(RESULT.match, text.splitlines()):
        if m:
            node, state = m.groups()
            got[STATES[state]] += 1
            nodes.add(node)
            if state in ("FAILED", "ERROR"):
                bad.append(f"{state} {node}")
    return got, len(nodes), bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="test files or node ids")
    ap.add_argument("--ids", help="a file of node ids, one per line")
    ap.add_argument("-k", dest="expr", default=None, help="pytest -k expression applied at collection")
    ap.add_argument("--shards", type=int, default=12)
    ap.add_argument("--timeout", type=float, default=480.0, help="seconds per shard")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--wrap", default="", help="a python program that runs each shard's pytest (its arguments, "
                    "split like a shell line, {shard} replaced by the shard's number; e.g. scripts/triton_swap.py)")
    args = ap.parse_args(argv)
    if args.shards < 1:
        ap.error("--shards must be at least 1")
    try:
        shlex.split(args.wrap)
    except ValueError as e:
        ap.error(f"--wrap {args.wrap!r}: {e} (a python program and its arguments, quoted as in a shell)")
    if args.ids:
        args.files += [ln.strip() for ln in open(args.ids) if ln.strip()]
    if not args.files:
        ap.error("no test files or node ids given")
    ids = collect(args.files, args.expr)
    if not ids:
        print("no tests collected", file=sys.stderr)
        return 1
    logs = os.path.join(args.out, "shard_logs")
    os.makedirs(logs, exist_ok=True)
    shards = [ids[i::args.shards] for i in range(args.shards)]
    procs = []
    start = time.time()
    for i, part in enumerate(s for s in shards if s):
        log = open(os.path.join(logs, f"pytest_shard_{i:02d}.txt"), "w")
        wrap = [w.replace("{shard}", f"{i:02d}") for w in shlex.split(args.wrap)]
        cmd = [sys.executable, *wrap, "-m", "pytest", "-v", "-p", "no:warnings", "-rfE", *part]
        procs.append((i, part, log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                      start_new_session=True)))
    total = dict(passed=0, failed=0, skipped=0, errors=0, cut=0)
    unreached = []
    bad = False
    for i, part, log, proc in procs:
        try:
            proc.wait(timeout=max(1.0, args.timeout - (time.time() - start)))
        except subprocess.TimeoutExpired:  # the shard's whole process group (tests may start subprocesses)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        text = open(log.name).read()
        # pytest's summary is its last line, unless a --wrap program writes after it: the last line with counts
        tail = next((ln for ln in reversed(text.splitlines()) if COUNTS.search(ln) and " in " in ln), "")
        got = {k.rstrip("s") if k.startswith("error") else k: int(n) for n, k in COUNTS.findall(tail)}
        finished = bool(got) and proc.returncode is not None and proc.returncode >= 0
        failures = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        if not finished:
            got, reached, failures = progress(text)
        for k in ("passed", "failed", "skipped"):
            total[k] += got.get(k, 0)
        total["errors"] += got.get("error", 0)
        if not finished:  # pytest runs a shard's ids in the order given: the tail it did not reach
            unreached += part[reached:]
            total["cut"] += len(part) - reached
        state = tail if finished else (f"cut by the time limit after {got['passed']} passed, {got['failed']} failed, "
                                       f"{got['skipped']} skipped of {len(part)}")
        print(f"shard {i:02d}: {state}")
        for ln in failures:
            print(f"   {ln}")
        bad |= bool(failures) or got.get("failed", 0) > 0 or not finished or proc.returncode not in (0, 5)
    with open(os.path.join(args.out, "pytest_shards.txt"), "w") as f:  # one file: fewer to copy back
        for i, part, log, proc in procs:
            f.write(f"==== shard {i:02d}: {len(part)} node ids\n" + open(log.name).read())
            os.remove(log.name)
    os.rmdir(logs)
    if unreached:  # ready for the next call's --ids
        with open(os.path.join(args.out, "pytest_unreached.txt"), "w") as f:
            f.write("\n".join(unreached) + "\n")
        print("not reached (OUT/pytest_unreached.txt):\n   " + "\n   ".join(unreached))
    print(f"total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped, "
          f"{total['errors']} errors; node ids in shards cut by the time limit: {total['cut']}; "
          f"{len(ids)} collected, {time.time() - start:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
