"""Run one untrusted program in a throw-away process, with limits. One job: contain it.

The harness process never forks: it starts the helper program ``jail.py`` with ``subprocess``
(vfork + exec, no Python code between them) and the helper confines itself, then execs the program.
Layers, and what each does and does not do, are listed in eval/README.md. In short:
- always: a fresh work dir (cwd, HOME, TMPDIR), a minimal environment, stdin /dev/null, stdout and
  stderr through pipes read to a bounded size, rlimits, no new privileges, a seccomp filter against user
  namespaces, a parent-death signal, and a kill of the whole session at the timeout;
- as root: a per-slot unprivileged uid from a block that this process owns (an flock in a fixed place);
  a per-slot cgroup capping memory and processes of the whole task where the machine allows one;
- as root with namespaces: new PID, mount, network, IPC and UTS namespaces; /proc and /sys read-only;
  empty /tmp, /run, /var/tmp; a private /dev/shm; the root mount read-only.

A program passes only when it exits 0 *and* has written the caller's ``expect`` bytes on fd 3, a pipe
that only the harness reads (the wrapper emits them after the tests): an early exit with status 0 is
``exited early``, not a pass.
"""
from __future__ import annotations

import os
import queue
import selectors
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Callable

from . import cgroups
from .wipe import remove_tree

# uids from here up run the programs (no passwd entry needed); below 100000, where subordinate uid
# ranges usually start, and disjoint from 61000-65095, which older versions locked under TMPDIR
BASE_UID = 66000
SLOTS_PER_PROCESS = 64  # each eval process owns a block of uids, one per worker slot
MAX_BLOCKS = 64
JAIL = Path(__file__).with_name("jail.py")
STARTED = b"S"  # what the helper writes on the channel just before it execs the program
CHANNEL_LIMIT = 4096
START_TRIES = 3  # util-linux 2.38's unshare failed ~1 start in 1000; a failed start is retried


