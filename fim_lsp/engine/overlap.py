"""The diffusion stage beside Qwen: its own thread and, on a GPU, its own CUDA stream.

Replayed graphs leave the interpreter free, and Qwen's one-token steps leave most of a GPU idle, so the
diffusion passes run while Qwen decodes (eval/BENCHMARKS.md measures it against taking turns). Once
Qwen's prompt pass has run, the stage also scores its own candidates on Qwen's cached prompt, so that
after Qwen's last token only Qwen's own candidate is left to score."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

from .ar_fim import PromptState

T = TypeVar("T")


class PromptHandoff:
    """Qwen's prompt state, passed from the thread that runs Qwen to the diffusion stage. On a GPU the
    stage's stream waits for the prompt pass itself, not for the decode steps queued after it."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._prompt: PromptState | None = None
        self._event: torch.cuda.Event | None = None

    def put(self, prompt: PromptState) -> None:
        if prompt.attn.device.type == "cuda":
            self._event = torch.cuda.Event()
            self._event.record()
        self._prompt = prompt
        self._ready.set()

    def close(self) -> None:
        """Qwen stopped (done, cancelled or failed): a stage still waiting gets what there is, maybe None.
        Always called, so the stage's single worker can never wait forever."""
        self._ready.set()

    def get(self) -> PromptState | None:
        self._ready.wait()
        if self._event is not None:
            torch.cuda.current_stream().wait_event(self._event)
        return self._prompt


class SideStage:
    """One worker thread (requests are served one batch at a time) and, on CUDA, one stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fim-dllm")
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def submit(self, fn: Callable[[], T]) -> "Future[tuple[T, float]]":
        """Run fn on the side; the future gives (its result, its seconds until its work has finished)."""
        stream = self._stream
        if stream is not None:  # the stage reads what the caller's stream wrote before this point
            stream.wait_stream(torch.cuda.current_stream(self.device))
        return self._pool.submit(self._run, fn)

    def _run(self, fn: Callable[[], T]) -> tuple[T, float]:
        start = time.perf_counter()
        if self._stream is None:
            return fn(), time.perf_counter() - start
        with torch.cuda.stream(self._stream):
            out = fn()
        self._stream.synchronize()
        return out, time.perf_counter() - start
