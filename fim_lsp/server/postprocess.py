"""Turn a raw model middle into text that is safe to insert at the cursor."""
from __future__ import annotations

from dataclasses import dataclass

from .context import FimContext

PAIRS = {")": "(", "]": "[", "}": "{", ">": "<"}
# A byte-level tokenizer decodes the bytes of a character cut off at the token limit to U+FFFD.
REPLACEMENT = "\ufffd"
QUOTES = set("\"'`")


@dataclass
class Insert:
    text: str  # in the document's line endings
    cover: int  # characters after the cursor (auto-closed brackets/quotes) that the item's range replaces


def single_line_cut(text: str) -> str:
    # A leading newline means the model wants to start a new line; in single-line mode that is nothing.
    return text.split("\n", 1)[0]


def whole_chars(text: str) -> str:
    """Drop a trailing partial character: the generator stopped between its bytes."""
    return text.rstrip(REPLACEMENT)


def overlap(text: str, follow: str) -> int:
    """Length of the longest end of `text` that is also the start of `follow`."""
    for k in range(min(len(text), len(follow)), 0, -1):
        if text.endswith(follow[:k]):
            return k
    return 0


def drop_repeated_lines(text: str, ctx: FimContext) -> str:
    """Cut the completion where it starts repeating the line that already follows the cursor."""
    following = next((l.strip() for l in ctx.next_lines if l.strip()), None)
    if following is None:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        whole = (ctx.line_before + line) if i == 0 else line
        if i == 0 and not ctx.line_before.strip() and not line.strip():
            continue
        if whole.strip() == following and (i > 0 or not ctx.line_before.strip()):
            return "\n".join(lines[:i])
    return text


def covered_closers(text: str, after: str) -> int:
    """How many of the auto-closed characters after the cursor the completion already types.

    Brackets count as typed when the completion closes more of them than it opens; quotes when it has
    an odd number; `;`/`,` when the completion ends with one. Only a leading run can be replaced."""
    budget: dict[str, int] = {}
    for ch in set(after):
        if ch in PAIRS:
            budget[ch] = max(0, text.count(ch) - text.count(PAIRS[ch]))
        elif ch in QUOTES:
            budget[ch] = text.count(ch) % 2
        else:
            budget[ch] = 1 if text.rstrip().endswith(ch) else 0
    covered = 0
    for i, ch in enumerate(after):
        if ch.isspace():
            continue
        if budget.get(ch, 0) <= 0:
            break
        budget[ch] -= 1
        covered = i + 1
    return covered


def postprocess(raw: str, ctx: FimContext, single_line: bool) -> Insert | None:
    """Drop a cut character, single-line cut, drop suffix repeats, trim trailing whitespace, cover
    auto-closed characters, convert to the document's line endings. None when nothing useful is left."""
    text = whole_chars(raw).replace("\r\n", "\n")
    if single_line:
        text = single_line_cut(text)
    code_after = ctx.single_line  # real code after the cursor, not just closers
    if code_after:
        tail = ctx.line_after.rstrip()
        k = overlap(text, tail)
        text = text[: len(text) - k]
    else:
        text = drop_repeated_lines(text, ctx)
        # Trailing spaces on any line are lint noise; a trailing newline would leave an empty line
        # before the code that follows.
        text = "\n".join(line.rstrip() for line in text.split("\n")).rstrip()
    if not text.strip():
        return None
    cover = 0
    if not code_after and ctx.line_after.strip():
        cover = covered_closers(text, ctx.line_after)
    return Insert(text=text.replace("\n", ctx.eol), cover=cover)
