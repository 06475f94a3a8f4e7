"""The sandbox's helper program: run as ``python -I -S jail.py KEY=VALUE... -- ARGV``, a fresh
single-threaded process, it sets up the confinement and then execs ARGV. The harness never forks
(it holds the models, a CUDA context and threads); only this helper does, for the PID namespace.

Standard library only, and no import of fim_lsp: it runs under whatever interpreter the sandbox picks.
It starts once per task, so it imports little (no json, re or signal: ~10 ms less per task).
Protocol: fd 3 of the program is the harness's channel. This helper writes b"S" there just before the
exec, so the harness can tell its own start-up failures (retry) from the program's (never retried).

Processes, as root with namespaces (what the program can reach is only its own uid's):
    harness -> helper (root, host PID namespace) -> init (root, PID 1 of a new namespace) -> program (worker uid)
Each root process has a parent-death SIGKILL that the program cannot clear (another uid's), so a killed
harness takes the helper, the helper takes init, and init's death ends every process of the namespace.
In the uid mode (no namespaces) the helper stays as a root monitor that kills the worker uid when the
harness's lifeline pipe closes.
"""
from __future__ import annotations

import ctypes
import os
import resource
import select
import struct
import sys

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 8192, 16384, 1 << 18)
CHANNEL_FD = 3
SIGKILL = 9
# (audit arch, unshare, clone, clone3, (add_key, request_key, keyctl)) syscall numbers: the filter only
# knows these two architectures
ARCHES = {"x86_64": (0xC000003E, 272, 56, 435, (248, 249, 250)),
          "aarch64": (0xC00000B7, 97, 220, 435, (217, 218, 219))}
