"""Identifier sets and their Jaccard similarity: how close a piece of code is to the text at the cursor
(Copilot's measure for open tabs; llama.vim uses the same kind to evict near-duplicate chunks)."""
from __future__ import annotations

import re
from collections import OrderedDict

# two characters at least: one-letter names say little about a text
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")


def identifiers(text: str) -> frozenset[str]:
    """The distinct identifiers of a text, one-letter names left out."""
    return frozenset(IDENTIFIER.findall(text))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class WordCache:
    """identifiers() of recently seen texts, so a chunk that did not change since the last keystroke
    is not scanned again. Bounded: the least recently used texts go first."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._words: OrderedDict[str, frozenset[str]] = OrderedDict()

    def __call__(self, text: str) -> frozenset[str]:
        words = self._words.get(text)
        if words is None:
            words = identifiers(text)
            self._words[text] = words
            if len(self._words) > self.size:
                self._words.popitem(last=False)
        else:
            self._words.move_to_end(text)
        return words
