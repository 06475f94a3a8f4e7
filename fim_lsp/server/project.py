"""The workspace as the models may see it: its folders, what privacy allows of them, the recent edits, the
definition index (built in the background) and the gatherer that turns them into a request's context.

The server feeds it LSP events already turned into paths and lines; it knows no LSP types. Everything here
is rebuilt when the folders change or when a setting that decides what may be read changes (the exclude
globs, the size cap, the index bounds); the edit ranges survive that."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from ..context import ContextGatherer, ContextSettings, Cursor, DefinitionIndex, EditTracker, IndexProgress, Privacy
from ..engine.requests import ProjectContext
from .file_events import FileEvents

log = logging.getLogger("fim_lsp.server")
OnIndexProgress = Callable[[IndexProgress], None]
# the settings that decide what may be read, and so what the index holds: a change rebuilds it
_READING = ("context_exclude", "context_max_file_bytes", "index_max_files", "index_max_read_bytes",
            "index_max_memory_bytes")


class Project:
    def __init__(self, settings: ContextSettings = ContextSettings()) -> None:
        self.settings = settings
        self.roots: tuple[Path, ...] = ()
        self.edits = EditTracker()
        self.index: DefinitionIndex | None = None
        self._lock = threading.Lock()  # rebuilds (event loop) against gathers (a thread of their own)
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._files = FileEvents(self._apply_change)  # saves and watched files, off the event loop
        self._build()

    def _build(self) -> None:
        s = self.settings
        privacy = Privacy(self.roots, s.context_exclude, s.context_max_file_bytes)
        old, self.index = self.index, (DefinitionIndex(privacy, s.index_bounds()) if self.roots else None)
        self.gatherer = ContextGatherer(privacy, self.edits, self.index, s)
        if old is not None:
            old.close()

    @property
    def privacy(self) -> Privacy:
        return self.gatherer.privacy

    def set_roots(self, roots: list[Path]) -> bool:
        """The workspace folders (absolute, existing or not); True when they changed (then the index
        must be started again)."""
        new = tuple(dict.fromkeys(Path(r).absolute() for r in roots))
        if new == self.roots:
            return False
        with self._lock:
            self.roots = new
            self._build()
        return True

    def configure(self, settings: ContextSettings) -> bool:
        """New context settings; True when the index was rebuilt (to be started again)."""
        if settings == self.settings:
            return False
        rebuild = any(getattr(settings, k) != getattr(self.settings, k) for k in _READING)
        with self._lock:
            self.settings = settings
            if rebuild:
                self._build()
            else:
                self.gatherer.settings = settings
        return rebuild

    def start_index(self, on_progress: OnIndexProgress | None = None) -> bool:
        """Build the definition index in the background; False when there is nothing to build (no
        folder, project context or definitions off)."""
        s = self.settings
        if self.index is None or not (s.project_context and s.context_definitions):
            return False
        self.index.start(on_progress)
        return True

    # -- events from the editor ----------------------------------------------------------------

    def edited(self, path: Path, start_line: int, end_line: int, new_text: str) -> None:
        self.edits.record(path, start_line, end_line, new_text)

    def edited_whole(self, path: Path, old_text: str, new_text: str) -> None:
        self.edits.record_full(path, old_text, new_text)

    def closed(self, path: Path) -> None:
        """The document was closed: its chunks and its edit ranges leave the context."""
        self.edits.forget(path)
        self.gatherer.forget(path)

    def changed_on_disk(self, path: Path, deleted: bool = False) -> None:
        """Saved, created, changed or deleted (didSave, watched files): the index follows, on the
        file-events thread (this returns at once)."""
        self._files.put(Path(path), deleted)

    def _apply_change(self, path: Path, deleted: bool) -> None:
        """On the file-events thread."""
        self.gatherer.forget(path)
        index = self.index
        if index is None:
            self.privacy.forget(path)
        elif deleted:
            index.remove(path)
        else:
            index.update(path)

    # -- requests ------------------------------------------------------------------------------

    def gather(self, path: Path | None, text: str, line: int, window: tuple[int, int],
               open_docs: Mapping[Path, str]) -> ProjectContext | None:
        """The request's context within the deadline (called off the event loop); None for the local
        window alone: context off, a document that is not a file, or a file privacy refuses."""
        if path is None or not self.settings.project_context:
            return None
        with self._lock:
            gatherer = self.gatherer
        return gatherer.gather(Cursor(path, text, line, window), open_docs)

    async def gather_off_loop(self, path: Path | None, text: str, line: int, window: tuple[int, int],
                              open_docs: Mapping[Path, str]) -> ProjectContext | None:
        """`gather` on the project's own daemon thread, awaited from the event loop. Not the loop's
        default executor: its threads are joined when the loop closes, and a signal that arrives while a
        stopping server waits on that join finds no handler left (a second Ctrl-C must exit at once)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[ProjectContext | None] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if not done.done():
                done.set_exception(error) if error is not None else done.set_result(result)

        def job() -> None:
            try:
                result, error = self.gather(path, text, line, window, open_docs), None
            except Exception as err:  # noqa: BLE001 - handed to the awaiting request
                result, error = None, err
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:
                pass  # the loop closed: the server is exiting

        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="fim-lsp-context", daemon=True)
            self._thread.start()
        self._jobs.put(job)
        return await done

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def stats(self) -> dict[str, object]:
        index = self.index
        progress = index.progress if index is not None else None
        return {"roots": [str(r) for r in self.roots], "indexFiles": index.files() if index else 0,
                "indexBytes": index.memory_bytes() if index else 0,
                "indexProgress": dataclasses.asdict(progress) if progress is not None else None,
                "editedRanges": len(self.edits.recent()), "pendingFileEvents": self._files.pending()}

    def close(self) -> None:
        self._files.close()
        if self._thread is not None:
            self._jobs.put(None)
        if self.index is not None:
            self.index.close()
