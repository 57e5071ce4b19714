"""`compactkv bench session`: a multi-turn coding conversation run with f16 and one KV config, turn by turn.

User turns cycle generate -> debug -> refactor -> test -> extend over ten small tasks (50 turns). Each run keeps
its own history in one cache (every token stored compressed for the config), replies are greedy. Reported per turn:
token agreement with the f16 reply, repeated-4-gram fraction of both replies; and the first turn where they differ.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from .common import (add_model_args, agreement, chat_format, greedy, load, make_cache, parse_kv_list, repetition,
                     stop_ids, table, write_json)

TASKS = ["reverse a string", "check if a number is prime", "count words in a sentence", "compute a factorial",
         "find the largest item in a list", "remove duplicates from a list", "convert Celsius to Fahrenheit",
         "check if a word is a palindrome", "sum the digits of a number", "merge two sorted lists"]
STEPS = ["Write a Python function to {task}.",
         "There is a bug: it fails on empty input. Fix the function to {task} for that case.",
         "Refactor the function to {task} so it is shorter and has a docstring.",
         "Write two pytest tests for the function to {task}.",
         "Extend the function to {task} so it also accepts a list of inputs."]


def user_turns(n: int = 50) -> list[str]:
    """The first n user messages of the scripted conversation (5 steps per task, tasks cycling)."""
    if n < 1:
        raise ValueError(f"--turns must be >= 1, got {n}")
    return [STEPS[i % 5].format(task=TASKS[(i // 5) % len(TASKS)]) for i in range(n)]


def converse(model, tokenizer, config, turns: list[str], max_new: int, bar: bool = True) -> list[list[int]]:
    """Reply token ids per turn, the whole conversation in one cache of `config`."""
    user, end = chat_format(tokenizer)
    stops = stop_ids(tokenizer)
    end_ids = tokenizer.encode(end, add_special_tokens=False)
    cache = make_cache(model, config)
    replies, pending = [], []
    for msg in tqdm(turns, desc=f"session {config.name}", disable=not bar):
        ids = pending + tokenizer.encode(user.format(msg=msg), add_special_tokens=False)
        reply = greedy(model, torch.tensor(ids), cache, max_new, stops)
        replies.append(reply)
        # the last reply token was never fed: feed it with the turn's end on the next turn
        pending = [reply[-1]] + ([] if reply[-1] in stops else end_ids)
    return replies


def run_session(model, tokenizer, config, turns: int = 50, max_new: int = 32, bar: bool = True) -> list[dict]:
    """Per turn: user message, f16 and config replies (text), agreement, first differing token, repetition."""
    from compactkv.plan.kvconfig import parse_config

    msgs = user_turns(turns)
    ref = converse(model, tokenizer, parse_config("f16"), msgs, max_new, bar)
    got = converse(model, tokenizer, config, msgs, max_new, bar)
    out = []
    for i, (msg, a, b) in enumerate(zip(msgs, ref, got)):
        agree, first = agreement(a, b)
        out.append({"turn": i + 1, "user": msg, "f16": tokenizer.decode(a), config.name: tokenizer.decode(b),
                    "agree": agree, "first_diff": first, "rep_f16": repetition(a), "rep": repetition(b)})
    return out


def write_transcript(turns: list[dict], name: str, path: Path) -> None:
    lines = []
    for t in turns:
        lines += [f"=== turn {t['turn']}: agreement {t['agree']:.0%}, first diff {t['first_diff']}",
                  f"USER: {t['user']}", "--- f16", t["f16"].strip(), f"--- {name}", t[name].strip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def register(subparsers) -> None:
    p = subparsers.add_parser("session", help="multi-turn coding conversation, f16 vs one KV config")
    p.add_argument("--kv", default="turbo4", help="the compressed config (one token)")
    p.add_argument("--turns", type=int, default=50, help="user turns (default 50)")
    p.add_argument("--max-new", type=int, default=32, help="tokens per reply at most (default 32)")
    p.add_argument("--transcripts", default="docs/transcripts", help="folder for the plain-text transcript")
    add_model_args(p)
    p.set_defaults(func=main)


def main(args) -> dict:
    configs = parse_kv_list(args.kv)
    if len(configs) != 2:
        raise ValueError(f"--kv takes one compressed config (f16 is the reference), got {args.kv!r}")
    config = configs[1]
    model, tokenizer, name = load(args.model, args.gguf_file, args.device)
    turns = run_session(model, tokenizer, config, args.turns, args.max_new)
    first = next((t["turn"] for t in turns if t["first_diff"] is not None), None)
    rows = [{"config": n, "agree": sum(t["agree"] for t in turns) / len(turns) if n != "f16" else 1.0,
             "rep": sum(t[k] for t in turns) / len(turns), "first": first if n != "f16" else None}
            for n, k in (("f16", "rep_f16"), (config.name, "rep"))]
    print(f"{name}, {args.turns} turns, <= {args.max_new} tokens per reply, greedy, every token stored compressed")
    print(table(rows, [("config", "config", "{}"), ("agree", "mean token agreement", "{:.1%}"),
                       ("rep", "repeated 4-grams", "{:.1%}"), ("first", "first differing turn", "{}")]))
    path = Path(args.transcripts) / f"session_{config.name.replace('/', '_').replace(':', '_')}.txt"
    write_transcript(turns, config.name, path)
    print(f"transcript: {path}")
    report = {"bench": "session", "model": name, "config": config.name, "turns": args.turns,
              "max_new": args.max_new, "first_differing_turn": first, "summary": rows, "per_turn": turns}
    write_json(args.json, report)
    return 0
