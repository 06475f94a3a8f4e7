"""Deleting what a sandboxed program left behind, whatever its shape: any depth (no recursion, one
open directory at a time, names relative to it, so neither the stack nor PATH_MAX nor the fd limit
grows with depth), any permission bits (the harness's own user: each directory is made 0700 first;
root needs nothing), no space needed (only unlinks and rmdirs). A failure (an immutable file, a busy
mount point: things the program itself cannot make) leaves the rest in place and is reported as False,
never raised, so that no leftover can stop an eval.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: Path) -> bool:
    """Delete ``path`` (a file, a link or a directory tree). True when nothing is left; never raises."""
    path = Path(path)
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return True
    except (IsADirectoryError, PermissionError):
        pass  # Linux answers EISDIR for a directory; EPERM on some file systems
    except OSError:
        return False
    try:
        parent = os.open(path.parent, _DIR)
    except OSError:
        return False
    try:
        _remove_dir(parent, path.name)
    except OSError as err:
        print(f"warning: could not remove {path}: {err}", file=sys.stderr)
    finally:
        os.close(parent)
    return not os.path.lexists(path)


def _open_dir(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, _DIR, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=dir_fd)  # the program's own directory, left unreadable (not root)
        return os.open(name, _DIR, dir_fd=dir_fd)


def _empty_files(fd: int) -> str | None:
    """Unlink every entry of ``fd`` that is not a directory; the name of a subdirectory left, if any."""
    if os.geteuid() != 0:
        try:
            os.fchmod(fd, 0o700)
        except OSError:
            pass
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    sub = None
    for name, is_dir in entries:
        if is_dir:
            sub = name
            continue
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
    return sub


def _remove_dir(parent: int, name: str) -> None:
    """Depth first with one open directory: go down to a directory without subdirectories, empty it,
    go back up through "..", remove it; the names on the way are the only state kept."""
    names = [name]
    cur = _open_dir(name, parent)
    try:
        while True:
            sub = _empty_files(cur)
            if sub is not None:
                nxt = _open_dir(sub, cur)
                os.close(cur)
                cur = nxt
                names.append(sub)
                continue
            up = parent if len(names) == 1 else os.open("..", _DIR, dir_fd=cur)
            os.close(cur)
            cur = -1
            os.rmdir(names.pop(), dir_fd=up)
            if not names:
                return
            cur = up
    finally:
        if cur >= 0:
            os.close(cur)
