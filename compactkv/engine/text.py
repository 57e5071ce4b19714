"""Text at the edges of the engine: chat templates in, incremental detokenization and stop strings out."""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant", "tool")


def chat_prompt_ids(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` ([{'role', 'content'}]) through the tokenizer's chat template.

    Tokenizers without a template get a plain 'role: content' transcript, so any causal LM can chat.
    """
    for m in messages:
        if m.get("role") not in ROLES:
            raise ValueError(f"unknown message role {m.get('role')!r}; accepted: {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ValueError("message content must be a string")
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                            tokenize=True, return_dict=False)
        return [int(i) for i in ids]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text_prompt_ids(tokenizer, text + ("assistant: " if add_generation_prompt else ""))


def text_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a raw prompt, with the BOS token when the tokenizer adds one."""
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the generation config and the tokenizer."""
    ids: set[int] = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                   getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return frozenset(ids)


class TextStream:
    """Turns token ids into text deltas, holding back partial UTF-8 and anything that may start a stop string.

    `push(id)` returns the newly safe text; `stopped` becomes True once a stop string appears (the text is cut
    before it); `flush()` returns what was held back when generation ends for another reason.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _next_piece(self) -> str:
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        new_text = self._decode(self.ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def push(self, token_id: int) -> str:
        """Add one generated token; the text that is now safe to show."""
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        piece = self._next_piece()
        if not piece:
            return ""
        search_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += piece
        cut = min((i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = self.text[:cut]
            return self._emit(len(self.text))
        return self._emit(len(self.text) - self._held_back())

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out, self.emitted = self.text[self.emitted:upto], upto
        return out

    def flush(self) -> str:
        """Everything not yet emitted (call once generation has ended without a stop string)."""
        if not self.stopped:
            tail = self._decode(self.ids[self._prefix:])[len(self._decode(self.ids[self._prefix:self._read])):]
            self.text += tail.rstrip("\ufffd")
            self._prefix = self._read = len(self.ids)
        return self._emit(len(self.text))
