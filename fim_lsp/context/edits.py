"""Recently edited ranges, across documents, newest first (fed from `textDocument/didChange`).

A range is kept as lines of the document as it is now: a later edit above it shifts it, an edit
next to it joins it (typing a word is one range, not one per key), and the oldest range goes when
more than `max_ranges` are held. Paths are whatever the caller keys documents by."""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True)
class EditedRange:
    path: Hashable
    start_line: int  # 0-based
    end_line: int  # exclusive
    seq: int  # larger is newer


class EditTracker:
    def __init__(self, max_ranges: int = 16, join_lines: int = 3, max_range_lines: int = 24) -> None:
        self.max_ranges = max_ranges
        self.join_lines = join_lines  # edits this close to a held range join it
        self.max_range_lines = max_range_lines  # a range never grows past this by joining
        self._ranges: list[EditedRange] = []  # newest first
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def record(self, path: Hashable, start_line: int, end_line: int, new_text: str) -> None:
        """The lines `start_line`..`end_line` (both inclusive: an LSP range's start and end lines) were
        replaced by `new_text`."""
        added = new_text.count("\n")
        delta = added - (end_line - start_line)
        # the new text's lines; one that ends with a line break ends at the start of the next line,
        # which it leaves as it was
        lo, hi = start_line, start_line + added + (0 if added and new_text.endswith("\n") else 1)

        def moved(line: int) -> int | None:
            """Where a line of the old text is now; None inside the replaced span."""
            return line if line < start_line else line + delta if line > end_line else None

        with self._lock:
            kept: list[EditedRange] = []
            for r in self._ranges:
                if r.path != path:
                    kept.append(r)
                    continue
                first, last = moved(r.start_line), moved(r.end_line - 1)
                s = lo if first is None else first
                e = hi if last is None else last + 1
                if e <= s:
                    continue  # all its lines were replaced: the new range holds them
                joins = s <= hi + self.join_lines and e >= lo - self.join_lines
                if joins and max(e, hi) - min(s, lo) <= self.max_range_lines:
                    lo, hi = min(s, lo), max(e, hi)
                    continue  # joined into the new range
                if s < hi and e > lo:
                    continue  # overlaps, too big to join: the new edit's lines stand for it
                kept.append(EditedRange(r.path, s, e, r.seq))
            self._ranges = [EditedRange(path, lo, hi, next(self._seq)), *kept][: self.max_ranges]

    def record_full(self, path: Hashable, old_text: str, new_text: str) -> None:
        """A whole-document change (full sync): the changed lines are those between the common first
        and last lines of the two texts."""
        old, new = old_text.split("\n"), new_text.split("\n")
        first = 0
        while first < min(len(old), len(new)) and old[first] == new[first]:
            first += 1
        if first == len(old) == len(new):
            return
        tail = 0
        while tail < min(len(old), len(new)) - first and old[-1 - tail] == new[-1 - tail]:
            tail += 1
        # as an LSP edit: whole lines [first, len(old) - tail) replaced by the new lines
        self.record(path, first, len(old) - tail, "".join(line + "\n" for line in new[first:len(new) - tail]))

    def forget(self, path: Hashable) -> None:
        """The document was closed (or deleted): its ranges go."""
        with self._lock:
            self._ranges = [r for r in self._ranges if r.path != path]

    def recent(self) -> list[EditedRange]:
        """The held ranges, newest first."""
        with self._lock:
            return list(self._ranges)
