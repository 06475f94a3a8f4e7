"""LRU cache of engine answers, keyed by the exact (prefix, suffix) the models saw.

It also answers "typing through": when the new prefix is an old prefix plus characters that start a
shown completion, the rest of that completion is still the answer, and no model runs."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from ..engine.results import Candidate, Completion

ANCHOR = 256  # characters of prefix end compared for typing-through; the far context rarely matters


@dataclass
class CacheHit:
    completion: Completion  # candidates already shortened by the typed characters
    typed: str  # "" for an exact hit


class CompletionCache:
    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], Completion] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def resize(self, size: int) -> None:
        self.size = size
        while len(self._items) > max(size, 0):
            self._items.popitem(last=False)

    def put(self, prefix: str, suffix: str, completion: Completion) -> None:
        if self.size <= 0:
            return
        self._items[(prefix, suffix)] = completion
        self._items.move_to_end((prefix, suffix))
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get(self, prefix: str, suffix: str) -> CacheHit | None:
        exact = self._items.get((prefix, suffix))
        if exact is not None:
            self._items.move_to_end((prefix, suffix))
            return CacheHit(exact, "")
        # Newest first: the completion the user is looking at is the one most likely typed through.
        for (old_prefix, old_suffix), comp in reversed(self._items.items()):
            typed = typed_through(old_prefix, old_suffix, prefix, suffix)
            if typed is None:
                continue
            shortened = shorten(comp, typed)
            if shortened is not None:
                self._items.move_to_end((old_prefix, old_suffix))
                return CacheHit(shortened, typed)
        return None


def typed_through(old_prefix: str, old_suffix: str, prefix: str, suffix: str) -> str | None:
    """The characters typed since `old_prefix`, when the cursor only moved forward by typing."""
    if not old_prefix or suffix[:ANCHOR] != old_suffix[:ANCHOR]:
        return None
    anchor = old_prefix[-ANCHOR:]
    # The line budget may have dropped lines from the start of the prefix, so match on its end.
    at = prefix.rfind(anchor, max(0, len(prefix) - len(anchor) - 4096))
    if at < 0:
        return None
    typed = prefix[at + len(anchor):]
    return typed or None


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
                      notes=[*comp.notes, f"typed through {len(typed)} characters"])
