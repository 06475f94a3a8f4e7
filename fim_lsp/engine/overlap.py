"""The diffusion stage beside Qwen: its own thread (and, on a GPU, the diffusion runner's CUDA stream).

Replayed graphs leave the interpreter free, and Qwen's one-token steps leave most of a GPU idle, so the
diffusion passes run while Qwen decodes (eval/BENCHMARKS.md measures it against taking turns). Once
Qwen's prompt pass has run, the stage also scores its own candidates on Qwen's cached prompt, so that
after Qwen's last token only Qwen's own candidate is left to score.

A request never returns while its side job still runs: the next request's prompt pass rewrites the KV
cache the job may still read. `SideJob.finish` cancels the job (it stops at its next diffusion step)
and waits for it."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

import torch

from .requests import PromptState
from .results import CancelCheck

T = TypeVar("T")


class PromptHandoff:
    """Qwen's prompt state, passed from the thread that runs Qwen to the diffusion stage. On a GPU the
    stage's stream waits for the prompt pass itself, not for the decode steps queued after it."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._prompt: PromptState | None = None
        self._event: torch.cuda.Event | None = None

    def put(self, prompt: PromptState) -> None:
        """Called on Qwen's stream, right after its prompt pass is queued."""
        device = prompt.first_logprobs.device
        if device.type == "cuda":
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(device))
        self._prompt = prompt
        self._ready.set()

    def close(self) -> None:
        """Qwen stopped (done, cancelled or failed): a stage still waiting gets what there is, maybe None.
        Always called, so the stage's single worker can never wait forever."""
        self._ready.set()

    def get(self) -> PromptState | None:
        """Called on the stage's stream, which then waits for the prompt pass."""
        self._ready.wait()
        if self._event is not None and self._prompt is not None:
            torch.cuda.current_stream(self._prompt.first_logprobs.device).wait_event(self._event)
        return self._prompt


class SideJob(Generic[T]):
    def __init__(self, future: "Future[tuple[T, float]]", stop: threading.Event) -> None:
        self._future = future
        self._stop = stop

    def result(self) -> tuple[T, float]:
        """(the job's result, its seconds); raises what the job raised."""
        return self._future.result()

    def finish(self) -> None:
        """Cancel the job unless it is done, and wait until it has stopped. What it raised is dropped:
        the request that owned it is already failing for a reason of its own, or has read the result."""
        if not self._future.done():
            self._stop.set()
        try:
            self._future.result()
        except BaseException:  # noqa: BLE001 - see the docstring
            pass

    def done(self) -> bool:
        return self._future.done()


class SideStage:
    """One worker thread: requests are served one batch at a time, so one side job at most."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fim-dllm")

    def submit(self, fn: Callable[[CancelCheck], T], cancel: CancelCheck | None = None) -> SideJob[T]:
        """Run fn(stop) on the side; stop() is true once the request is cancelled or the job abandoned."""
        stop = threading.Event()

        def stopped() -> bool:
            return stop.is_set() or (cancel is not None and cancel())

        def run() -> tuple[T, float]:
            start = time.perf_counter()
            return fn(stopped), time.perf_counter() - start

        return SideJob(self._pool.submit(run), stop)

    def close(self) -> None:
        """Wait for the worker to finish what it runs, then end the thread (a reload tears it down)."""
        self._pool.shutdown(wait=True)
