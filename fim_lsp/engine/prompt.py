"""Token-level prompt assembly: the text around the cursor and the project context in, token ids out.

Pure: a tokenizer and strings in, ids (and the decoded text of exactly those ids) out; no model runs.

- Qwen2.5-Coder (generation and the scorer) gets its repo-level layout (REFERENCE.md section 7):
  `<|repo_name|>{repo}\\n` then `<|file_sep|>{path}\\n{content}\\n` per chunk, in the order given, then
  `<|file_sep|>{current_path}\\n<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>`. Every
  segment is tokenized on its own, so adding a chunk after the others only appends tokens to the
  beginning that the previous prompt had, and a special-token string typed in code stays text.
  Without a project context the prompt is the plain FIM prompt of the local window.
- Open-dCoder gets `context + prefix` and `suffix` as plain text (never repo or FIM tokens): it was
  trained on plain file text, and its own eval keeps prefix + masks + suffix within 2,048 tokens.

The local window is cut at line boundaries; the least relevant chunk is dropped first when the context
does not fit. Text is cut to a bounded window of characters before it is tokenized, so a 4 MB line
costs no more than an ordinary one."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any, Sequence

from .loading import encode, special_id
from .requests import DLLM_MAX_TOKENS, ContextChunk, ProjectContext, PromptBudget

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
REPO_NAME, FILE_SEP = "<|repo_name|>", "<|file_sep|>"
# A window of this many characters per token of budget holds the budget's tokens in any code but
# long runs of whitespace (code averages 3-4 characters a token); where it holds fewer, less text
# goes in than could have, never more.
CHARS_PER_TOKEN = 16
# The diffusion prompt's chunks are headed by a line comment naming their file.
LINE_COMMENTS = {
    **dict.fromkeys(("js", "jsx", "mjs", "cjs", "ts", "tsx", "java", "c", "h", "cc", "cpp", "hpp", "cs",
                     "go", "rs", "kt", "kts", "swift", "scala", "php", "dart", "zig"), "//"),
    **dict.fromkeys(("lua", "sql", "hs", "elm"), "--"),
    **dict.fromkeys(("el", "lisp", "clj", "scm"), ";;"),
}


@dataclass(frozen=True)
class UsedChunk:
    """A chunk that went into a prompt, and how many of the prompt's tokens it took."""

    chunk: ContextChunk
    tokens: int


@dataclass(frozen=True)
class QwenPrompt:
    ids: list[int]
    chunks: tuple[UsedChunk, ...]  # in prompt order
    prefix: str  # the local window that went in, after the cuts
    suffix: str
    # ids[:context_tokens] is the part before the current file: the same from keystroke to keystroke
    # while the chunks stay, so its KV cache can be kept
    context_tokens: int
    tokenizer: Any = field(repr=False, compare=False)

    @cached_property
    def text(self) -> str:
        """The decoded text of exactly `ids`, special tokens included (decoded when first asked: a
        prompt of thousands of tokens takes milliseconds, and only fimLsp.showPrompt reads it)."""
        return _decode(self.tokenizer, self.ids)


@dataclass(frozen=True)
class DllmPrompt:
    """`prefix_ids + [mask] * hole + suffix_ids` is what the diffusion model runs on."""

    prefix_ids: list[int]
    suffix_ids: list[int]
    chunks: tuple[UsedChunk, ...]
    prefix: str  # the local window that went in, after the cuts
    suffix: str
    tokenizer: Any = field(repr=False, compare=False)

    @cached_property
    def prefix_text(self) -> str:
        """The decoded text of exactly prefix_ids (the context chunks first)."""
        return _decode(self.tokenizer, self.prefix_ids)

    @cached_property
    def suffix_text(self) -> str:
        return _decode(self.tokenizer, self.suffix_ids)

    def text(self, hole: str) -> str:
        """The whole prompt as text, `hole` standing for the masks."""
        return self.prefix_text + hole + self.suffix_text


