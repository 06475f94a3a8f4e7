"""The project-context settings. Field names are the editor settings in snake_case (`projectContext`,
`contextOpenFiles`, ...), as for the server's other settings; the prompt's token budgets are
`fim_lsp.engine.requests.PromptBudget`."""
from __future__ import annotations

from dataclasses import dataclass

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
    index_max_files: int = IndexBounds.max_files
    index_max_read_bytes: int = IndexBounds.max_read_bytes
    index_max_memory_bytes: int = IndexBounds.max_memory_bytes

    def validate(self) -> None:
        """Raise ValueError naming the bad key (camelCase, as the editor spells it)."""
        checks = [("contextMaxFileBytes", self.context_max_file_bytes >= 1, ">= 1"),
                  ("contextChunkLines", self.context_chunk_lines >= 1, ">= 1"),
                  ("contextMaxChunks", self.context_max_chunks >= 0, ">= 0"),
                  ("contextDeadlineMs", self.context_deadline_ms >= 0, ">= 0"),
                  ("indexMaxFiles", self.index_max_files >= 0, ">= 0"),
                  ("indexMaxReadBytes", self.index_max_read_bytes >= 0, ">= 0"),
                  ("indexMaxMemoryBytes", self.index_max_memory_bytes >= 0, ">= 0"),
                  ("contextExclude", all(isinstance(g, str) for g in self.context_exclude), "a list of globs")]
        for key, ok, want in checks:
            if not ok:
                raise ValueError(f"{key} must be {want}")

    def index_bounds(self) -> IndexBounds:
        return IndexBounds(self.index_max_files, self.index_max_read_bytes, self.index_max_memory_bytes)
