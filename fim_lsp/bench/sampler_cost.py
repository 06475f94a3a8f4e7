"""What the top-p cut costs per decode step: the floor found by a full sort (the rule as the reference
states it, and what the engine ran before) against the engine's sort-free ways, on one row of logits."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from fim_lsp.engine.nucleus import candidates_floor, nucleus_floor, radix_floor, sorted_floor
from fim_lsp.engine.sampling import sample_tokens
from fim_lsp.percentile import percentile


@dataclass
class TopPCost:
    label: str
    nucleus_tokens: int  # tokens the cut keeps
    by_candidates: bool  # the top-k candidates decide it (else the radix select does)
    sorted_ms: float  # the floor by a full sort
    engine_ms: float  # the floor as the eager sampler finds it (candidates, radix for the rest)
    branch_free_ms: float  # the floor as the static path finds it (radix select)
    sampler_ms: float  # the eager sampler's whole step: temperature, cut, softmax, draw


def _ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """p50 ms of each function, called in turn so that the machine's drifting load falls on all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r:  # the first round warms up
                times[k].append((time.perf_counter() - t) * 1000)
    return {k: percentile(v, 0.5) or 0.0 for k, v in times.items()}


def top_p_cost(label: str, logits: torch.Tensor, temperature: float, top_p: float, repeats: int = 30) -> TopPCost:
    """Time each way of finding the floor of one row [V] of logits at this temperature and top_p, and
    check that they agree (the bench must not time a wrong answer)."""
    row = logits.float().reshape(1, -1)
    probs = torch.softmax(row / temperature, dim=-1)
    want = sorted_floor(probs, top_p)
    for way in (nucleus_floor(probs, top_p), radix_floor(probs, top_p)):
        if not torch.equal(way, want):
            raise AssertionError(f"{label}: the sort-free floor {way.item()} differs from the sorted {want.item()}")
    gen = torch.Generator().manual_seed(0)
    ms = _ms({"sorted": lambda: sorted_floor(probs, top_p), "engine": lambda: nucleus_floor(probs, top_p),
              "static": lambda: nucleus_floor(probs, top_p, branch_free=True),
              "sampler": lambda: sample_tokens(row, temperature, top_p, generator=gen)}, repeats)
    return TopPCost(label=label, nucleus_tokens=int((probs >= want).sum()),
                    by_candidates=bool(candidates_floor(probs, top_p)[1]), sorted_ms=ms["sorted"],
                    engine_ms=ms["engine"], branch_free_ms=ms["static"], sampler_ms=ms["sampler"])


def sharpened(logits: torch.Tensor, temperature: float, top_p: float, nucleus: int) -> torch.Tensor:
    """The logits scaled until the nucleus holds at most `nucleus` tokens, as a trained model's does (a
    random network's next-token distribution is nearly flat)."""
    scale = 1.0
    while True:
        probs = torch.softmax(logits.float().reshape(1, -1) * scale / temperature, dim=-1)
        if int((probs >= sorted_floor(probs, top_p)).sum()) <= nucleus:
            return logits * scale
        scale *= 1.2
