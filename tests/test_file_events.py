"""The file-events queue the server hands saves and watched-file changes to: the notification's handler
returns at once while a file is being applied, events for one path are coalesced, order is kept, and an
error in one file does not stop the rest. A blocking `apply` holds the worker, so nothing here is timed."""
from __future__ import annotations

import threading
from pathlib import Path

from fim_lsp.server.file_events import FileEvents


class Held:
    """An `apply` that records its calls and blocks on the first until released."""

    def __init__(self, fail: set[Path] | None = None) -> None:
        self.calls: list[tuple[Path, bool]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail or set()
        self.done = threading.Condition()

    def __call__(self, path: Path, deleted: bool) -> None:
        self.entered.set()
        self.release.wait(30)
        with self.done:
            self.calls.append((path, deleted))
            self.done.notify_all()
        if path in self.fail:
            raise OSError(f"cannot read {path}")

    def wait_calls(self, n: int) -> list[tuple[Path, bool]]:
        with self.done:
            assert self.done.wait_for(lambda: len(self.calls) >= n, 30), self.calls
        return self.calls


def test_put_returns_while_a_file_is_applied_and_events_per_path_coalesce() -> None:
    apply = Held()
    events = FileEvents(apply)
    a, b, c = Path("/w/a.py"), Path("/w/b.py"), Path("/w/c.py")
    events.put(a)
    assert apply.entered.wait(30)  # the worker holds `a`; every put below must still return
    events.put(b)
    events.put(c)
    events.put(b, deleted=True)  # b: changed, then deleted: one event, in b's first place
    assert events.pending() == 3  # a (being applied), b, c
    apply.release.set()
    assert apply.wait_calls(3) == [(a, False), (b, True), (c, False)]
    events.close()


def test_a_failing_file_does_not_stop_the_others_and_pending_reaches_zero() -> None:
    bad, good = Path("/w/bad.py"), Path("/w/good.py")
    apply = Held(fail={bad})
    apply.release.set()
    events = FileEvents(apply)
    events.put(bad)
    events.put(good)
    assert apply.wait_calls(2) == [(bad, False), (good, False)]
    for _ in range(3000):
        if events.pending() == 0:
            break
        threading.Event().wait(0.01)
    assert events.pending() == 0
    events.close()


def test_close_drops_what_is_queued_and_later_events() -> None:
    apply = Held()
    events = FileEvents(apply)
    events.put(Path("/w/a.py"))
    assert apply.entered.wait(30)
    events.put(Path("/w/b.py"))
    apply.release.set()
    events.close()
    events.put(Path("/w/c.py"))
    assert [p.name for p, _ in apply.calls] == ["a.py"] and events.pending() == 0


def test_the_project_queues_a_change_and_the_index_takes_it_off_the_callers_thread(tmp_path: Path) -> None:
    """Project.changed_on_disk (what didSave and watched files call on the event loop) returns while
    the real index is still held in its update; the definition is found once it is released."""
    from fim_lsp.server.project import Project

    root = tmp_path / "ws"
    root.mkdir()
    project = Project()
    project.set_roots([root])
    index = project.index
    assert index is not None
    real_update, entered, release = index.update, threading.Event(), threading.Event()

    def held_update(path: Path) -> None:
        entered.set()
        release.wait(30)
        real_update(path)

    index.update = held_update  # type: ignore[method-assign]
    made = root / "made.py"
    made.write_text("def made_here(x):\n    return x\n")
    try:
        project.changed_on_disk(made)
        assert entered.wait(30) and project.stats()["pendingFileEvents"] == 1
        assert index.lookup("made_here") == ()
        release.set()
        for _ in range(3000):
            if project.stats()["pendingFileEvents"] == 0:
                break
            threading.Event().wait(0.01)
        assert [item.path for item in index.lookup("made_here")] == [made]
    finally:
        release.set()
        project.close()