def state_dir() -> Path:
    """One fixed place per user, never under TMPDIR: two evals with different TMPDIRs must see the
    same uid-block locks. Traversable (0711) so a worker uid can reach its own work dir by path."""
    path = Path(f"/var/tmp/fim-eval-{os.geteuid()}")
    path.mkdir(mode=0o711, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RuntimeError(f"{path} is not a directory owned by this user and writable only by it")
    return path


@dataclass
class Limits:
    timeout: float = 3.0
    memory_mb: int | None = 1024  # RLIMIT_AS per process; None for runtimes that reserve big virtual ranges
    processes: int = 64  # RLIMIT_NPROC of the worker uid and the cgroup's pids.max (threads count too)
    file_mb: int = 16
    output_limit: int = 64 * 1024  # the last this many bytes of stdout and of stderr are kept
    group_memory_mb: int = 1024  # all processes of the task together (cgroup), swap included
    work_mb: int = 64  # namespaces mode: the work dir is a tmpfs of this size (memory, in the cgroup)


@dataclass
class ExecResult:
    status: str  # passed, failed, timeout, exited early, error (the sandbox did not start), cancelled
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _world_executable(path: str) -> bool:
    """Whether a user with no special rights can run ``path``: every directory on the way needs o+x."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & 0o001:
            return False
        return all(p.stat().st_mode & 0o001 for p in real.parents)
    except OSError:
        return False


@lru_cache(maxsize=1)
def python_executable() -> str:
    """The interpreter for Python test programs. Under a dropped uid it must be reachable by that uid:
    an interpreter installed under /root (pyenv) is not, so fall back to a system python3 (the tests
    need only the standard library)."""
    if os.geteuid() != 0 or _world_executable(sys.executable):
        return sys.executable
    for cand in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.exists(cand) and _world_executable(cand):
            return cand
    raise RuntimeError(f"no python3 that the sandbox uid can run ({sys.executable} is private to root)")


# the first sandbox runs start in several judging threads at once: one of them probes and claims
_setup = threading.RLock()


def isolation() -> str:
    """'namespaces' (root, and a probe run in new namespaces passes), 'uid' (root), or 'rlimits'."""
    with _setup:
        return _isolation()


@lru_cache(maxsize=1)
def _isolation() -> str:
    if os.geteuid() != 0:
        return "rlimits"
    probe = _run_once(["/bin/sh", "-c", "exit 0"], {}, Limits(timeout=10), 0, None, None, "namespaces")
    return "namespaces" if probe.passed else "uid"


_held_locks: list[int] = []


def _uid_block() -> int:
    with _setup:
        return _claim_block()


@lru_cache(maxsize=1)
def _claim_block() -> int:
    """Claim a block of uids and work dirs for this process (an flock held until it exits), so two
    evals on one machine never share a uid. Every block nobody holds is cleared on the way: its
    owner is dead (a lock dies with its process), so whatever it left behind goes."""
    import fcntl

    locks = state_dir() / "locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    mine, free = None, []
    # Another eval starting at the same moment holds every free block for the instant it clears them,
    # so a scan that finds none is tried again for a while before it means "all in use".
    deadline = time.monotonic() + 10
    while mine is None:
        for block in range(MAX_BLOCKS):
            fd = os.open(locks / f"{block}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            free.append((block, fd))
            if mine is None:
                mine = block
                _held_locks.append(fd)  # kept open for the life of the process
        if mine is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"all {MAX_BLOCKS} sandbox uid blocks are in use")
            time.sleep(0.05)
    _clear_blocks([b for b, _ in free])
    for block, fd in free:
        if block != mine:
            os.close(fd)
    return mine


def _clear_blocks(blocks: list[int]) -> None:
    """Kill programs of these blocks that survived their eval, remove their cgroups and work dirs.
    Nothing left there stops this eval: a failure is a warning (wipe.py says what can fail)."""
    if os.geteuid() == 0:
        uids = {BASE_UID + b * SLOTS_PER_PROCESS + s for b in blocks for s in range(SLOTS_PER_PROCESS)}
        for _ in range(20):
            pids = [pid for pid, uid in _processes() if uid in uids]
            if not pids:
                break
            for pid in pids:
                _kill(pid)
            time.sleep(0.05)
        for b in blocks:
            try:
                cgroups.remove_block(b)
            except OSError as err:
                print(f"warning: cgroups of sandbox block {b} not removed: {err}", file=sys.stderr)
    for b in blocks:
        remove_tree(_work_root(b))


def _processes() -> list[tuple[int, int]]:
    """(pid, real uid) of every live process."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out.append((int(p.name), p.stat().st_uid))
            except OSError:
                pass
    return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _work_root(block: int) -> Path:
    return state_dir() / "work" / str(block)


def slot_uid(slot: int) -> int:
    if not 0 <= slot < SLOTS_PER_PROCESS:
        raise ValueError(f"sandbox slot {slot} out of range (at most {SLOTS_PER_PROCESS} workers)")
    return BASE_UID + _uid_block() * SLOTS_PER_PROCESS + slot


def _rlimits(limits: Limits) -> dict[str, int]:
    cpu = max(1, int(limits.timeout) + 1)
    out = {"RLIMIT_CPU": cpu, "RLIMIT_FSIZE": limits.file_mb << 20, "RLIMIT_CORE": 0, "RLIMIT_NOFILE": 256,
           "RLIMIT_NPROC": limits.processes}
    if limits.memory_mb is not None:
        out["RLIMIT_AS"] = limits.memory_mb << 20
    return out


def _jail() -> list[str]:
    """The helper's command: the programs' interpreter when the eval's own is private to root (it
    starts faster there than a venv's), no site, no user paths."""
    return [python_executable(), "-I", "-S", str(JAIL)]


def _kill_uid(uid: int) -> None:
    """Every process of a worker uid: kill(-1) from that uid, in the helper (never a fork here)."""
    subprocess.run([*_jail(), "--kill-uid", str(uid)], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=30)


def run_program(argv: list[str], files: dict[str, str], limits: Limits | None = None, slot: int = 0,
                extra_env: dict[str, str] | None = None, expect: bytes | None = None,
                cancel: threading.Event | None = None) -> ExecResult:
    """Write ``files`` into a fresh work dir and run ``argv`` there under the limits. With ``expect``,
    a pass also needs those bytes on fd 3 (see the module doc).

    ``slot`` picks the worker uid; concurrent calls must use different slots (SlotPool does that).
    ``cancel`` set: the program is killed at once and the result is ``cancelled``.
    """
    limits = limits or Limits()
    for _ in range(START_TRIES):
        res = _run_once(argv, files, limits, slot, extra_env, expect, isolation(), cancel)
        if res.status != "error":
            break
    return res


def _run_once(argv: list[str], files: dict[str, str], limits: Limits, slot: int, extra_env: dict[str, str] | None,
              expect: bytes | None, mode: str, cancel: threading.Event | None = None) -> ExecResult:
    uid = slot_uid(slot) if mode != "rlimits" else None
    root = _work_root(_uid_block())
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(root.parent, 0o711)
    work = Path(tempfile.mkdtemp(prefix="fim-eval-", dir=root))
    inside = f"/tmp/{work.name}" if mode == "namespaces" else str(work)
    try:
        for name, text in files.items():
            (work / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        if mode != "namespaces":  # there the helper copies the files into the sandbox's own tmpfs
            (work / "home").mkdir()
            if uid is not None:
                for p in [work, work / "home", *(work / n for n in files)]:
                    os.chown(p, uid, uid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": f"{inside}/home", "TMPDIR": f"{inside}/home",
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **(extra_env or {})}
        groups = cgroups.slot_groups(f"{_uid_block()}-{slot}", limits.group_memory_mb, limits.processes) \
            if uid is not None else []
        chan_r, chan_w = os.pipe()
        # uid mode: the helper stays as a root monitor and kills the worker uid when this pipe closes,
        # which a SIGKILL of this process does too
        life_r, life_w = os.pipe() if mode == "uid" else (None, None)
        cfg = {"parent": os.getpid(), "namespaces": int(mode == "namespaces"), "work": work, "inside": inside,
               "uid": "" if uid is None else uid, "cgroups": ":".join(map(str, groups)), "channel": chan_w,
               "lifeline": "" if life_r is None else life_r, "work_mb": limits.work_mb, **_rlimits(limits)}
        start = time.monotonic()
        try:
            proc = subprocess.Popen([*_jail(), *(f"{k}={v}" for k, v in cfg.items()), "--", *argv],
                                    cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(chan_w, *([] if life_r is None else [life_r])),
                                    start_new_session=True)
        finally:
            os.close(chan_w)
            if life_r is not None:
                os.close(life_r)
        try:
            with os.fdopen(chan_r, "rb", buffering=0) as chan:
                out, err, got, stop = _collect(proc, chan, limits, cancel,
                                               lambda: _clean_up(proc, uid if mode == "uid" else None, groups))
        finally:
            if life_w is not None:
                os.close(life_w)
        seconds = time.monotonic() - start
        rc = None if stop else proc.returncode
        if stop == "cancelled":
            status = stop
        elif not got.startswith(STARTED):
            status = "error"
        elif stop:
            status = stop
        elif rc != 0:
            status = "failed"
        else:
            status = "passed" if expect is None or got[len(STARTED):] == expect else "exited early"
        return ExecResult(status, rc, seconds, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
    finally:
        remove_tree(work)


def _collect(proc: subprocess.Popen[bytes], chan: BinaryIO, limits: Limits, cancel: threading.Event | None,
             clean_up: Callable[[], None]) -> tuple[bytes, bytes, bytes, str | None]:
    """Read stdout, stderr (their last ``output_limit`` bytes) and the channel (its first bytes)
    until every writer is gone, the timeout, or ``cancel``; the last two are returned as the reason
    ("timeout", "cancelled"). When the program exits first, whatever it left behind is killed
    (clean_up) so that the pipes close."""
    caps = {proc.stdout: limits.output_limit, proc.stderr: limits.output_limit, chan: CHANNEL_LIMIT}
    bufs = {f: bytearray() for f in caps}
    deadline = time.monotonic() + limits.timeout
    stop: str | None = None
    cleaned = False
    with selectors.DefaultSelector() as sel:
        for f in caps:
            sel.register(f, selectors.EVENT_READ)
        while sel.get_map():
            if not cleaned and proc.poll() is not None:
                clean_up()
                cleaned = True
                deadline = min(deadline, time.monotonic() + 2.0)  # grace to drain what is left
            left = deadline - time.monotonic()
            if cancel is not None and cancel.is_set():
                stop = "cancelled"
                break
            if left <= 0:
                stop = None if cleaned else "timeout"
                break
            for key, _ in sel.select(min(left, 0.05)):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                if key.fileobj is chan:
                    buf += data[:max(0, CHANNEL_LIMIT - len(buf))]
                else:
                    buf += data
                    if len(buf) > 2 * caps[key.fileobj]:
                        del buf[:-caps[key.fileobj]]
    if not cleaned:
        clean_up()
    proc.stdout.close()
    proc.stderr.close()
    return (bytes(bufs[proc.stdout][-limits.output_limit:]), bytes(bufs[proc.stderr][-limits.output_limit:]),
            bytes(bufs[chan]), stop)


def _clean_up(proc: subprocess.Popen[bytes], uid: int | None, groups: list[Path]) -> None:
    """Everything the program started dies: the session, then (``uid``: the uid mode, no PID namespace)
    every process of the worker uid, which reaches forks that called setsid, then whatever is left in
    its cgroups. With namespaces the first already ends them all: PID 1 dies, its namespace with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    if uid is not None:
        _kill_uid(uid)
    cgroups.kill(groups)


class SlotPool:
    """Hands each concurrent sandbox run its own worker slot (uid), so per-uid process counts of
    one task never starve another."""

    def __init__(self, n: int) -> None:
        if not 1 <= n <= SLOTS_PER_PROCESS:
            raise ValueError(f"{n} sandbox workers: between 1 and {SLOTS_PER_PROCESS}")
        self._q: queue.Queue[int] = queue.Queue()
        self._cancel = threading.Event()
        for i in range(n):
            self._q.put(i)

    def cancel(self) -> None:
        """Kill every run in flight and refuse new ones (Ctrl-C)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self, argv: list[str], files: dict[str, str], limits: Limits | None = None,
            extra_env: dict[str, str] | None = None, expect: bytes | None = None) -> ExecResult:
        slot = self._q.get()
        try:
            if self.cancelled:
                return ExecResult("cancelled", None, 0.0, "", "")
            return run_program(argv, files, limits, slot=slot, extra_env=extra_env, expect=expect,
                               cancel=self._cancel)
        finally:
            self._q.put(slot)

