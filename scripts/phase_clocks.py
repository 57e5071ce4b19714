"""Where the finishing table kernel's one-token step spends its time, phase by phase (CUDA).

Each warp of each program stamps the global timer and its SM's clock at its start, after the prologue (query map,
table fill), after the loop and at its exit, and three times inside the finishing tail
(`gluon.attend_planes(clocks=...)`, kernels_lut `_stamp`; a build of its own, the default build has no stamps).
Printed per shape: the kernel's span, programs' start skew, and per-phase medians / maxima in us, with the last
program of each group (which merges the group) apart from the others, and the tail split into its steps; then
where the loop's imbalance lies: the spread of a program's warps' loop ends (warp_spread: the earliest warp's
wait at the program's first barrier) and each program's last loop end from the kernel's first start
(program_loop_end), and whether the same SMs end their loop late launch after launch (sm_lateness: each
program's SM id is stamped too).

    python scripts/phase_clocks.py [--shapes 1x131072,1x32768,8x32768] [--kinds turbo4] [--reps 20] [--json PATH]

One layer at Llama-3.1-8B shapes (32 query heads, 8 KV heads, head_dim 128), random codes, the static cache's
default build (compactkv.bench.kernels.decode_step with gluon=True). The stamps add a few instructions (sm_90: the
loop 747 instead of 746 per tile); the step's own time is printed next to them from CUDA events without stamps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def summarize(clk, n_prog: int) -> dict:
    """clk: int64 [programs, 6, 7 or 10, W] (rows bh * n_prog + pid) as the kernel fills it (the 7th: SM ids, unused
    here; 8th-10th: stamps inside the finishing tail) -> microseconds per phase. With the tail's stamps the tail is
    split: tail_wait (a warp's loop end to its program's first barrier: the program's other warps), tail_merge
    (the program's warps merged through shared memory, its partial stored and fenced, the group's counter), and for
    each group's finishing program (the one that stamped phase 9: clk must be zeroed before the launch)
    final_merge (the group's partials loaded and merged) and final_map (the V map, the output stored).

    SM clocks are converted with the ratio of global-timer nanoseconds to clocks over each program's warp 0 (start
    to exit), the median over programs. 'last' = per group, the program that exits last (it merged the group)."""
    import torch
    clk = torch.as_tensor(clk, dtype=torch.int64)
    if clk.dim() != 3 or clk.shape[1] not in (6, 7, 10) or clk.shape[0] % n_prog:
        raise ValueError(f"clk must be [programs (a multiple of {n_prog}), 6, 7 or 10, warps], got "
                         f"{list(clk.shape)}")
    gt0, gt1 = clk[:, 0, :].double(), clk[:, 5, :].double()
    c = clk[:, 1:5, :].double()
    cycles = c[:, 3, 0] - c[:, 0, 0]
    if bool((cycles <= 0).any()) or bool((gt1[:, 0] < gt0[:, 0]).any()) or bool((c.diff(dim=1) < 0).any()):
        raise ValueError("stamps out of order (a program's clocks must not decrease): not a filled clocks tensor?")
    ns_per_cycle = float(((gt1[:, 0] - gt0[:, 0]) / cycles).median())
    us = c.diff(dim=1) * ns_per_cycle / 1e3  # [P, 3, W]: prologue, loop, tail
    groups = clk.shape[0] // n_prog
    end = gt1[:, 0].reshape(groups, n_prog)
    last = torch.zeros(groups, n_prog, dtype=torch.bool)
    last[torch.arange(groups), end.argmax(dim=1)] = True
    last = last.reshape(-1)
    t0 = float(gt0.min())

    def stats(x) -> dict:
        x = x.reshape(-1)
        return {"median": float(x.median()), "max": float(x.max())} if x.numel() else {"median": None, "max": None}
    out = {"programs": int(clk.shape[0]), "warps": int(clk.shape[2]), "ns_per_cycle": ns_per_cycle,
           "span_us": (float(gt1.max()) - t0) / 1e3, "start_skew_us": stats((gt0[:, 0] - t0) / 1e3),
           "exit_us": stats((gt1[:, 0] - t0) / 1e3)}
    for i, name in enumerate(("prologue", "loop", "tail")):
        out[name + "_us"] = stats(us[:, i, :])
    out["tail_last_us"] = stats(us[last, 2, :])
    out["tail_others_us"] = stats(us[~last, 2, :])
    if clk.shape[1] == 10:  # the tail's stamps: after the first barrier, once the counter is known, (last) merged
        t7, t8, t9 = clk[:, 7, :].double(), clk[:, 8, :].double(), clk[:, 9, :].double()
        fin = clk[:, 9, 0] != 0  # the programs that merged their group (the others leave phase 9 as zeroed)
        if int(fin.sum()) != groups or bool((t7 < c[:, 2]).any()) or bool((t8 < t7).any()) \
                or bool((c[:, 3] < t8).any()) or bool((t9[fin] < t8[fin]).any()) or bool((c[fin, 3] < t9[fin]).any()):
            raise ValueError("tail stamps out of order, or not one finishing program per group: not a clocks "
                             "tensor zeroed before the launch and filled by it?")
        out["tail_wait_us"] = stats((t7 - c[:, 2]) * ns_per_cycle / 1e3)
        # a program's warps leave its first barrier together: the earliest one's wait there is their loop ends'
        # spread, read on one warp's clock (the spread of loop ends converted per warp, below, disagreed: 1.28 us
        # against waits <= 0.05 us on the H200, session 25)
        out["warp_spread_us"] = stats((t7 - c[:, 2]).max(dim=1).values * ns_per_cycle / 1e3)
        out["tail_merge_us"] = stats((t8 - t7) * ns_per_cycle / 1e3)
        out["final_merge_us"] = stats((t9[fin] - t8[fin]) * ns_per_cycle / 1e3)
        out["final_map_us"] = stats((c[fin, 3] - t9[fin]) * ns_per_cycle / 1e3)
    # where the loop's imbalance lies: between a program's warps, or between programs (SMs)
    # [P, W] ns on the global timer: each warp's own start timer plus its own clocks since (a program's warps' clock
    # readings need not agree: session 25 found them at the program's first barrier within 0.05 us of each other
    # while their loop ends read against warp 0's start clock spread 1.3 us)
    loop_end = gt0 + (c[:, 2, :] - c[:, 0, :]) * ns_per_cycle
    out.setdefault("warp_spread_us", stats((loop_end.max(dim=1).values - loop_end.min(dim=1).values) / 1e3))
    out["program_loop_end_us"] = stats((loop_end.max(dim=1).values - t0) / 1e3)
    return out


def loop_ends(clk):
    """clk: int64 [programs, 7 or 10, W] -> (SM id of each program, its last loop end in us after the launch's
    median one): how late each program's loop ended, on the global timer (`summarize`'s conversion)."""
    import torch
    clk = torch.as_tensor(clk, dtype=torch.int64)
    if clk.dim() != 3 or clk.shape[1] not in (7, 10):
        raise ValueError(f"clk must be [programs, 7 or 10, warps] (with SM ids), got {list(clk.shape)}")
    gt0, gt1, c = clk[:, 0, :].double(), clk[:, 5, :].double(), clk[:, 1:5, :].double()
    ns_per_cycle = float(((gt1[:, 0] - gt0[:, 0]) / (c[:, 3, 0] - c[:, 0, 0])).median())
    end = (gt0 + (c[:, 2, :] - c[:, 0, :]) * ns_per_cycle).max(dim=1).values  # (as `summarize`)
    return clk[:, 6, 0].tolist(), ((end - end.median()) / 1e3).tolist()


def sm_lateness(launches: list[tuple[list, list]]) -> dict:
    """`loop_ends` of several launches -> whether the same SMs end late every time: the spread of one launch's
    programs (median over launches of its latest program's lateness) next to the spread of each SM's mean
    lateness over the launches (its max, min and standard deviation, over SMs seen in every launch). Random
    lateness averages out (the SMs' means near 0, ~1/sqrt(launches) of a launch's spread); an SM that is slow
    every launch keeps its mean."""
    per_sm: dict = {}
    for sms, late in launches:
        for sm, x in zip(sms, late):
            per_sm.setdefault(int(sm), []).append(x)
    n = len(launches)
    means = {sm: statistics.fmean(xs) for sm, xs in per_sm.items() if len(xs) == n}
    if not means:
        return {"launches": n, "sms": 0}
    vals = list(means.values())
    return {"launches": n, "sms": len(means), "launch_latest_us": statistics.median(max(late) for _, late in launches),
            "sm_mean_max_us": max(vals), "sm_mean_min_us": min(vals),
            "sm_mean_std_us": statistics.pstdev(vals), "per_sm_mean_us": {str(k): v for k, v in sorted(means.items())}}


def _median_of(sums: list[dict]) -> dict:
    """summarize()'s results of several launches -> the median of each figure (None where a launch had none)."""
    def med(xs):
        xs = list(xs)
        return None if any(x is None for x in xs) else statistics.median(xs)
    return {k: ({q: med(x[k][q] for x in sums) for q in ("median", "max")} if isinstance(v, dict)
                else med(x[k] for x in sums)) for k, v in sums[0].items()}


def main(argv=None) -> int:
    import torch
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1x131072,1x32768,8x32768", help="BxT, comma-separated")
    ap.add_argument("--kinds", default="turbo4")
    ap.add_argument("--reps", type=int, default=20, help="stamped launches per shape (the medians are over them)")
    ap.add_argument("--options", default="{}",
                    help="JSON object of attend_planes keywords for both builds, e.g. "
                         "'{\"lut_pipe\": 3, \"lut_block_n\": 32}' (default: the default build)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    try:
        options = json.loads(args.options)
    except ValueError as e:
        ap.error(f"--options {args.options!r}: not JSON ({e})")
    if not isinstance(options, dict) or {"clocks", "num_splits"} & set(options):
        ap.error(f"--options {args.options!r}: a JSON object of attend_planes keywords other than clocks and "
                 "num_splits (the script sets those)")
    from compactkv.bench.kernels import parse_shapes
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(f"--shapes: {e}")
    kinds = args.kinds.split(",")
    if any(k not in ("turbo4", "turbo3", "turbo2") for k in kinds):
        ap.error(f"--kinds {args.kinds!r}: the finishing table kernel takes turbo4, turbo3 and turbo2")
    if args.reps < 1:
        ap.error(f"--reps {args.reps}: at least 1")
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    from compactkv.attention.triton.gluon import (LUT_WARPS, lut_clock_shape, lut_fused_build, lut_fused_maxnreg,
                                                  lut_splits)
    from compactkv.bench.kernels import HKV, commit, decode_step
    dev = torch.device("cuda")
    warps = options.get("lut_warps", LUT_WARPS)  # the build's (the splits, stamps and programs follow it)
    rows = []
    for b, t in shapes:
        for kind in kinds:
            bits = int(kind[-1])
            pipe = lut_fused_build(bits, options.get("lut_pipe"), options.get("lut_block_n"))[0]
            regs = options.get("lut_maxnreg", lut_fused_maxnreg(bits, pipe))
            ns = lut_splits(b * HKV, t, warps, dev, 128, pipe, regs, bits)
            ns = -(-ns // warps) * warps
            clk = torch.zeros(lut_clock_shape(b, HKV, ns, warps), dtype=torch.int64, device=dev)
            torch.manual_seed(0)  # the same rows and query for both builds: their outputs are compared
            plain, _ = decode_step(kind, b, t, dev, gluon=True, num_splits=ns, **options)
            torch.manual_seed(0)
            stamped, _ = decode_step(kind, b, t, dev, gluon=True, num_splits=ns, clocks=clk, **options)
            ref = plain().float()
            for _ in range(3):
                plain(), stamped()
            torch.cuda.synchronize()
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            times, sums, ends = [], [], []
            for _ in range(args.reps):
                ev[0].record()
                plain()
                ev[1].record()
                torch.cuda.synchronize()
                times.append(ev[0].elapsed_time(ev[1]) * 1e3)
                clk.zero_()  # (phase 9 is stamped by each group's finishing program only)
                stamped()
                torch.cuda.synchronize()
                sums.append(summarize(clk.cpu(), ns // warps))
                ends.append(loop_ends(clk.cpu()))
            same = torch.equal(stamped().float(), ref)
            row = {"batch": b, "context": t, "kind": kind, "num_splits": ns, "options": options,
                   "step_us_events": statistics.median(times), "same_output": same, **_median_of(sums),
                   "sm_lateness": sm_lateness(ends)}
            rows.append(row)
            print(f"{kind} B={b} T={t}: {row['programs']} programs x {row['warps']} warps; step "
                  f"{row['step_us_events']:.1f} us (events, unstamped), stamped span {row['span_us']:.1f} us, start "
                  f"skew median {row['start_skew_us']['median']:.2f} / max {row['start_skew_us']['max']:.2f} us, "
                  f"same output: {same}")
            for name in ("prologue", "loop", "tail", "tail_last", "tail_others", "tail_wait", "tail_merge",
                         "final_merge", "final_map", "warp_spread", "program_loop_end"):
                if name + "_us" not in row:
                    continue
                st = row[name + "_us"]
                if st["median"] is None:
                    print(f"    {name:12s} (no such program)")
                else:
                    print(f"    {name:12s} median {st['median']:7.2f} us   max {st['max']:7.2f} us", flush=True)
            late = row["sm_lateness"]
            if late["sms"]:
                print(f"    the latest program's loop end {late['launch_latest_us']:.2f} us after the median (a "
                      f"launch's); per SM over {late['launches']} launches: mean lateness max "
                      f"{late['sm_mean_max_us']:.2f} / min {late['sm_mean_min_us']:.2f} / std "
                      f"{late['sm_mean_std_us']:.2f} us ({late['sms']} SMs)", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"card": torch.cuda.get_device_name(dev), "commit": commit(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
