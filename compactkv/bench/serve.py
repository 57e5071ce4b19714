"""`compactkv bench serve`: requests/s, time to first token and tokens/s at several client counts.

Without --url it starts `compactkv serve` once per KV kind (cold start timed: process start to /health 200) and
compares them in the same run; with --url it measures any OpenAI- or Ollama-compatible server (llama-server,
Ollama, another compactkv). Every request streams, so time to first token is measured by the client.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time

from .provenance import commit as tree_commit

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serving throughput and latency, f16 vs turbo4 or against --url")
    p.add_argument("--url", help="an already running server (default: start compactkv serve per kind)")
    p.add_argument("--api", choices=("openai", "ollama"), default="openai")
    p.add_argument("--model", help="model name to request (--url) or --model for the started servers")
    p.add_argument("--kinds", default="f16,turbo4", help="K=V kinds to compare when starting servers")
    p.add_argument("--clients", default="1,4,16", help="concurrent client counts")
    p.add_argument("--rounds", type=int, default=1, help="requests per client at each level")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, help="--threads for the started servers")
    p.add_argument("--turns", type=int, default=0,
                   help="also time a conversation of this many turns, with and without prefix reuse (OpenAI API)")
    p.add_argument("--json", help="write the figures to this path")
    p.set_defaults(func=main)


def _stream_once(url: str, api: str, model: str, max_tokens: int) -> dict:
    """One streamed request: seconds to first token, total seconds, tokens generated."""
    import httpx

    if api == "openai":
        path, body = "/v1/chat/completions", {"model": model, "stream": True, "max_tokens": max_tokens,
                                              "temperature": 0, "messages": [{"role": "user", "content": PROMPT}],
                                              "stream_options": {"include_usage": True}, "cache_prompt": False}
    else:
        path, body = "/api/chat", {"model": model, "messages": [{"role": "user", "content": PROMPT}],
                                   "options": {"num_predict": max_tokens, "temperature": 0}}
    start, first, tokens = time.perf_counter(), None, 0
    with httpx.stream("POST", url + path, json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if api == "openai":  # SSE: only `data:` lines carry chunks (others are comments, pings, event names)
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                line = line[6:]
            elif not line.strip():
                continue
            obj = json.loads(line)
            text = (obj.get("choices") or [{}])[0].get("delta", {}).get("content") if api == "openai" \
                else obj.get("message", {}).get("content")
            if text and first is None:
                first = time.perf_counter()
            tokens = (obj.get("usage") or {}).get("completion_tokens", tokens) if api == "openai" \
                else obj.get("eval_count", tokens)
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "seconds": end - start, "tokens": tokens}


def measure(url: str, api: str, model: str, clients: int, rounds: int, max_tokens: int) -> dict:
    """Run `clients` threads of `rounds` sequential requests each; aggregate figures."""
    results, errors = [], []

    def client():
        for _ in range(rounds):
            try:
                results.append(_stream_once(url, api, model, max_tokens))
            except Exception as e:  # counted and reported, the run goes on
                errors.append(repr(e))
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts = sorted(r["ttft"] for r in results) or [0.0]
    tokens = sum(r["tokens"] for r in results)
    per_stream = [r["tokens"] / (r["seconds"] - r["ttft"]) for r in results if r["seconds"] > r["ttft"]]
    if errors:
        print(f"  {len(errors)} failed requests, first: {errors[0]}", file=sys.stderr)
    return {"clients": clients, "requests": len(results), "errors": len(errors), "wall_s": wall,
            "requests_per_s": len(results) / wall, "ttft_mean_s": statistics.fmean(ttfts),
            "ttft_p90_s": ttfts[math.ceil(0.9 * len(ttfts)) - 1], "output_tokens_per_s": tokens / wall,
            "stream_tokens_per_s": statistics.fmean(per_stream) if per_stream else 0.0}


def conversation(url: str, model: str, turns: int, max_tokens: int, reuse: bool) -> list[dict]:
    """A growing chat, one user turn at a time: TTFT and reused tokens of each turn."""
    import httpx

    messages = [{"role": "system", "content": "You are a concise assistant. Answer in one sentence."}]
    out = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn + 1}: name one thing about the number {turn}."})
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "cache_prompt": reuse, "stream_options": {"include_usage": True}}
        start, first, text, usage, timings = time.perf_counter(), None, "", {}, {}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                obj = json.loads(line[6:])
                delta = (obj.get("choices") or [{}])[0].get("delta", {}).get("content")
                if delta:
                    first = first or time.perf_counter()
                    text += delta
                usage, timings = obj.get("usage") or usage, obj.get("timings") or timings
        messages.append({"role": "assistant", "content": text})
        out.append({"turn": turn + 1, "reuse": reuse, "prompt_tokens": usage.get("prompt_tokens"),
                    "cache_n": timings.get("cache_n"), "prompt_ms": timings.get("prompt_ms"),
                    "ttft_s": (first or time.perf_counter()) - start})
    return out


def start_server(kind: str, args) -> tuple[subprocess.Popen, str, float]:
    """Start `compactkv serve --k kind --v kind` on a free port; (process, url, cold start seconds)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "compactkv.cli", "serve", "--port", str(port), "--k", kind, "--v", kind,
           "--log-level", "warning"]
    cmd += ["--model", args.model] if args.model else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"compactkv serve --k {kind} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url, time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def main(args) -> int:
    import httpx

    levels = [int(c) for c in args.clients.split(",")]
    rows, meta = [], {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "python": platform.python_version(), "commit": tree_commit(), "loadavg_start": os.getloadavg(),
                      "max_tokens": args.max_tokens, "rounds": args.rounds, "api": args.api,
                      "server_threads": args.threads, "url": args.url}
    targets = [("external", args.url)] if args.url else [(kind, None) for kind in args.kinds.split(",")]
    for name, url in targets:
        proc, cold = None, None
        if url is None:
            proc, url, cold = start_server(name, args)
        try:
            model = args.model if args.url else httpx.get(url + "/v1/models").json()["data"][0]["id"]
            _stream_once(url, args.api, model, 2)  # warm-up, not counted
            for clients in levels:
                row = {"target": name, "cold_start_s": cold} | measure(url, args.api, model, clients, args.rounds,
                                                                       args.max_tokens)
                rows.append(row)
                print(f"{name:>9} clients {clients:3d}: {row['requests_per_s']:6.2f} req/s  TTFT mean "
                      f"{row['ttft_mean_s']:6.2f} s p90 {row['ttft_p90_s']:6.2f} s  {row['output_tokens_per_s']:7.1f} "
                      f"tok/s total  {row['stream_tokens_per_s']:6.1f} tok/s per stream  errors {row['errors']}",
                      flush=True)
            for reuse in (False, True) if args.turns else ():
                turns = conversation(url, model, args.turns, args.max_tokens, reuse)
                rows.extend({"target": name, "mode": "turns"} | t for t in turns)
                first, last = turns[0], turns[-1]
                print(f"{name:>9} {'with' if reuse else 'without'} prefix reuse: turn 1 TTFT {first['ttft_s']:.2f} s "
                      f"({first['prompt_tokens']} prompt tok), turn {last['turn']} TTFT {last['ttft_s']:.2f} s "
                      f"({last['prompt_tokens']} prompt tok, {last['cache_n']} reused)", flush=True)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(60)
        if cold is not None:
            print(f"{name:>9} cold start (process start to /health 200): {cold:.1f} s")
    meta["loadavg_end"] = os.getloadavg()
    print(f"{meta['cpus']} CPUs, load average {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}, "
          f"commit {meta['commit']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0