class SegmentCache:
    """Ids of the context's segments (a chunk with its header, the repo and path lines) from earlier
    prompts, so the chunks that stay from keystroke to keystroke are not tokenized again. The caller
    owns it (one per tokenizer); bounded, the least recently used segment goes first."""

    def __init__(self, tokenizer: Any, size: int = 1024) -> None:
        self.tokenizer, self.size = tokenizer, size
        self._ids: OrderedDict[str, list[int]] = OrderedDict()

    def __call__(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = encode(self.tokenizer, text)
            if len(self._ids) > self.size:
                self._ids.popitem(last=False)
        else:
            self._ids.move_to_end(text)
        return ids


def clip_text(tokenizer: Any, text: str, max_tokens: int, keep_end: bool) -> str:
    """`text` cut to about `max_tokens` tokens, keeping its end (a prefix) or its start (a suffix).

    The cut lands on a line boundary when one is in the kept part, so the model never sees half a
    line; a single line longer than the budget is cut inside. 0 = no cap. Only a bounded window of
    `text` is tokenized."""
    if max_tokens <= 0 or not text:
        return text
    limit = max_tokens * CHARS_PER_TOKEN
    windowed = len(text) > limit
    window = (text[-limit:] if keep_end else text[:limit]) if windowed else text
    try:
        enc = tokenizer(window, add_special_tokens=False, split_special_tokens=True,
                        return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return _clip_lines(tokenizer, window, max_tokens, keep_end)  # a slow tokenizer has no offsets
    if len(offsets) <= max_tokens and not windowed:
        return text
    if keep_end:
        start = offsets[len(offsets) - max_tokens][0] if len(offsets) > max_tokens else 0
        if start > 0 and window[start - 1] == "\n" or start == 0 and not windowed:
            return window[start:]
        nl = window.find("\n", start)
        return window[nl + 1:] if 0 <= nl < len(window) - 1 else window[start:]
    end = offsets[max_tokens - 1][1] if len(offsets) > max_tokens else len(window)
    if end < len(window) and window[end] == "\n" or end == len(window) and not windowed:
        return window[:end]
    nl = window.rfind("\n", 0, end)
    return window[:nl] if nl > 0 else window[:end]


def _clip_lines(tokenizer: Any, text: str, max_tokens: int, keep_end: bool) -> str:
    """clip_text for a tokenizer without offsets: whole lines dropped from the far end until it fits."""
    lines = text.split("\n")
    while len(lines) > 1 and len(encode(tokenizer, "\n".join(lines))) > max_tokens:
        lines = lines[1:] if keep_end else lines[:-1]
    return "\n".join(lines)


def fit(tokenizer: Any, text: str, max_tokens: int, keep_end: bool) -> tuple[str, list[int]]:
    """(text, ids) with len(ids) <= max_tokens (0 = no cap), cut as clip_text cuts. Tokenizing a cut
    substring on its own can differ from its share of the whole text's tokens at the cut's edge:
    the budget is checked on the ids that go in."""
    cap = max_tokens
    while True:
        text = clip_text(tokenizer, text, cap, keep_end)
        ids = encode(tokenizer, text)
        if max_tokens <= 0 or len(ids) <= max_tokens:
            return text, ids
        cap = max(1, cap - (len(ids) - max_tokens))


def _special(tokenizer: Any, *tokens: str) -> list[int]:
    ids = [special_id(tokenizer, t) for t in tokens]
    if None in ids:
        missing = ", ".join(t for t, i in zip(tokens, ids) if i is None)
        raise ValueError(f"the autoregressive model's tokenizer has no {missing}")
    return ids  # type: ignore[return-value]


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) if ids else ""


def _local(tokenizer: Any, prefix: str, suffix: str, budget: PromptBudget,
           room: int) -> tuple[str, list[int], str, list[int]]:
    """The local window within its own caps, then within `room` tokens in all: the prefix gives way
    first (its start is the farthest from the cursor), then the suffix."""
    suffix_cap = min(budget.suffix_tokens or room, room)
    suffix, suf = fit(tokenizer, suffix, suffix_cap, keep_end=False) if suffix_cap > 0 else ("", [])
    prefix_cap = min(budget.prefix_tokens or room, room - len(suf))
    prefix, pre = fit(tokenizer, prefix, prefix_cap, keep_end=True) if prefix_cap > 0 else ("", [])
    return prefix, pre, suffix, suf


def _select(chunks: Sequence[ContextChunk], pieces: Sequence[list[int] | None], room: int) -> list[int]:
    """Indexes of the chunks kept, in their given order: the most relevant first, each while it fits,
    so the least relevant is the first to go. Equal scores keep the earlier chunk (the prompt's
    beginning stays)."""
    kept, used = [], 0
    for i in sorted(range(len(chunks)), key=lambda i: (-chunks[i].score, i)):
        piece = pieces[i]
        if piece is not None and used + len(piece) <= room:
            kept.append(i)
            used += len(piece)
    return sorted(kept)


def _pieces(segment: SegmentCache, chunks: Sequence[ContextChunk], room: int, head: Any) -> list[list[int] | None]:
    """Each chunk's ids: `head(chunk)` is (ids before the text, text). A chunk too long to fit in
    `room` by its length alone is never tokenized (None)."""
    pieces: list[list[int] | None] = []
    for chunk in chunks:
        if len(chunk.text) > room * CHARS_PER_TOKEN:
            pieces.append(None)
            continue
        lead, text = head(chunk)
        pieces.append(lead + segment(text))
    return pieces


def _content(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


def qwen_prompt(tokenizer: Any, prefix: str, suffix: str, context: ProjectContext | None = None,
                budget: PromptBudget | None = None, cache: SegmentCache | None = None) -> QwenPrompt:
    """Qwen's prompt. With no context and no budget: exactly `<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>`
    of the whole prefix and suffix (the eval's setting). A budget cuts the local window; a context
    (with the default budget when none is given) adds the repo-level layout. `cache` keeps the
    context's segment ids for the next prompt (the ids are the same with or without it)."""
    fp, fs, fm = _special(tokenizer, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
    if context is None:
        if budget is None:
            pre, suf = encode(tokenizer, prefix), encode(tokenizer, suffix)
        else:
            prefix, pre, suffix, suf = _local(tokenizer, prefix, suffix, budget, budget.total_tokens - 3)
        ids = [fp, *pre, fs, *suf, fm]
        return QwenPrompt(ids, (), prefix, suffix, 0, tokenizer)
    budget = budget or PromptBudget()
    segment = cache or SegmentCache(tokenizer)
    repo, sep = _special(tokenizer, REPO_NAME, FILE_SEP)
    head = [repo, *segment(context.repo + "\n")]
    current = [sep, *segment(context.path + "\n")]
    overhead = len(head) + len(current) + 3
    prefix, pre, suffix, suf = _local(tokenizer, prefix, suffix, budget, budget.total_tokens - overhead)
    room = budget.total_tokens - overhead - len(pre) - len(suf)
    pieces = _pieces(segment, context.chunks, room, lambda c: ([sep], f"{c.path}\n{_content(c.text)}\n"))
    kept = _select(context.chunks, pieces, room)
    body = [t for i in kept for t in pieces[i]]  # type: ignore[union-attr]
    ids = [*head, *body, *current, fp, *pre, fs, *suf, fm]
    used = tuple(UsedChunk(context.chunks[i], len(pieces[i])) for i in kept)  # type: ignore[arg-type]
    return QwenPrompt(ids, used, prefix, suffix, len(head) + len(body), tokenizer)


def line_comment(path: str) -> str:
    """The line-comment marker of the file's language (by its extension; `#` when unknown)."""
    return LINE_COMMENTS.get(PurePosixPath(path).suffix.lstrip(".").lower(), "#")


def dllm_prompt(tokenizer: Any, prefix: str, suffix: str, context: ProjectContext | None = None,
                budget: PromptBudget | None = None, hole_tokens: int = 32,
                cache: SegmentCache | None = None) -> DllmPrompt:
    """The diffusion model's prefix and suffix ids. With no context and no budget: the whole prefix and
    suffix (the eval's setting). Otherwise the local window within the budget's caps, preceded by at
    most `budget.dllm_context_tokens` of context as plain text (each chunk headed by a comment naming
    its file, then one naming the current file), prefix + `hole_tokens` + suffix within 2,048."""
    if context is None and budget is None:
        pre, suf = encode(tokenizer, prefix), encode(tokenizer, suffix)
        return DllmPrompt(pre, suf, (), prefix, suffix, tokenizer)
    budget = budget or PromptBudget()
    cap = DLLM_MAX_TOKENS - hole_tokens
    prefix, pre, suffix, suf = _local(tokenizer, prefix, suffix, budget, cap)
    lead: list[int] = []
    used: tuple[UsedChunk, ...] = ()
    if context is not None and context.chunks and budget.dllm_context_tokens > 0:
        segment = cache or SegmentCache(tokenizer)
        mark = line_comment(context.path)
        current = segment(f"{mark} {context.path}\n")
        room = min(budget.dllm_context_tokens, cap - len(pre) - len(suf)) - len(current)
        pieces = _pieces(segment, context.chunks, max(room, 0),
                         lambda c: ([], f"{mark} {c.path}\n{_content(c.text)}\n"))
        kept = _select(context.chunks, pieces, room)
        if kept:
            lead = [t for i in kept for t in pieces[i]] + current  # type: ignore[union-attr]
            used = tuple(UsedChunk(context.chunks[i], len(pieces[i])) for i in kept)  # type: ignore[arg-type]
    pre = lead + pre
    return DllmPrompt(pre, suf, used, prefix, suffix, tokenizer)
