"""Counters behind `fimLsp.stats`. Touched only from the event loop thread, except the worker's loop
counters, which are plain int increments (atomic under the GIL)."""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from ..percentile import percentile


@dataclass
class Stats:
    requests: int = 0  # inline + completion requests received
    served: int = 0  # answered with at least one item
    empty: int = 0  # answered with nothing (no context, disabled, models not ready, nothing left)
    cache_hits: int = 0
    typed_through: int = 0
    cancelled: int = 0  # $/cancelRequest
    superseded: int = 0  # a newer request on the same document took over
    debounced: int = 0  # superseded while still waiting out the debounce
    joined: int = 0  # same context as a request already running: shared its model run
    model_runs: int = 0  # engine calls started
    completed_loops: int = 0  # engine calls that ran to the end
    interrupted_loops: int = 0  # engine calls stopped by a cancel check
    errors: int = 0
    not_ready: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    wins: Counter[str] = field(default_factory=Counter)
    acceptances: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        lat = list(self.latencies_ms)
        return {
            "requests": self.requests, "served": self.served, "empty": self.empty,
            "cacheHits": self.cache_hits, "typedThrough": self.typed_through,
            "cancelled": self.cancelled, "superseded": self.superseded, "debounced": self.debounced, "joined": self.joined,
            "modelRuns": self.model_runs, "completedLoops": self.completed_loops,
            "interruptedLoops": self.interrupted_loops, "errors": self.errors, "notReady": self.not_ready,
            "latencyMs": {"p50": percentile(lat, 0.5), "p90": percentile(lat, 0.9),
                          "p99": percentile(lat, 0.99), "count": len(lat)},
            "wins": dict(self.wins), "acceptances": dict(self.acceptances),
        }
