"""Per-task results on disk: append-only jsonl (flushed per record), resume, shard files, merge."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Iterable

RESULTS = "results.jsonl"
RUN_INFO = "run.json"


def shard_name(shard: tuple[int, int] | None) -> str:
    if shard is None or shard[1] == 1:
        return RESULTS
    i, n = shard
    return f"results.shard-{i}-of-{n}.jsonl"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard wants i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def record_key(rec: dict[str, Any]) -> tuple[str, int]:
    return rec["task_id"], int(rec.get("sample", 0))


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records; a torn last line (killed mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _drop_torn_tail(path: Path) -> None:
    """Truncate a half-written last line so the next append starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)


class Appender:
    """Thread-safe append of one JSON line per finished task; flushed so a kill loses nothing written."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(path)
        self._fh = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, rec: dict[str, Any]) -> None:
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def check_run_info(out: Path, info: dict[str, Any]) -> None:
    """Refuse to resume into a folder whose stored settings differ: mixed results would be meaningless."""
    path = out / RUN_INFO
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in info.items() if k not in ("shard",) and old.get(k) != v}
        if diff:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise SystemExit(f"{out} holds a run with other settings ({lines}); use another --out or delete it")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def finish_shard(out: Path, shard: tuple[int, int]) -> bool:
    """Mark this shard done; True for the one shard that finds every shard done (it then merges).
    The check runs under an flock in the run folder, so of shards finishing together exactly one sees
    them all; a shard stopped early leaves no mark."""
    import fcntl

    i, n = shard
    with open(out / "merge.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (out / f"done.shard-{i}-of-{n}").touch()
        return all((out / f"done.shard-{k}-of-{n}").exists() for k in range(n))


def merge(out: Path, extra: Iterable[Path] = ()) -> list[dict[str, Any]]:
    """Join every shard file (and extra files) of a run into results.jsonl; duplicates keep the first."""
    files = sorted(out.glob("results.shard-*.jsonl")) + list(extra)
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in read_records(out / RESULTS):
        seen.setdefault(record_key(rec), rec)
    for f in files:
        for rec in read_records(f):
            seen.setdefault(record_key(rec), rec)
    tmp = out / (RESULTS + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in seen.values():
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(out / RESULTS)
    return list(seen.values())
