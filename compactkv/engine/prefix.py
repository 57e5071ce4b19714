"""Prefix reuse: an LRU of finished (compressed) caches keyed by the token ids they hold, within a byte budget.

A lookup finds the entry sharing the longest prefix with a new prompt and returns a private deep copy cropped to
that prefix, so the prompt's already compressed tokens are not computed again. At least one prompt token is always
left to prefill, because its logits pick the first new token.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from .caches import cache_memory


@dataclass(frozen=True)
class PrefixStats:
    entries: int
    kv_bytes: int
    fp16_bytes: int
    hits: int
    misses: int
    reused_tokens: int


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the common prefix of two 1-D id tensors."""
    m = min(a.numel(), b.numel())
    diff = (a[:m] != b[:m]).nonzero()
    return int(diff[0]) if diff.numel() else m


class PrefixStore:
    """Thread-safe LRU of caches; `budget_bytes=0` disables it. Entries shorter than `min_tokens` are not kept."""

    def __init__(self, budget_bytes: int, min_tokens: int = 8) -> None:
        if not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise ValueError(f"prefix cache budget must be a byte count >= 0, got {budget_bytes!r}")
        self.budget = budget_bytes
        self.min_tokens = max(1, min_tokens)
        self._entries: OrderedDict[int, tuple[torch.Tensor, Any, dict]] = OrderedDict()
        self._next = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._reused = 0

    def lookup(self, prompt_ids: list[int]) -> tuple[Any | None, int]:
        """(a private cache holding the first n prompt tokens, n), or (None, 0) when nothing useful is stored."""
        if not self.budget or len(prompt_ids) <= self.min_tokens:
            return None, 0
        query = torch.tensor(prompt_ids, dtype=torch.long)
        with self._lock:
            best, best_n = None, 0
            for key, (ids, _, _) in self._entries.items():
                n = common_prefix(ids, query)
                if n > best_n:
                    best, best_n = key, n
            best_n = min(best_n, len(prompt_ids) - 1)
            if best is None or best_n < self.min_tokens:
                self._misses += 1
                return None, 0
            self._entries.move_to_end(best)
            source = self._entries[best][1]
            self._hits += 1
            self._reused += best_n
        cache = copy.deepcopy(source)
        if cache.get_seq_length() > best_n:
            cache.crop(best_n)
        return cache, best_n

    def insert(self, ids: list[int], cache: Any) -> bool:
        """Keep `cache` (holding exactly `ids`), owned by the store from now on; False if it is not kept."""
        if not self.budget or len(ids) < self.min_tokens or cache.get_seq_length() != len(ids):
            return False
        mem = cache_memory(cache)
        if mem["kv_bytes"] > self.budget:
            return False
        key_ids = torch.tensor(ids, dtype=torch.long)
        with self._lock:
            for key in [k for k, (old, _, _) in self._entries.items()
                        if old.numel() <= key_ids.numel() and common_prefix(old, key_ids) == old.numel()]:
                del self._entries[key]  # superseded: the new entry holds all of it
            self._entries[self._next] = (key_ids, cache, mem)
            self._next += 1
            while self._bytes() > self.budget:
                self._entries.popitem(last=False)
        return True

    def _bytes(self) -> int:
        return sum(mem["kv_bytes"] for _, _, mem in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> PrefixStats:
        with self._lock:
            return PrefixStats(len(self._entries), self._bytes(),
                               sum(mem["fp16_bytes"] for _, _, mem in self._entries.values()),
                               self._hits, self._misses, self._reused)
