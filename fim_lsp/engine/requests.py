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


# Open-dCoder's own eval keeps the last 2,048 tokens of prefix + masks + suffix (REFERENCE.md section 7).
DLLM_MAX_TOKENS = 2048


@dataclass(frozen=True)
class PromptBudget:
    """Token budgets of the models' prompts (fim_lsp.engine.prompt applies them).

    Qwen's prompt holds at most `total_tokens`, special tokens included: the local window takes up to
    `prefix_tokens` + `suffix_tokens` (its start and its end cut at line boundaries), and whatever of the
    total it leaves goes to the project context. 0 for `prefix_tokens` or `suffix_tokens` means no cap
    of its own (the total still holds). The diffusion model gets the same local window plus at most
    `dllm_context_tokens` of context as plain text, prefix + hole + suffix within DLLM_MAX_TOKENS.

    Defaults (why): 4,096 is half of Qwen's 8,192-token file-level training length, so the prompt and
    the 128 generated tokens stay well inside what the model saw in training; a prompt pass costs
    ~0.7 GFLOP per token, so 4k tokens is ~3 TFLOP once (a few seconds on a laptop CPU, milliseconds on a
    GPU), and with the prompt's beginning kept from keystroke to keystroke only the local window is
    recomputed. The local window keeps the server's earlier 1,024 + 256 (the same completions as before
    when there is no context), leaving ~2.8k tokens for ~8-16 chunks. `dllm_context_tokens`: see
    eval/BENCHMARKS.md, "Project context"."""

    total_tokens: int = 4096
    prefix_tokens: int = 1024
    suffix_tokens: int = 256
    dllm_context_tokens: int = 512

    def validate(self) -> None:
        """Raise ValueError naming the bad field (as its camelCase setting)."""
        checks = [("contextTotalTokens", self.total_tokens >= 64, ">= 64"),
                  ("maxPrefixTokens", self.prefix_tokens >= 0, ">= 0 (0 = no cap of its own)"),
                  ("maxSuffixTokens", self.suffix_tokens >= 0, ">= 0 (0 = no cap of its own)"),
                  ("dllmContextTokens", 0 <= self.dllm_context_tokens < DLLM_MAX_TOKENS,
                   f"between 0 and {DLLM_MAX_TOKENS - 1}")]
        for key, ok, want in checks:
            if not ok:
                raise ValueError(f"{key} must be {want}")


# The editor settings that set each PromptBudget field (the local window's caps are the server's
# existing maxPrefixTokens / maxSuffixTokens).
BUDGET_SETTINGS = {"total_tokens": "contextTotalTokens", "prefix_tokens": "maxPrefixTokens",
                   "suffix_tokens": "maxSuffixTokens", "dllm_context_tokens": "dllmContextTokens"}


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
    # None: the prefix and suffix go in whole, as before (the eval); the server passes its budgets
    budget: PromptBudget | None = None


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
    # set by the decode loop: per row, the tokens it fed after the prompt (their keys sit at slots
    # lengths[b], lengths[b] + 1, ...) until the next pass of the runner rewrites the cache
    decoded: list[list[int]] | None = None
