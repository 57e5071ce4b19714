"""`compactkv bench prompts`: ten practical prompts, greedy answers from f16 and each KV config, regex checks.

Each prompt has a regex the answer must match (case-insensitive). Reported per config: checks passed, token
agreement with the f16 answer and the first differing token. Every token is stored compressed (no fp16
windows): with the shipped 128-token window these short prompts would never leave fp16. Transcripts go to --transcripts as plain text.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from tqdm import tqdm

from .common import (add_model_args, agreement, chat_format, greedy, load, make_cache, parse_kv_list, stop_ids,
                     table, write_json)

PROMPTS = [
    ("factual recall", "What is the capital of France? Answer in one sentence.", r"paris"),
    ("code generation", "Write a Python function add(a, b) that returns the sum of a and b.", r"def\s+add\s*\("),
    ("multi-step reasoning", "Tom has 3 apples. He buys 2 more and then eats 1. How many apples does he have? "
     "Think step by step and give the final number.", r"\b4\b|four"),
    ("long-form writing", "Write a short paragraph about why the ocean is important.", r"ocean|sea|water"),
    ("summarization", "Summarize in one sentence: The city council met on Monday and voted to build a new "
     "public library downtown. Construction starts next spring and should take two years.", r"librar"),
    ("JSON tool call", 'Reply only with JSON calling the tool get_weather with argument city set to "Paris", '
     'like {"tool": "...", "arguments": {...}}.', r'\{.*"tool"\s*:\s*"get_weather"'),
    ("multi-turn memory", "My name is Alice and my favourite colour is green. What is my favourite colour?",
     r"green"),
    ("arithmetic", "What is 12 + 7? Reply with the number only.", r"\b19\b"),
    ("creative", "Write a two-line poem about the moon.", r"moon|night|sky|light"),
    ("instruction following", "Reply with exactly the word YES in capital letters and nothing else.", r"\bYES\b"),
]


def register(subparsers) -> None:
    p = subparsers.add_parser("prompts", help="ten practical prompts with regex checks, f16 vs KV configs")
    p.add_argument("--kv", default="turbo4,turbo3", help="comma-separated KV configs (f16 added)")
    p.add_argument("--max-new", type=int, default=64, help="tokens generated per answer (default 64)")
    p.add_argument("--transcripts", default="docs/transcripts", help="folder for the plain-text transcripts")
    add_model_args(p)
    p.set_defaults(func=main)


def run_prompts(model, tokenizer, configs, prompts=PROMPTS, max_new: int = 64, bar: bool = True) -> list[dict]:
    """Per prompt: outputs (text) and token ids per config, check results, agreement with f16."""
    user, _ = chat_format(tokenizer)
    stops = stop_ids(tokenizer)
    results = []
    for task, prompt, pattern in tqdm(prompts, desc="prompts", disable=not bar):
        ids = torch.tensor(tokenizer.encode(user.format(msg=prompt), add_special_tokens=False))
        toks = {c.name: greedy(model, ids, make_cache(model, c), max_new, stops)
                for c in configs}
        texts = {n: tokenizer.decode([t for t in ts if t not in stops]) for n, ts in toks.items()}
        checks = {n: bool(re.search(pattern, t, re.I | re.S)) for n, t in texts.items()}
        agree = {n: agreement(toks["f16"], ts) for n, ts in toks.items()}
        results.append({"task": task, "prompt": prompt, "check": pattern, "outputs": texts, "passed": checks,
                        "agreement": {n: a for n, (a, _) in agree.items()},
                        "first_diff": {n: f for n, (_, f) in agree.items()}})
    return results


def summary(results: list[dict]) -> list[dict]:
    names = list(results[0]["outputs"])
    return [{"config": n, "passed": sum(r["passed"][n] for r in results), "of": len(results),
             "agreement": sum(r["agreement"][n] for r in results) / len(results),
             "identical": sum(r["first_diff"][n] is None for r in results)} for n in names]


def write_transcript(results: list[dict], path: Path) -> None:
    lines = []
    for r in results:
        lines += [f"=== {r['task']} (check /{r['check']}/)", f"USER: {r['prompt']}", ""]
        for n, text in r["outputs"].items():
            mark = "PASS" if r["passed"][n] else "FAIL"
            lines += [f"--- {n} [{mark}, agreement with f16 {r['agreement'][n]:.0%}, first diff "
                      f"{r['first_diff'][n]}]", text.strip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(args) -> dict:
    configs = parse_kv_list(args.kv)
    model, tokenizer, name = load(args.model, args.gguf_file, args.device)
    results = run_prompts(model, tokenizer, configs, max_new=args.max_new)
    rows = summary(results)
    print(f"{name}, greedy, {args.max_new} new tokens max, every prompt and generated token stored compressed (residual_length=0; the first 4 sink tokens stay fp16, the cache default)")
    print(table(rows, [("config", "config", "{}"), ("passed", "checks passed", "{}"), ("of", "of", "{}"),
                       ("agreement", "token agreement", "{:.1%}"), ("identical", "identical answers", "{}")]))
    path = Path(args.transcripts) / "prompts.txt"
    write_transcript(results, path)
    print(f"transcript: {path}")
    report = {"bench": "prompts", "model": name, "max_new": args.max_new, "summary": rows, "results": results}
    write_json(args.json, report)
    return 0
