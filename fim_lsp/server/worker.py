"""One thread for all model work (one GPU queue), so the event loop never blocks on a model.

The latest completion wins, across documents (the user looks at one cursor): submitting a job with
`supersede` cancels every completion job still queued or running, whatever its document. A cancelled
job answers at once (its future fails with Cancelled right away) and its model loop, if running, stops
at the next decode/diffusion step when it polls the flag. Loads and reconfigurations are not
superseded; they cancel the completions ahead of them instead (`cancel_completions`)."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Callable

from ..engine.results import CancelCheck, Cancelled

log = logging.getLogger("fim_lsp.server.worker")
SUPERSEDED, CANCELLED = "superseded", "cancelled"


class Job:
    def __init__(self, fn: Callable[[CancelCheck], Any], key: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.key = key
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.flag = threading.Event()
        self.reason: str | None = None
        self.waiters = 0  # requests awaiting this job; the last one to give up cancels it
        # asyncio cancels an awaited future when the awaiting task is cancelled ($/cancelRequest):
        # the model loop must hear about that too.
        self.future.add_done_callback(self._on_done)

    def _on_done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self.reason = self.reason or CANCELLED
            self.flag.set()
        else:
            future.exception()  # marks it retrieved: a cancelled job may have no one left awaiting it

    def cancelled(self) -> bool:
        return self.flag.is_set()

    def cancel(self, reason: str) -> None:
        """Event loop thread only."""
        if self.flag.is_set():
            return
        self.reason = reason
        self.flag.set()
        if not self.future.done():
            self.future.set_exception(Cancelled(reason))

    def _finish(self, ok: bool, value: Any) -> None:
        if self.future.done():
            return  # cancelled while it ran: the answer already went out
        if ok:
            self.future.set_result(value)
        else:
            self.future.set_exception(value)


class ModelWorker:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # The loop may not exist yet (the server is built before it serves): the first submit binds it.
        self.loop = loop
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._live: set[Job] = set()  # completion jobs queued or running
        self._current: Job | None = None
        self._closed = False
        self.busy = False
        self._thread = threading.Thread(target=self._run, name="fim-lsp-model", daemon=True)

    def submit(self, fn: Callable[[CancelCheck], Any], key: str | None = None, supersede: bool = False) -> Job:
        """Event loop thread only. `fn` gets the cancel check to hand to the engine. With `supersede`
        (a completion), every other completion job is cancelled first; `key` names its document."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if self._thread.ident is None:
            self._thread.start()
        job = Job(fn, key, self.loop)
        if supersede:
            self.cancel_completions(SUPERSEDED)
            self._live.add(job)
            job.future.add_done_callback(lambda _f, j=job: self._live.discard(j))
        self._queue.put(job)
        return job

    def cancel_completions(self, reason: str = CANCELLED) -> None:
        """Event loop thread only: cancel every completion job, queued or running."""
        for job in list(self._live):
            job.cancel(reason)

    def cancel_key(self, key: str, reason: str = CANCELLED) -> None:
        for job in [j for j in self._live if j.key == key]:
            job.cancel(reason)

    def stop(self) -> None:
        """Event loop thread only: stop every running or queued request, then the thread."""
        self.cancel_completions(CANCELLED)
        self._queue.put(None)

    def close(self, timeout: float) -> bool:
        """Any thread, once the event loop is gone: flag every job to stop, then wait for the thread.
        A model loop still inside torch when the interpreter exits aborts the process (SIGABRT), so
        the caller exits only after this. False when the thread outlived `timeout` (e.g. mid-load)."""
        self._closed = True
        for job in [*self._live, self._current]:
            if job is not None:
                job.flag.set()
        self._queue.put(None)
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or self._closed:
                return
            if job.cancelled():
                continue  # superseded while queued: never touches the model
            self.busy, self._current = True, job
            try:
                value, ok = job.fn(job.flag.is_set), True
            except BaseException as err:  # noqa: BLE001 - the worker must outlive any job
                # whoever awaits the job reports the failure, with the context to explain it
                log.debug("model job ended with %r", err)
                value, ok = err, False
            finally:
                self.busy, self._current = False, None
            try:
                self.loop.call_soon_threadsafe(job._finish, ok, value)
            except RuntimeError:
                return  # the event loop is closed: the server is exiting
