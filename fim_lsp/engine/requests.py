"""What a caller asks the engine for: one fill-in-the-middle request, and the project context around it;
and the request types the runners share (Qwen's sampling settings, per-row limits, a cached prompt).

Shared by the server, the eval and the bench; the generators and the scorer read it, none of them owns it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .line_stop import LineStop


@dataclass(frozen=True)
class ContextChunk:
    """A piece of another file (or of the current file beyond the local window) given to the models.

    Lines are 0-based, `end_line` exclusive. `source` says why it was chosen: "open-file", "edit",
    "definition" or "same-file". `score` is its relevance (higher first kept when a budget cuts)."""

    path: str  # workspace-relative, '/'-separated
    text: str
    start_line: int
    end_line: int
    source: str
    score: float = 0.0


@dataclass(frozen=True)
class ProjectContext:
    """Where the cursor's file sits in its project, and what else the models may see of the project."""

    repo: str  # the workspace folder's name
    path: str  # the current file, workspace-relative
    chunks: tuple[ContextChunk, ...] = ()


@dataclass
class FimRequest:
    prefix: str
    suffix: str
    dllm_length: int | None = None  # overrides the config (the eval passes the oracle length)
    # the server's mid-line mode: Qwen stops at the first newline after non-blank text, and the
    # diffusion model tries dllm_lengths_single_line
    single_line: bool = False
    max_new_tokens: int | None = None  # overrides the config's budget for this request
    context: ProjectContext | None = None  # None: the local window alone, as before


@dataclass
class ArParams:
    """Qwen's sampling settings for one batch."""

    temperature: float = 0.6
    top_p: float | None = 0.95
    top_k: int | None = None
    max_new_tokens: int = 128


@dataclass
class RowLimits:
    """Per-request limits of one batch: token budgets, and which rows are single-line (those stop
    after the first newline that follows non-blank text; `line_stop` holds the tables)."""

    budgets: list[int]
    single_line: list[bool]
    line_stop: LineStop | None = None

    @classmethod
    def uniform(cls, n: int, params: ArParams) -> "RowLimits":
        return cls([params.max_new_tokens] * n, [False] * n)

    def stop_tables(self, tokenizer: Any, device: torch.device) -> LineStop | None:
        """The single-line tables when some row needs them, built on first use."""
        if not any(self.single_line):
            return None
        if self.line_stop is None:
            self.line_stop = LineStop.from_tokenizer(tokenizer, device)
        return self.line_stop


@dataclass
class PromptState:
    """Qwen's prompts as they sit in its runner's KV cache, for decoding from them and scoring more
    completions on them. Row b's prompt fills cache slots [0, lengths[b]) of row b (left-aligned)."""

    cache: Any  # the runner's static_model.KVCache
    lengths: list[int]  # prompt tokens per row
    first_logprobs: torch.Tensor  # [B, V] log P(first middle token | prompt), full vocabulary rows
    computed: int = 0  # prompt tokens the pass ran through the network (all rows)
    reused: int = 0  # prompt tokens whose keys were kept from the previous prompt of the same row
