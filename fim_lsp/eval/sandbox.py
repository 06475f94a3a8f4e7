"""Run one untrusted program in a throw-away process, with limits. One job: contain it.

Layers, all applied to every run:
- a new session (its own process group), killed with SIGKILL at the timeout;
- rlimits set in the child before exec: address space (Python only; V8 and the JVM reserve huge
  virtual ranges, so those get heap flags instead), CPU seconds, file size, open files, processes, no core;
- a fresh temporary working directory, HOME and TMPDIR inside it, a minimal environment (no inherited
  variables, so no tokens or keys), stdin from /dev/null, stdout/stderr to files capped by RLIMIT_FSIZE
  and read back only up to ``output_limit`` bytes;
- when started as root: the program runs under a per-worker unprivileged uid (so RLIMIT_NPROC is
  enforced, which the kernel skips for root, and the file system's permissions stop writes outside the
  temp dir), and, where ``unshare`` works, inside new PID, mount and network namespaces: killing the
  namespace's first process kills every process it forked, the root mount is read-only except the temp
  dir, /dev/shm is a private tmpfs, and there is no network.
"""
from __future__ import annotations

import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

BASE_UID = 61000  # uids from here up run the programs (no passwd entry needed)
SLOTS_PER_PROCESS = 64  # each eval process owns a block of uids, one per worker slot
MAX_BLOCKS = 64
# Mount setup done as root inside the new namespaces, then privileges are dropped for good.
_NS_SCRIPT = (
    'mount --bind "$W" "$W" && mount -t tmpfs -o size=8m,mode=1777 tmpfs /dev/shm && '
    'mount -o remount,bind,ro / && cd "$W" && '
    'exec setpriv --reuid="$U" --regid="$U" --clear-groups --inh-caps=-all --bounding-set=-all -- "$@"'
)


@dataclass
class Limits:
    timeout: float = 3.0
    memory_mb: int | None = 1024  # RLIMIT_AS; None for runtimes that reserve big virtual ranges
    processes: int = 64  # RLIMIT_NPROC for the worker's uid (threads count too; the JVM needs ~30)
    file_mb: int = 16
    output_limit: int = 64 * 1024


@dataclass
class ExecResult:
    status: str  # "passed", "failed", "timeout"
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _unshare_works() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        return False
    try:
        probe = subprocess.run(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount", "--",
             "sh", "-c", "mount -o remount,bind,ro / && true"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        return probe.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


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
    if isolation() == "rlimits" or _world_executable(sys.executable):
        return sys.executable
    for cand in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.exists(cand) and _world_executable(cand):
            return cand
    raise RuntimeError(f"no python3 that the sandbox uid can run ({sys.executable} is private to root)")


@lru_cache(maxsize=1)
def isolation() -> str:
    """'namespaces' (root + working unshare), 'uid' (root, no unshare), or 'rlimits' (not root)."""
    if os.geteuid() != 0:
        return "rlimits"
    return "namespaces" if _unshare_works() else "uid"


@lru_cache(maxsize=1)
def _uid_block() -> int:
    """Claim a block of uids for this process (held by an flock until it exits), so two evals on one
    machine never share a uid: the clean-up kills every process of a uid."""
    import fcntl

    locks = Path(tempfile.gettempdir()) / "fim-eval-uid-locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    for block in range(MAX_BLOCKS):
        fd = os.open(locks / f"{block}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held_locks.append(fd)  # kept open for the life of the process
        return block
    raise RuntimeError(f"all {MAX_BLOCKS} sandbox uid blocks are in use")


_held_locks: list[int] = []


def slot_uid(slot: int) -> int:
    if not 0 <= slot < SLOTS_PER_PROCESS:
        raise ValueError(f"sandbox slot {slot} out of range (at most {SLOTS_PER_PROCESS} workers)")
    return BASE_UID + _uid_block() * SLOTS_PER_PROCESS + slot


def _limiter(limits: Limits, uid: int | None):
    def apply() -> None:
        # runs in the child between fork and exec: only async-signal-safe-ish calls
        cpu = max(1, int(limits.timeout) + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        fsize = limits.file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        if limits.memory_mb is not None:
            mem = limits.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        if uid is not None and isolation() == "uid":
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
    return apply


def _read_capped(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _kill_uid(uid: int) -> None:
    """Kill every process of a worker uid: the clean-up for forks that left the process group
    when there is no PID namespace. kill(-1) from that uid reaches exactly its own processes."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


# Messages of the wrapper itself, before the program starts. util-linux 2.38's unshare fails about
# once in a thousand starts here with "sigprocmask unblock failed"; such a start is simply retried.
_WRAPPER_ERRORS = ("unshare: ", "setpriv: ", "mount: ", "sandbox: ")


def run_program(argv: list[str], files: dict[str, str], limits: Limits | None = None,
                slot: int = 0, extra_env: dict[str, str] | None = None) -> ExecResult:
    """Write ``files`` into a fresh temp dir and run ``argv`` there under the limits.

    ``slot`` picks the worker uid; concurrent calls must use different slots (SlotPool does that).
    """
    limits = limits or Limits()
    for _ in range(3):
        res = _run_once(argv, files, limits, slot, extra_env)
        if not (res.status == "failed" and isolation() == "namespaces" and res.stderr.startswith(_WRAPPER_ERRORS)):
            break
    return res


def _run_once(argv: list[str], files: dict[str, str], limits: Limits, slot: int,
              extra_env: dict[str, str] | None) -> ExecResult:
    mode = isolation()
    uid = slot_uid(slot) if mode != "rlimits" else None
    work = Path(tempfile.mkdtemp(prefix="fim-eval-"))
    try:
        for name, text in files.items():
            (work / name).write_text(text, encoding="utf-8")
        home = work / "home"
        home.mkdir()
        if uid is not None:
            for p in [work, home, *(work / n for n in files)]:
                os.chown(p, uid, uid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home),
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               **(extra_env or {})}
        cmd = list(argv)
        if mode == "namespaces":
            env.update(W=str(work), U=str(uid))
            cmd = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount", "--",
                   "sh", "-c", _NS_SCRIPT, "sandbox", *argv]
        out_path, err_path = work / ".stdout", work / ".stderr"
        start = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, preexec_fn=_limiter(limits, uid), close_fds=True)
            try:
                rc: int | None = proc.wait(timeout=limits.timeout)
                status = "passed" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
            finally:
                # everything the program started dies with it: first every process of the worker uid
                # (reaches forks that called setsid, in or out of the namespace), then the group
                if uid is not None:
                    _kill_uid(uid)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        seconds = time.monotonic() - start
        return ExecResult(status, rc, seconds, _read_capped(out_path, limits.output_limit),
                          _read_capped(err_path, limits.output_limit))
    finally:
        shutil.rmtree(work, ignore_errors=True)


class SlotPool:
    """Hands each concurrent sandbox run its own worker slot (uid), so per-uid process counts of
    one task never starve another."""

    def __init__(self, n: int) -> None:
        self._q: queue.Queue[int] = queue.Queue()
        for i in range(n):
            self._q.put(i)

    def run(self, argv: list[str], files: dict[str, str], limits: Limits | None = None,
            extra_env: dict[str, str] | None = None) -> ExecResult:
        slot = self._q.get()
        try:
            return run_program(argv, files, limits, slot=slot, extra_env=extra_env)
        finally:
            self._q.put(slot)
