"""An editor session for the typing bench, on a source tree nobody here wrote.

A file of the tree is open with its cursor where a line uses a name defined in another file (the
context benchmark's holes), a few other files of the tree are open beside it and were edited, and the
user writes the file's next characters one by one. Each keystroke becomes the request the server makes:
its local window and single-line decision (`server.context`, the server's default settings), the project
context the gatherer finds for it (every source, default settings, over a definition index of the tree),
and the prompt budget."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from fim_lsp.context import ContextGatherer, ContextSettings, Cursor, DefinitionIndex, EditTracker, Privacy
from fim_lsp.engine.requests import FimRequest, PromptBudget
from fim_lsp.server.context import UTF32, extract, single_line_mode
from fim_lsp.server.settings import ServerSettings

from .context import session
from .context_holes import python_files, sample_holes


@dataclass
class Keystroke:
    index: int  # 0: the document before the first key
    typed: str  # the character just typed ("" at 0)
    request: FimRequest
    gather_ms: float  # the gatherer's time for this request


def budget(prompt_tokens: int, settings: ServerSettings = ServerSettings()) -> PromptBudget:
    """The server's prompt budget with Qwen's whole prompt capped at `prompt_tokens`."""
    return PromptBudget(total_tokens=prompt_tokens, prefix_tokens=settings.max_prefix_tokens,
                        suffix_tokens=settings.max_suffix_tokens)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset)
    return line, offset - (text.rfind("\n", 0, offset) + 1)


class TypingSession:
    """`keys` characters of the file typed at the cursor: before key k the document is the original with
    those characters missing, `original[:cursor + k] + original[cursor + keys:]`."""

    def __init__(self, root: Path, keys: int, prompt_budget: PromptBudget, seed: int = 0, open_files: int = 4,
                 edits: int = 3, new_tokens: int | None = None, settings: ServerSettings = ServerSettings()) -> None:
        files = python_files(root)
        holes = sample_holes(files, 1, seed)
        if not holes:
            raise ValueError(f"{root}: no line there uses a name defined in exactly one other file")
        hole = holes[0]
        self.path = hole.path
        self.original = files[hole.path]
        lines = self.original.split("\n")
        self.cursor = sum(len(line) + 1 for line in lines[:hole.line]) + hole.column
        self.keys = min(keys, len(self.original) - self.cursor)
        self.budget, self.new_tokens, self.settings = prompt_budget, new_tokens, settings
        _, docs, edits_made = session(hole, files, open_files, edits, random.Random(seed))
        self.open_docs = {p: t for p, t in docs.items() if p != hole.path}
        privacy = Privacy([root])
        index = DefinitionIndex(privacy)
        index.build()
        self.gatherer = ContextGatherer(privacy, EditTracker(), index, ContextSettings())
        assert self.gatherer.edits is not None
        for path, line in edits_made:
            self.gatherer.edits.record(path, line, line, docs[path].split("\n")[line])

    @property
    def typed_text(self) -> str:
        return self.original[self.cursor:self.cursor + self.keys]

    def keystrokes(self) -> Iterator[Keystroke]:
        """The request before the first key, then one per key, each gathered when its key is typed (as
        the server gathers per request: the context may change as the user types)."""
        after = self.original[self.cursor + self.keys:]
        s = self.settings
        for k in range(self.keys + 1):
            text = self.original[:self.cursor + k] + after
            line, column = _position(text, self.cursor + k)
            typed = self.original[self.cursor + k - 1] if k else ""
            if k:  # the editor's didChange for the key
                assert self.gatherer.edits is not None
                self.gatherer.edits.record(self.path, line - (typed == "\n"), line - (typed == "\n"), typed)
            ctx = extract(text, line, column, UTF32, s.prefix_lines, s.suffix_lines)
            window = (max(0, line - s.prefix_lines), line + s.suffix_lines + 1)
            t = time.perf_counter()
            context = self.gatherer.gather(Cursor(self.path, text, line, window), {**self.open_docs, self.path: text})
            gather_ms = (time.perf_counter() - t) * 1000
            request = FimRequest(ctx.prefix, ctx.suffix, single_line=single_line_mode(ctx, s.multiline),
                                 max_new_tokens=self.new_tokens, context=context, budget=self.budget)
            yield Keystroke(k, typed, request, gather_ms)
