"""Files changed on disk (`didSave`, `workspace/didChangeWatchedFiles`), applied to the definition index
on a thread of their own.

Applying one means reading the file, checking it against the ignore rules and parsing it. A branch
switch reports thousands of files in one notification: done on the event loop, that held every request
behind it for seconds. Here the handler only queues the paths. Events for the same path are coalesced
(the last one says whether it is gone) and applied in the order first reported; a request meanwhile
gathers from the index as it is, and sees each file once it has been applied."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger("fim_lsp.server")
Apply = Callable[[Path, bool], None]  # (path, deleted)


class FileEvents:
    def __init__(self, apply: Apply) -> None:
        self._apply = apply
        self._pending: dict[Path, bool] = {}  # path -> deleted; insertion order is the order reported
        self._busy = 0  # events taken off the queue and not yet applied
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, path: Path, deleted: bool = False) -> None:
        """Queue a change; returns at once."""
        with self._cond:
            if self._closed:
                return
            self._pending[path] = deleted  # an update of a path still queued keeps its place
            if self._thread is None:
                # daemon: a file being parsed must not hold the process at exit
                self._thread = threading.Thread(target=self._run, name="fim-lsp-file-events", daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        """Events reported and not yet applied (for fimLsp.stats, and tests that must wait for them)."""
        with self._cond:
            return len(self._pending) + self._busy

    def close(self, timeout: float = 2.0) -> None:
        """Drop what is queued and stop the thread (after the event it is applying, if any)."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                path = next(iter(self._pending))
                deleted = self._pending.pop(path)
                self._busy += 1
            try:
                self._apply(path, deleted)
            except Exception:  # noqa: BLE001 - one unreadable file must not stop the others
                log.warning("could not index %s", path, exc_info=True)
            finally:
                with self._cond:
                    self._busy -= 1
