"""The project-context settings. Field names are the editor settings in snake_case (`projectContext`,
`contextOpenFiles`, ...), as for the server's other settings; each has its Rule (type and bounds) below.
The prompt's token budgets are `fim_lsp.engine.requests.PromptBudget`: the local window's caps are the
server's `maxPrefixTokens` / `maxSuffixTokens`, the total and the diffusion model's share are here."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..engine.config import camel
from ..engine.requests import DLLM_MAX_TOKENS, PromptBudget
from ..engine.rules import BOOL, INT, STRS, Rule
from .index import IndexBounds
from .privacy import DEFAULT_MAX_FILE_BYTES


@dataclass(frozen=True)
class ContextSettings:
    project_context: bool = True  # the off switch: False sends the local window alone, as before
    context_open_files: bool = True  # chunks of the other open documents
    context_same_file: bool = True  # chunks of the current file beyond the local window
    context_edits: bool = True  # recently edited ranges
    context_definitions: bool = True  # definitions of the names near the cursor, from the workspace index
    context_exclude: tuple[str, ...] = ()  # gitignore-style globs, relative to each workspace folder
    context_max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # larger files are never read or sent
    context_chunk_lines: int = 32  # lines per chunk of an open document
    context_max_chunks: int = 24  # chunks gathered per request (the token budget may keep fewer)
    context_deadline_ms: int = 30  # gathering stops here; what it skipped is cached for the next request
    context_total_tokens: int = PromptBudget.total_tokens  # Qwen's whole prompt (PromptBudget says why)
    dllm_context_tokens: int = PromptBudget.dllm_context_tokens  # the diffusion model's share of context
    index_max_files: int = IndexBounds.max_files
    index_max_read_bytes: int = IndexBounds.max_read_bytes
    index_max_memory_bytes: int = IndexBounds.max_memory_bytes

    def validate(self) -> None:
        """Raise ValueError naming the first key (camelCase, as the editor spells it) its Rule refuses."""
        for f in dataclasses.fields(self):
            CONTEXT_RULES[f.name].check(camel(f.name), getattr(self, f.name))

    def index_bounds(self) -> IndexBounds:
        return IndexBounds(self.index_max_files, self.index_max_read_bytes, self.index_max_memory_bytes)

    def budget(self, prefix_tokens: int, suffix_tokens: int) -> PromptBudget:
        """The prompt budget, with the local window's caps (the server's maxPrefixTokens/maxSuffixTokens)."""
        return PromptBudget(self.context_total_tokens, prefix_tokens, suffix_tokens, self.dllm_context_tokens)


CONTEXT_RULES: dict[str, Rule] = {
    "project_context": Rule(BOOL),
    "context_open_files": Rule(BOOL),
    "context_same_file": Rule(BOOL),
    "context_edits": Rule(BOOL),
    "context_definitions": Rule(BOOL),
    "context_exclude": Rule(STRS, max_items=256),
    "context_max_file_bytes": Rule(INT, 1, 100_000_000),
    "context_chunk_lines": Rule(INT, 1, 1000),
    "context_max_chunks": Rule(INT, 0, 256),
    "context_deadline_ms": Rule(INT, 0, 10_000),
    # 64: room for the FIM tokens and a line; 32,768: Qwen2.5-Coder's context length
    "context_total_tokens": Rule(INT, 64, 32_768),
    "dllm_context_tokens": Rule(INT, 0, DLLM_MAX_TOKENS - 1),
    "index_max_files": Rule(INT, 0, 1_000_000),
    "index_max_read_bytes": Rule(INT, 0, 100_000_000_000),
    "index_max_memory_bytes": Rule(INT, 0, 10_000_000_000),
}
