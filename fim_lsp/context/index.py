"""A workspace index of definitions: name -> where it is defined and its first lines.

Built in the background over the workspace folders (a progress callback reports it), kept current
one file at a time (`update` on save or a watched-file change, `remove` on delete), and bounded: at
most `max_files` files, `max_read_bytes` read in all and `max_memory_bytes` of definitions held; past
a bound it stops growing and says which bound it hit. It reads only what `Privacy` allows."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .definitions import Definition, find_definitions, language_of
from .privacy import Privacy

log = logging.getLogger("fim_lsp.context")

# Folders of generated or installed code: never the user's own, and often huge, ignored or not.
SKIPPED_FOLDERS = frozenset({"node_modules", "__pycache__", ".venv", "venv", ".tox", ".nox", ".mypy_cache",
                             ".pytest_cache", ".ruff_cache", "site-packages", "bower_components", ".gradle"})
ENTRY_OVERHEAD = 200  # bytes per definition besides its text (the object, its strings, the dict slots)


@dataclass(frozen=True)
class IndexedDefinition:
    path: Path  # absolute
    definition: Definition


@dataclass(frozen=True)
class IndexProgress:
    files_done: int
    files_total: int  # files found to index (known once the folders are listed)
    definitions: int
    finished: bool
    stopped_by: str | None = None  # the bound that stopped the build, if one did


@dataclass(frozen=True)
class IndexBounds:
    max_files: int = 10_000
    max_read_bytes: int = 100_000_000
    max_memory_bytes: int = 64_000_000


ProgressCallback = Callable[[IndexProgress], None]


class DefinitionIndex:
    def __init__(self, privacy: Privacy, bounds: IndexBounds = IndexBounds()) -> None:
        self.privacy = privacy
        self.bounds = bounds
        self._by_name: dict[str, list[IndexedDefinition]] = {}
        self._by_path: dict[Path, list[IndexedDefinition]] = {}
        self._memory = 0
        self._read = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._building = False
        self._touched: set[Path] = set()  # updated or removed while the build ran: the build leaves them
        self.progress = IndexProgress(0, 0, 0, False)

    # -- queries -------------------------------------------------------------------------------

    def lookup(self, name: str) -> tuple[IndexedDefinition, ...]:
        with self._lock:
            return tuple(self._by_name.get(name, ()))

    def files(self) -> int:
        with self._lock:
            return len(self._by_path)

    def memory_bytes(self) -> int:
        with self._lock:
            return self._memory

    # -- building ------------------------------------------------------------------------------

    def start(self, on_progress: ProgressCallback | None = None) -> None:
        """Build in a background thread; `on_progress` is called from it (at most every 0.2 s, and once
        when it ends)."""
        self._thread = threading.Thread(target=self.build, args=(on_progress,), name="fim-lsp-index", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """True when the build has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def close(self) -> None:
        self._stop.set()
        self.wait(5)

    def build(self, on_progress: ProgressCallback | None = None) -> IndexProgress:
        """Index every allowed source file of the workspace folders, within the bounds."""
        with self._lock:
            self._building = True
        files: list[Path] = []
        stopped: str | None = None
        for path in self._sources():
            if len(files) >= self.bounds.max_files:
                stopped = f"max_files ({self.bounds.max_files})"
                break
            files.append(path)
        done, last = 0, 0.0
        for path in files:
            if self._stop.is_set():
                stopped = stopped or "closed"
                break
            try:
                why = self._add(path, from_build=True)
            except Exception:  # noqa: BLE001 - one file that cannot be indexed must not end the build
                log.debug("index: skipped %s", path, exc_info=True)
                why = None
            if why is not None:
                stopped = why
                break
            done += 1
            if on_progress is not None and time.monotonic() - last > 0.2:
                last = time.monotonic()
                on_progress(self._report(done, len(files), False, None))
        with self._lock:
            self._building = False
            self._touched.clear()
        self.progress = self._report(done, len(files), True, stopped)
        if on_progress is not None:
            on_progress(self.progress)
        return self.progress

    def _report(self, done: int, total: int, finished: bool, stopped: str | None) -> IndexProgress:
        with self._lock:
            count = sum(len(v) for v in self._by_path.values())
        self.progress = IndexProgress(done, total, count, finished, stopped)
        return self.progress

    def _sources(self) -> Iterator[Path]:
        for root in self.privacy.roots:
            for path in self.privacy.walk(root, skip=SKIPPED_FOLDERS):
                if language_of(path) is not None:
                    yield path

    # -- keeping current -----------------------------------------------------------------------

    def update(self, path: Path | str) -> None:
        """A file was saved, created or changed on disk: index it again (or drop it when it is no
        longer allowed or no longer there). An ignore file changing re-reads the ignore rules."""
        path = Path(path).absolute()
        self.privacy.forget(path)
        if path.name == ".gitignore" or path.parts[-3:] == (".git", "info", "exclude"):
            self.privacy.forget_ignores()
            return
        with self._lock:
            if self._building:
                self._touched.add(path)
        if language_of(path) is None:
            return
        self._add(path, from_build=False)

    def remove(self, path: Path | str) -> None:
        path = Path(path).absolute()
        self.privacy.forget(path)
        with self._lock:
            if self._building:
                self._touched.add(path)
            self._drop(path)

    def _drop(self, path: Path) -> None:
        """Under the lock. The file's own entries are told apart by identity: a name such as `__init__`
        or `run` has thousands of entries in a large workspace, and comparing each one's Path made every
        save of a file that defines it cost milliseconds per definition."""
        items = self._by_path.pop(path, ())
        mine = {id(item) for item in items}
        for name in {item.definition.name for item in items}:
            same = self._by_name.get(name)
            if same is not None:
                same[:] = [d for d in same if id(d) not in mine]
                if not same:
                    del self._by_name[name]
        for item in items:
            self._memory -= len(item.definition.text) + ENTRY_OVERHEAD

    def _add(self, path: Path, from_build: bool) -> str | None:
        """Index one file. Returns the bound that stops the build, or None."""
        text = self.privacy.read(path)
        with self._lock:
            if from_build and path in self._touched:
                return None  # update() or remove() already had the last word
            self._drop(path)
            if text is None:
                return None
            self._read += len(text)
            if self._read > self.bounds.max_read_bytes:
                return f"max_read_bytes ({self.bounds.max_read_bytes})"
        found = [IndexedDefinition(path, d) for d in find_definitions(path, text)]
        size = sum(len(d.definition.text) + ENTRY_OVERHEAD for d in found)
        with self._lock:
            if self._memory + size > self.bounds.max_memory_bytes:
                return f"max_memory_bytes ({self.bounds.max_memory_bytes})"
            if not from_build and path not in self._by_path and len(self._by_path) >= self.bounds.max_files:
                return f"max_files ({self.bounds.max_files})"
            self._drop(path)
            self._by_path[path] = found
            self._memory += size
            for item in found:
                self._by_name.setdefault(item.definition.name, []).append(item)
        return None
