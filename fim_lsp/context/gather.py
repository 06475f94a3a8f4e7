"""Gathering: the project context of one completion request, within a deadline.

Sources, each a list of candidate chunks with a relevance score:
- definitions (score 3-4): of the names near the cursor (nearest first), then of the names the file
  imports, from the workspace index; a name defined in the current file, or in more than
  MAX_SAME_NAME places, is skipped;
- recent edits (2-3): the edited ranges of open documents, newest first, outside the local window;
- open files and the current file beyond the local window (1-2): chunks ranked by the identifier
  Jaccard similarity to the lines around the cursor.
The most relevant candidates are kept, up to `context_max_chunks`; one that mostly overlaps a kept
chunk of the same file, or whose identifiers are more than NEAR_DUPLICATE alike to a kept one's, is
evicted (llama.vim's rule). The kept chunks come out in the order the gatherer first saw them: a new
chunk is appended, so the prompt's beginning stays the same from keystroke to keystroke.

Every path and every open document's text goes through `Privacy` first. What missed the deadline
(an open document not yet chunked) is picked up by the next request: the chunks and their
identifier sets are cached."""
from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Mapping

from ..engine.requests import ContextChunk, ProjectContext
from .definitions import WEAK_KINDS
from .edits import EditTracker
from .index import DefinitionIndex
from .privacy import Place, Privacy
from .settings import ContextSettings
from .similarity import WordCache, identifiers, jaccard

QUERY_BEFORE, QUERY_AFTER = 16, 8  # the cursor's text: the lines chunks are compared with
MAX_NAMES = 128  # names looked up per request
MAX_DEFINITIONS = 24  # definitions taken per request (eval/BENCHMARKS.md)
MAX_SAME_NAME = 4  # a name defined in more places than this is too ambiguous to guess
EDIT_PAD = 2  # lines kept around an edited range
NEAR_DUPLICATE = 0.9
MAX_LINE_CHARS = 300  # a chunk longer than chunk_lines lines of this is minified or generated
# import statements, a parenthesized or braced list over several lines included
IMPORT_LINES = re.compile(r"^[ \t]*(?:(?:from\b[^\n(]*\bimport|import|export)[ \t]*[({][^)}]*[)}]"
                          r"|(?:(?:import|from|using|use|package)\b|#include|export[ \t]+[{*]"
                          r"|(?:const|let|var)\b[^=\n]*=[ \t]*require[ \t]*\()[^\n]*)", re.M)


@dataclass(frozen=True)
class Cursor:
    path: Path  # the document's file
    text: str  # its text as the editor has it now
    line: int  # 0-based
    window: tuple[int, int] = (0, 0)  # lines [first, last) the local window already shows


@dataclass(frozen=True)
class _Candidate:
    key: Hashable
    place: Place
    start: int
    end: int
    text: str
    source: str
    score: float
    words: frozenset[str]


def _usable(chunk: str, lines: int) -> bool:
    """Not blank, and not minified or generated (lines far longer than code's)."""
    return bool(chunk.strip()) and len(chunk) <= lines * MAX_LINE_CHARS


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


