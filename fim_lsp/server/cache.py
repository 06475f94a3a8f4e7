"""LRU cache of engine answers, keyed by the document and the exact (prefix, suffix) the models saw.

It also answers "typing through": in the same document, with the same suffix, when the new prefix is
the whole old prefix plus characters that start a shown completion, the rest of that completion is
still the answer, and no model runs."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from ..engine.results import Candidate, Completion

Key = tuple[str, str, str]  # (uri, prefix, suffix)


@dataclass
class CacheHit:
    completion: Completion  # candidates already shortened by the typed characters
    typed: str  # "" for an exact hit


class CompletionCache:
    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[Key, Completion] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def drop_others(self, uri: str) -> int:
        """Forget the answers of every document but `uri`; returns how many went. Another document's
        edit, close or save changes what their project context would hold, while this document's own
        answers stay: its typing is what the cache serves (typing through)."""
        stale = [key for key in self._items if key[0] != uri]
        for key in stale:
            del self._items[key]
        return len(stale)

    def resize(self, size: int) -> None:
        self.size = size
        while len(self._items) > max(size, 0):
            self._items.popitem(last=False)

    def put(self, prefix: str, suffix: str, completion: Completion, uri: str = "") -> None:
        if self.size <= 0:
            return
        self._items[(uri, prefix, suffix)] = completion
        self._items.move_to_end((uri, prefix, suffix))
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get(self, prefix: str, suffix: str, uri: str = "") -> CacheHit | None:
        exact = self._items.get((uri, prefix, suffix))
        if exact is not None:
            self._items.move_to_end((uri, prefix, suffix))
            return CacheHit(exact, "")
        # Newest first: the completion the user is looking at is the one most likely typed through.
        for key, comp in reversed(self._items.items()):
            old_uri, old_prefix, old_suffix = key
            if old_uri != uri or old_suffix != suffix:
                continue
            typed = typed_through(old_prefix, prefix)
            shortened = shorten(comp, typed) if typed else None
            if shortened is not None:
                self._items.move_to_end(key)
                return CacheHit(shortened, typed)
        return None


def typed_through(old_prefix: str, prefix: str) -> str | None:
    """The characters typed since `old_prefix`: `prefix` is the whole old prefix plus them."""
    if prefix.startswith(old_prefix):
        return prefix[len(old_prefix):] or None
    # A full line budget slides as newlines are typed: the window keeps its line count and loses as
    # many whole lines from its start as the typed text holds.
    lines = old_prefix.count("\n")
    if lines != prefix.count("\n"):
        return None
    start = 0
    for _ in range(lines):
        start = old_prefix.index("\n", start) + 1
        if prefix.startswith(old_prefix[start:]):
            return prefix[len(old_prefix) - start:]
    return None


def shorten(comp: Completion, typed: str) -> Completion | None:
    """The candidates that begin with `typed`, minus it; the winner stays the winner when it matches,
    else the best-scored matching candidate takes its place."""
    cands: list[Candidate] = [replace(c, text=c.text[len(typed):]) for c in comp.candidates
                              if c.text.startswith(typed) and len(c.text) > len(typed)]
    if not cands:
        return None
    winner = next((c for c in cands if comp.winner and c.model == comp.winner.model
                   and c.hole_length == comp.winner.hole_length), None)
    winner = winner or min(cands, key=lambda c: c.perplexity)
    return Completion(candidates=cands, winner=winner, timings=dict(comp.timings),
                      notes=[*comp.notes, f"typed through {len(typed)} characters"],
                      qwen_prompt=comp.qwen_prompt, dllm_prompt=comp.dllm_prompt,  # what the models saw
                      prompt_tokens=dict(comp.prompt_tokens))