# the host's device nodes a program may use; everything else under /dev (GPUs, disks, the host's ptys) is absent
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg: int) -> None:
    _check(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {fstype or ''} {target}")


def seccomp_filter() -> bool:
    """A seccomp filter: unshare/clone with CLONE_NEWUSER and clone3 (flags hidden in a struct, so
    refused whole; libc falls back to clone) fail with EPERM/ENOSYS; so does every syscall of a foreign
    ABI (i386, x32), which would otherwise bypass the numbers checked. The kernel keyrings (add_key,
    request_key, keyctl) fail with EPERM, as in Docker's default profile: a uid's keyring is not
    namespaced, so it would outlive the task and reach the next one on that uid. False on an unknown
    machine."""
    arch = ARCHES.get(os.uname().machine)
    if arch is None:
        return False
    audit, unshare_nr, clone_nr, clone3_nr, keyrings = arch
    ret_allow, ret_eperm, ret_enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    ld_w_abs, jeq_k, jset_k, ret_k, jge_k = 0x20, 0x15, 0x45, 0x06, 0x35

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)
    prog = [
        op(ld_w_abs, 4), op(jeq_k, audit, 1, 0), op(ret_k, ret_enosys),          # foreign ABI
        op(ld_w_abs, 0), op(jge_k, 0x40000000, 0, 1), op(ret_k, ret_enosys),     # x32 numbers
        op(jeq_k, clone3_nr, 0, 1), op(ret_k, ret_enosys),
        *(op(jeq_k, nr, 0, 1) + op(ret_k, ret_eperm) for nr in keyrings),
        op(jeq_k, unshare_nr, 1, 0), op(jeq_k, clone_nr, 0, 3),
        op(ld_w_abs, 16), op(jset_k, CLONE_NEWUSER, 0, 1), op(ret_k, ret_eperm),  # args[0], low word
        op(ret_k, ret_allow),
    ]
    code = b"".join(prog)
    buf = ctypes.create_string_buffer(code)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = SockFprog(len(code) // 8, ctypes.addressof(buf))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")
    return True


def private_dev(stage: str) -> None:
    """A fresh /dev, as bubblewrap's --dev builds it: a small tmpfs holding binds of the harmless host
    nodes, its own devpts instance (a pty opened inside is not a host /dev/pts entry), a private 8 MB
    /dev/shm, and the usual links. Built at ``stage``, then moved over /dev."""
    mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            os.close(os.open(f"{stage}/{name}", os.O_CREAT | os.O_WRONLY, 0o666))
            mount(f"/dev/{name}", f"{stage}/{name}", None, MS_BIND)
    os.mkdir(f"{stage}/pts")
    mount("devpts", f"{stage}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    os.mkdir(f"{stage}/shm")
    mount("tmpfs", f"{stage}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=8m,mode=1777")
    for link, target in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{stage}/{link}")
    mount(stage, "/dev", None, MS_MOVE)


def private_mounts(cfg: dict) -> None:
    """Inside new mount and PID namespaces, as root: nothing propagates to the host; fresh read-only
    /proc and /sys; empty root-owned /tmp, /run, /var/tmp (no host UNIX sockets); a fresh /dev; the
    work dir a size-capped tmpfs at ``inside`` holding copies of the task's files, so nothing the
    program writes reaches the host's disk; the root mount read-only."""
    work, inside, uid = cfg["work"], cfg["inside"], cfg["uid"]
    files = {name: open(os.path.join(work, name), "rb").read()
             for name in os.listdir(work) if os.path.isfile(os.path.join(work, name))}
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    fixed = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount("proc", "/proc", "proc", fixed | MS_RDONLY)
    mount("sysfs", "/sys", "sysfs", fixed | MS_RDONLY)
    mount("tmpfs", "/tmp", "tmpfs", fixed, "size=64k,mode=755")
    os.mkdir("/tmp/.dev")
    private_dev("/tmp/.dev")
    os.rmdir("/tmp/.dev")
    os.mkdir(inside)
    mount("tmpfs", inside, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['work_mb']}m,mode=700,uid={uid},gid={uid}")
    for name, data in files.items():
        with open(os.path.join(inside, name), "wb") as fh:
            fh.write(data)
        os.chown(os.path.join(inside, name), uid, uid)
    os.mkdir(os.path.join(inside, "home"), 0o700)
    os.chown(os.path.join(inside, "home"), uid, uid)
    for d in ("/run", "/var/tmp"):
        if os.path.isdir(d) and not os.path.islink(d):
            mount("tmpfs", d, "tmpfs", fixed | MS_RDONLY, "size=4k,mode=755")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def find_program(name: str) -> str:
    """PATH lookup now, as root: after the uid drop the helper's own stdlib (os.execvp imports more)
    may be unreadable."""
    for d in ([""] if "/" in name else os.environ.get("PATH", "").split(":")):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    raise FileNotFoundError(f"{name} not found on PATH")


def parse_config(items: list[str]) -> dict:
    """KEY=VALUE items (built by sandbox._run_once): ints stay ints, lists are ':'-joined, '' is None."""
    cfg: dict = {"rlimits": {}}
    for item in items:
        key, value = item.split("=", 1)
        if key.startswith("RLIMIT_"):
            cfg["rlimits"][key] = int(value)
        elif key == "cgroups":
            cfg[key] = value.split(":") if value else []
        elif key in ("parent", "channel", "namespaces", "work_mb"):
            cfg[key] = int(value)
        elif key in ("uid", "lifeline"):
            cfg[key] = int(value) if value else None
        else:
            cfg[key] = value
    return cfg


def join_cgroups(cfg: dict) -> None:
    for d in cfg["cgroups"]:  # before anything can fork; root-owned files: the program cannot leave
        with open(os.path.join(d, "cgroup.procs"), "w") as fh:
            fh.write("0")


def confine_and_exec(cfg: dict, argv: list[str], exe: str) -> None:
    os.chdir(cfg["inside"])
    for name, value in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    os.dup2(cfg["channel"], CHANNEL_FD)
    if cfg["channel"] != CHANNEL_FD:
        os.close(cfg["channel"])
    uid = cfg["uid"]
    if uid is not None:
        os.fchown(CHANNEL_FD, uid, uid)  # Java reopens it through /proc/self/fd/3
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # drops every capability
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, SIGKILL)  # again: a uid change clears it (the program may clear it too)
    seccomp_filter()
    os.write(CHANNEL_FD, b"S")
    os.execv(exe, argv)


def die_with_parent(alive: int) -> None:
    """SIGKILL when the parent dies; ``alive`` is the read end of a pipe whose only writer is the
    parent: readable (EOF) means it died before the prctl took hold."""
    prctl(PR_SET_PDEATHSIG, SIGKILL)
    if select.select([alive], [], [], 0)[0]:
        os._exit(125)
    os.close(alive)


def exit_code(status: int) -> int:
    """A wait status as an exit code (128 + signal for a killed program: PID 1 cannot re-raise it)."""
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def init(cfg: dict, argv: list[str], exe: str) -> None:
    """PID 1 of the new namespace, root: joins the cgroups, builds the mounts, starts the program under
    the worker uid and reaps until it ends; its own exit then kills whatever the program left."""
    libc.sethostname(b"sandbox", 7)
    join_cgroups(cfg)
    private_mounts(cfg)
    pid = os.fork()
    if pid == 0:
        confine_and_exec(cfg, argv, exe)
    os.close(cfg["channel"])
    while True:
        done, status = os.wait()
        if done == pid:
            os._exit(exit_code(status))


def kill_uid(uid: int) -> None:
    """kill(-1) as ``uid``: one call reaches every process of that uid (and no other), forks included."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    try:
        os.kill(-1, SIGKILL)
    except ProcessLookupError:
        pass


def monitor(cfg: dict, pid: int) -> None:
    """The uid mode's root monitor: waits for the program or for the harness's lifeline to close (the
    harness died: its parent-death signal is not there to rely on, the program may clear its own), and
    then kills every process of the worker uid."""
    lifeline, child = cfg["lifeline"], os.pidfd_open(pid)
    ready = select.select([lifeline, child], [], [])[0]
    if child not in ready:
        killer = os.fork()
        if killer == 0:
            kill_uid(cfg["uid"])
            os._exit(0)
        os.waitpid(killer, 0)
        os._exit(125)
    _, status = os.waitpid(pid, 0)
    os._exit(exit_code(status))


def main() -> None:
    if sys.argv[1] == "--kill-uid":
        kill_uid(int(sys.argv[2]))
        return
    sep = sys.argv.index("--")
    cfg, argv = parse_config(sys.argv[1:sep]), sys.argv[sep + 1:]
    try:
        prctl(PR_SET_PDEATHSIG, SIGKILL)  # the harness's thread gone: this goes too
        if os.getppid() != cfg["parent"]:
            os._exit(125)  # the harness died before the line above
        exe = find_program(argv[0])
        if not cfg["namespaces"]:
            join_cgroups(cfg)
            if cfg["lifeline"] is None:  # rlimits mode: the program's own uid, nothing to watch it with
                confine_and_exec(cfg, argv, exe)
            prctl(PR_SET_PDEATHSIG, 0)  # the monitor outlives the harness to kill the worker uid
            pid = os.fork()
            if pid == 0:
                confine_and_exec(cfg, argv, exe)
            os.close(cfg["channel"])
            monitor(cfg, pid)
        _check(libc.unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
        alive, holder = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(holder)
            die_with_parent(alive)
            init(cfg, argv, exe)
        os.close(alive)
        os.close(cfg["channel"])
        _, status = os.waitpid(pid, 0)
        os._exit(exit_code(status))
    except BaseException as exc:  # noqa: BLE001 - any set-up failure is reported, never run unconfined
        os.write(2, f"sandbox: {exc}\n".encode())
        os._exit(125)


if __name__ == "__main__":
    main()