class ContextGatherer:
    def __init__(self, privacy: Privacy, edits: EditTracker | None = None, index: DefinitionIndex | None = None,
                 settings: ContextSettings = ContextSettings()) -> None:
        self.privacy = privacy
        self.edits = edits
        self.index = index
        self.settings = settings
        self._words = WordCache()
        self._doc_chunks: dict[Path, tuple[str, list[tuple[int, int, str]]]] = {}
        self._order: dict[Hashable, int] = {}  # first-seen number of each chunk in the last answer
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def gather(self, cursor: Cursor, open_docs: Mapping[Path, str],
               deadline_ms: float | None = None) -> ProjectContext | None:
        """The context for a completion at `cursor`; `open_docs` are the editor's open documents (the
        cursor's among them or not). None when project context is off, or when the cursor's file is not
        one privacy allows: then the models see the local window alone."""
        s = self.settings
        if not s.project_context:
            return None
        place = self.privacy.place(cursor.path)
        if place is None or self.privacy.text_refusal(cursor.text) is not None:
            return None
        limit = s.context_deadline_ms if deadline_ms is None else deadline_ms
        stop = time.perf_counter() + limit / 1000
        lines = _lines(cursor.text)
        line = max(0, min(cursor.line, len(lines) - 1))
        query = identifiers("\n".join(lines[max(0, line - QUERY_BEFORE): line + QUERY_AFTER + 1]))
        with self._lock:
            found: list[_Candidate] = []
            sources = ((s.context_definitions and self.index is not None, self._definitions),
                       (s.context_edits and self.edits is not None, self._edited),
                       (s.context_open_files, self._open_files),
                       (s.context_same_file, self._same_file))
            for on, source in sources:
                if on:
                    found.extend(source(cursor, place, lines, line, query, open_docs, stop))
            chunks = self._in_order(self._choose(found))
        return ProjectContext(repo=place.root.name, path=place.relative, chunks=chunks)

    # -- sources -------------------------------------------------------------------------------

    def _definitions(self, cursor: Cursor, here: Place, lines: list[str], line: int, query: frozenset[str],
                     open_docs: Mapping[Path, str], stop: float) -> list[_Candidate]:
        """Up to MAX_DEFINITIONS definitions, of the names in `_names`' order. Where a name has
        functions, classes or types, its fields and variables are left out (`items: list` in a class
        says little where `def items()` is meant); a name still defined in more than MAX_SAME_NAME
        places is too ambiguous to guess."""
        assert self.index is not None
        out: list[_Candidate] = []
        rank = 0
        for name in self._names(cursor.text, lines, line):
            if len(out) >= MAX_DEFINITIONS:
                break
            found = self.index.lookup(name)
            strong = [item for item in found if item.definition.kind not in WEAK_KINDS]
            found = tuple(strong) or found
            if not found or len(found) > MAX_SAME_NAME:
                continue
            places = [self.privacy.place(item.path) for item in found]
            if here in places:
                continue  # the file defines it itself
            took = [(item.definition, where) for item, where in zip(found, places)
                    if where is not None]  # None: refused since it was indexed (an ignore rule changed)
            for d, where in took:
                end = d.start_line + d.text.count("\n") + 1
                out.append(self._candidate(("definition", where, d.start_line), where, d.start_line, end,
                                           d.text, "definition", 3.0 + 1.0 / (1 + rank)))
            rank += bool(took)
        return out

    def _names(self, text: str, lines: list[str], line: int) -> list[str]:
        """Identifiers by distance from the cursor's line, then those on the file's import lines."""
        order: dict[str, None] = {}
        for d in range(QUERY_BEFORE + 1):
            for i in ((line,) if d == 0 else (line - d, line + d) if d <= QUERY_AFTER else (line - d,)):
                if 0 <= i < len(lines):
                    order.update(dict.fromkeys(identifiers(lines[i]) - order.keys()))
        for match in IMPORT_LINES.finditer(text):
            order.update(dict.fromkeys(w for w in identifiers(match.group()) if w not in order))
        return list(order)[:MAX_NAMES]

    def _edited(self, cursor: Cursor, here: Place, lines: list[str], line: int, query: frozenset[str],
                open_docs: Mapping[Path, str], stop: float) -> list[_Candidate]:
        assert self.edits is not None
        out: list[_Candidate] = []
        for age, r in enumerate(self.edits.recent()):
            path = Path(r.path)  # type: ignore[arg-type]
            if path == cursor.path:
                doc, where = lines, here
            else:
                text = open_docs.get(path)
                where = self.privacy.place(path) if text is not None else None
                if text is None or where is None or self.privacy.text_refusal(text) is not None:
                    continue  # closed, or not a source
                doc = _lines(text)
            lo = max(0, r.start_line - EDIT_PAD)
            hi = min(len(doc), r.end_line + EDIT_PAD, lo + self.settings.context_chunk_lines)
            if hi <= lo or path == cursor.path and cursor.window[0] <= lo and hi <= cursor.window[1]:
                continue  # gone, or the local window shows it already
            out.append(self._candidate(("edit", where, r.seq), where, lo, hi, "\n".join(doc[lo:hi]), "edit",
                                       2.0 + 1.0 / (1 + age)))
        return out

    def _open_files(self, cursor: Cursor, here: Place, lines: list[str], line: int, query: frozenset[str],
                    open_docs: Mapping[Path, str], stop: float) -> list[_Candidate]:
        """Scoring chunks already cut is cheap and always done; cutting a document that is new or changed
        waits for the next request once the deadline has passed (one is cut per request regardless, so
        a short deadline still makes progress)."""
        out: list[_Candidate] = []
        for gone in self._doc_chunks.keys() - open_docs.keys():
            del self._doc_chunks[gone]
        cut = 0
        for path, text in open_docs.items():
            if path == cursor.path:
                continue
            where = self.privacy.place(path)
            if where is None or where == here or self.privacy.text_refusal(text) is not None:
                continue
            chunks = self._cached_chunks(path, text)
            if chunks is None:
                if cut and time.perf_counter() > stop:
                    continue  # missed the deadline: cut by a later request
                chunks = self._cut(path, text)
                cut += 1
            out += [c for lo, hi, chunk in chunks if (c := self._similar("open-file", where, lo, hi, chunk, query))]
        return out

    def _same_file(self, cursor: Cursor, here: Place, lines: list[str], line: int, query: frozenset[str],
                   open_docs: Mapping[Path, str], stop: float) -> list[_Candidate]:
        out: list[_Candidate] = []
        first, last = cursor.window
        size = self.settings.context_chunk_lines
        for start in range(0, len(lines), size):
            if time.perf_counter() > stop:
                break  # the current file changes with every key: nothing of it is kept for later
            end = min(start + size, len(lines))
            for lo, hi in ((start, min(end, first)), (max(start, last), end)):  # the parts outside the window
                chunk = "\n".join(lines[lo:hi])
                found = self._similar("same-file", here, lo, hi, chunk, query) if _usable(chunk, size) else None
                if found is not None:
                    out.append(found)
        return out

    def _similar(self, source: str, place: Place, lo: int, hi: int, chunk: str,
                 query: frozenset[str]) -> _Candidate | None:
        """A chunk scored by its similarity to the cursor's text; None when it shares no identifier."""
        words = self._words(chunk)
        similarity = jaccard(query, words)
        if similarity <= 0:
            return None
        return _Candidate((source, place, lo), place, lo, hi, chunk, source, 1.0 + similarity, words)

    def _cached_chunks(self, path: Path, text: str) -> list[tuple[int, int, str]] | None:
        held = self._doc_chunks.get(path)
        return held[1] if held is not None and (held[0] is text or held[0] == text) else None

    def _cut(self, path: Path, text: str) -> list[tuple[int, int, str]]:
        """An open document's chunks: `context_chunk_lines` lines each, at fixed line numbers so the same
        chunk keeps its place from request to request; blank and minified ones left out. Kept until the
        document's text changes, with each chunk's identifiers."""
        lines, size = _lines(text), self.settings.context_chunk_lines
        chunks = []
        for lo in range(0, len(lines), size):
            chunk = "\n".join(lines[lo:lo + size])
            if _usable(chunk, size):
                chunks.append((lo, min(lo + size, len(lines)), chunk))
                self._words(chunk)
        self._doc_chunks[path] = (text, chunks)
        return chunks

    def forget(self, path: Path) -> None:
        """A document was closed: drop its cached chunks."""
        with self._lock:
            self._doc_chunks.pop(path, None)

    # -- choosing and ordering -----------------------------------------------------------------

    def _candidate(self, key: Hashable, place: Place, start: int, end: int, text: str, source: str,
                   score: float) -> _Candidate:
        return _Candidate(key, place, start, end, text, source, score, self._words(text))

    def _choose(self, found: list[_Candidate]) -> list[_Candidate]:
        kept: list[_Candidate] = []
        for c in sorted(found, key=lambda c: -c.score):
            if len(kept) >= self.settings.context_max_chunks:
                break
            if any(k.place == c.place and min(k.end, c.end) - max(k.start, c.start) > (c.end - c.start) / 2
                   for k in kept):
                continue  # mostly inside a kept chunk of the same file
            if any(jaccard(k.words, c.words) > NEAR_DUPLICATE for k in kept):
                continue
            kept.append(c)
        return kept

    def _in_order(self, kept: list[_Candidate]) -> tuple[ContextChunk, ...]:
        """Sorted by when each chunk was first seen, counting only chunks in the previous answer: one that
        left and comes back is new again, so it goes last and the chunks before it keep their tokens."""
        keys = {c.key for c in kept}
        self._order = {k: n for k, n in self._order.items() if k in keys}
        for c in kept:
            if c.key not in self._order:
                self._order[c.key] = next(self._numbers)
        kept = sorted(kept, key=lambda c: self._order[c.key])
        return tuple(ContextChunk(c.place.relative, c.text, c.start, c.end, c.source, c.score) for c in kept)
