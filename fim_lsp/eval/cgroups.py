"""Per-slot control groups that cap a sandboxed task's total memory and process count (all its
processes together, which rlimits cannot do). cgroup v2 where this process's own group can hold
children with the memory and pids controllers; else the v1 memory and pids hierarchies; else none
(the sandbox then relies on per-process rlimits; eval/README.md says what that leaves open).
"""
from __future__ import annotations

import os
import signal
import time
from functools import lru_cache
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PREFIX = "fim-eval"


def _own(hierarchy: str) -> str | None:
    """This process's path in a hierarchy ('' = v2, else a v1 controller), from /proc/self/cgroup."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if (hierarchy == "" and ctrls == "") or hierarchy in ctrls.split(","):
            return path
    return None


def _parents() -> tuple[str, list[Path]]:
    """('v2'|'v1'|'none', the folders under which this eval makes its groups)."""
    if os.geteuid() != 0:
        return "none", []
    own = _own("")
    v2 = ROOT / (own or "").lstrip("/") if (ROOT / "cgroup.controllers").exists() else None
    if v2 is not None and {"memory", "pids"} <= set((v2 / "cgroup.subtree_control").read_text().split()):
        return "v2", [v2]
    v1 = []
    for ctrl in ("memory", "pids"):
        path = _own(ctrl)
        if path is None or not (ROOT / ctrl).is_dir():
            return "none", []
        v1.append(ROOT / ctrl / path.lstrip("/"))
    return "v1", v1


@lru_cache(maxsize=1)
def mode() -> str:
    """Probe once by making (and removing) a real group: read-only or missing hierarchies give 'none'."""
    kind, parents = _parents()
    if kind == "none":
        return kind
    probe = f"{PREFIX}-probe-{os.getpid()}"
    try:
        for p in parents:
            (p / probe).mkdir()
        _write_limits([p / probe for p in parents], kind, 64 << 20, 8)
        return kind
    except OSError:
        return "none"
    finally:
        for p in parents:
            try:
                (p / probe).rmdir()
            except OSError:
                pass


def _write_limits(dirs: list[Path], kind: str, memory: int, pids: int) -> None:
    for d in dirs:
        if kind == "v2":
            (d / "memory.max").write_text(str(memory))
            (d / "memory.swap.max").write_text("0")
            (d / "pids.max").write_text(str(pids))
        elif (d / "memory.limit_in_bytes").exists():
            files = [d / "memory.limit_in_bytes"]
            if (d / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: no swap either
                # memory must stay <= memory+swap at every step: raise the latter first, lower it last
                grow = memory > int(files[0].read_text())
                files = [d / "memory.memsw.limit_in_bytes", *files] if grow else [*files, d / "memory.memsw.limit_in_bytes"]
            for f in files:
                f.write_text(str(memory))
        else:
            (d / "pids.max").write_text(str(pids))


def slot_groups(name: str, memory_mb: int, pids: int) -> list[Path]:
    """The groups of one sandbox slot (made on first use), with these limits; [] without cgroups."""
    kind = mode()
    if kind == "none":
        return []
    dirs = [p / f"{PREFIX}-{name}" for p in _parents()[1]]
    for d in dirs:
        d.mkdir(exist_ok=True)
    _write_limits(dirs, kind, memory_mb << 20, pids)
    return dirs


def kill(dirs: list[Path]) -> None:
    """Kill every process left in the groups (v2: cgroup.kill; v1: each listed pid, until empty)."""
    for d in dirs:
        if (d / "cgroup.kill").exists():
            (d / "cgroup.kill").write_text("1")
            continue
        for _ in range(100):
            pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)


def remove_block(block: int) -> None:
    """A claimed uid block's groups left by a killed eval: kill what is inside, then remove them."""
    if mode() == "none":
        return
    for parent in _parents()[1]:
        for d in parent.glob(f"{PREFIX}-{block}-*"):
            kill([d])
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)  # exiting tasks leave the group a moment after SIGKILL

