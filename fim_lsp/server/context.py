"""Prefix/suffix around the cursor: position encodings, CRLF, line budgets, single- vs multi-line.

The model always sees LF text; `eol` remembers the document's line ending so the inserted text can be
converted back."""
from __future__ import annotations

import re
from dataclasses import dataclass

UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"
# Text after the cursor made only of these still counts as "end of line" (auto-closed pairs, `;`).
CLOSERS = set(")]}>\"'`;,")
# Qwen2.5-Coder's longest token (a run of spaces) is 128 characters, so N tokens never span more than
# N * 128 characters: a token budget bounds the text worth looking at, however long the line.
MAX_TOKEN_CHARS = 128
FIRST_WINDOW_CHARS_PER_TOKEN = 8  # code runs 3-4 characters a token: one try suffices for most text
# A lone surrogate (JSON "\ud800") is a character to the client's UTF-16 columns but no text to a
# tokenizer: the model sees U+FFFD in its place, one character for one, so no position moves.
_SURROGATE = re.compile("[\ud800-\udfff]")


def units(text: str, encoding: str) -> int:
    """Length of `text` in the negotiated code units."""
    if encoding == UTF32 or text.isascii():
        return len(text)
    if encoding == UTF8:
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def char_column(line: str, column: int, encoding: str) -> int:
    """Python string index for a client column; past the end clamps to the line end, and a column in
    the middle of a surrogate pair or UTF-8 sequence rounds down to the character's start."""
    if encoding == UTF32 or line.isascii() or (encoding == UTF16 and max(line) <= "\uffff"):
        return max(0, min(column, len(line)))  # one unit a character: no walk over a 4 MB line
    seen = 0
    for i, ch in enumerate(line):
        width = units(ch, encoding)
        if seen + width > column:
            return i
        seen += width
    return len(line)


def client_column(line: str, index: int, encoding: str) -> int:
    return units(line[:index], encoding)


def split_lines(text: str) -> list[str]:
    """Lines without their endings; handles LF, CRLF and lone CR like LSP clients do."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


@dataclass
class FimContext:
    prefix: str  # LF line endings, within the line budget
    suffix: str
    line: int  # clamped cursor, 0-based line
    char: int  # clamped cursor, Python index in the line
    line_before: str  # the cursor's line up to the cursor
    line_after: str  # the cursor's line after the cursor
    next_lines: list[str]  # the lines after the cursor's line (for trimming repeats)
    eol: str  # "\r\n" or "\n"
    encoding: str

    @property
    def single_line(self) -> bool:
        """Code after the cursor on this line (other than closing brackets/quotes) means the user is
        mid-line: offer a single line, never a block that would push that code down."""
        return any(not ch.isspace() and ch not in CLOSERS for ch in self.line_after)

    def range_end_column(self, chars_covered: int) -> int:
        """Client column of the cursor plus `chars_covered` characters of the line after it."""
        return client_column(self.line_before + self.line_after, self.char + chars_covered, self.encoding)

    @property
    def cursor_column(self) -> int:
        return client_column(self.line_before, len(self.line_before), self.encoding)


def single_line_mode(ctx: FimContext, multiline: str) -> bool:
    """The `multiline` setting's decision: "always" never cuts to one line, "never" always does, "auto"
    does when code follows the cursor on its line."""
    return {"always": False, "never": True}.get(multiline, ctx.single_line)


def window_chars(max_tokens: int) -> int | None:
    """The characters that can hold `max_tokens` tokens; None for no token budget."""
    return max_tokens * MAX_TOKEN_CHARS if max_tokens > 0 else None


def model_text(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def extract(text: str, line: int, column: int, encoding: str = UTF16,
            prefix_lines: int = 64, suffix_lines: int = 16,
            prefix_chars: int | None = None, suffix_chars: int | None = None) -> FimContext:
    """Context for a cursor at (line, column in client units). Out-of-range positions clamp to the
    document's end rather than fail: a stale position is normal while the user types. The prefix keeps
    at most its last `prefix_chars` characters and the suffix its first `suffix_chars` (a 4 MB line
    stays out of the cache keys and the tokenizer)."""
    eol = "\r\n" if "\r\n" in text[:100_000] else "\n"
    lines = split_lines(text)
    line = max(0, min(line, len(lines) - 1))
    current = lines[line]
    char = char_column(current, max(0, column), encoding)
    before, after = current[:char], current[char:]
    first = max(0, line - prefix_lines)
    prefix = "\n".join(lines[first:line] + [before])
    last = min(len(lines), line + 1 + suffix_lines)
    suffix = "\n".join([after] + lines[line + 1:last])
    if prefix_chars is not None and len(prefix) > prefix_chars:
        prefix = prefix[len(prefix) - prefix_chars:]
    if suffix_chars is not None and len(suffix) > suffix_chars:
        suffix = suffix[:suffix_chars]
    prefix, suffix = model_text(prefix), model_text(suffix)
    return FimContext(prefix=prefix, suffix=suffix, line=line, char=char, line_before=before,
                      line_after=after, next_lines=lines[line + 1:line + 1 + 8], eol=eol, encoding=encoding)

