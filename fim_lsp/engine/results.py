"""Result dataclasses shared by the generators, the scorer and the ensemble."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .prompt import DllmPrompt, QwenPrompt

CancelCheck = Callable[[], bool]


class Cancelled(Exception):
    """Raised inside a model loop when its cancel check says stop."""


@dataclass
class Generation:
    """One generator's raw output for one request."""

    model: str  # "qwen" or "dllm"
    text: str
    token_ids: list[int]
    forward_passes: int
    seconds: float
    hole_length: int | None = None  # diffusion only
    # log P(token) under the generator's own untempered distribution (qwen only)
    logprobs: list[float] | None = None
    end_logprob: float | None = None  # log P(<|endoftext|>) where qwen stopped; None at the length limit
    prefill_seconds: float | None = None  # qwen: the prompt's pass, the rest of `seconds` is decoding


@dataclass
class Score:
    perplexity: float
    mean_logprob: float
    tokens: int  # scored tokens (fim mode counts the closing <|endoftext|>)
    token_logprobs: list[float]


@dataclass
class Candidate:
    model: str
    text: str
    perplexity: float
    mean_logprob: float
    tokens: int
    seconds: float
    forward_passes: int
    hole_length: int | None = None
    token_logprobs: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no inf; an unscorable candidate reports null
        for key in ("perplexity", "mean_logprob"):
            if not math.isfinite(d[key]):
                d[key] = None
        return d


@dataclass
class Completion:
    """The ensemble's answer to one request."""

    candidates: list[Candidate]
    winner: Candidate | None
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    # what each model was given (None: the model did not run); fimLsp.showPrompt and the hover read them
    qwen_prompt: QwenPrompt | None = None
    dllm_prompt: DllmPrompt | None = None
    # Qwen's prompt pass: tokens run through the network, and tokens whose keys were kept from the
    # previous request (prefix reuse); a batch's totals split evenly over its requests
    prompt_tokens: dict[str, int] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.winner.text if self.winner else ""

    def to_dict(self, token_logprobs: bool = False) -> dict[str, Any]:
        cands = [c.to_dict() for c in self.candidates]
        if not token_logprobs:
            for c in cands:
                c.pop("token_logprobs")
        return {
            "winner": self.winner.model if self.winner else None,
            "completion": self.text,
            "winner_index": self.candidates.index(self.winner) if self.winner else None,
            "candidates": cands,
            "timings": self.timings,
            "notes": self.notes,
        }
