"""What a caller asks the engine for: one fill-in-the-middle request, and the project context around it.

Shared by the server, the eval and the bench; the generators and the scorer read it, none of them owns it."""
from __future__ import annotations

from dataclasses import dataclass


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
