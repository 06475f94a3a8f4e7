"""The sandbox's helper program: run as ``python -I -S jail.py KEY=VALUE... -- ARGV``, a fresh
single-threaded process, it sets up the confinement and then execs ARGV. The harness never forks
(it holds the models, a CUDA context and threads); only this helper does, for the PID namespace.

Standard library only, and no import of fim_lsp: it runs under whatever interpreter the sandbox picks.
It starts once per task, so it imports little (no json, re or signal: ~10 ms less per task).
Protocol: fd 3 of the program is the harness's channel. This helper writes b"S" there just before the
exec, so the harness can tell its own start-up failures (retry) from the program's (never retried).
"""
from __future__ import annotations

import ctypes
import os
import resource
import struct
import sys

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
CHANNEL_FD = 3
SIGKILL = 9
# (audit arch, unshare, clone, clone3) syscall numbers: the filter only knows these two architectures
ARCHES = {"x86_64": (0xC000003E, 272, 56, 435), "aarch64": (0xC00000B7, 97, 220, 435)}

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


def seccomp_no_user_namespaces() -> bool:
    """A seccomp filter: unshare/clone with CLONE_NEWUSER and clone3 (flags hidden in a struct, so
    refused whole; libc falls back to clone) fail with EPERM/ENOSYS; so does every syscall of a foreign
    ABI (i386, x32), which would otherwise bypass the numbers checked. False on an unknown machine."""
    arch = ARCHES.get(os.uname().machine)
    if arch is None:
        return False
    audit, unshare_nr, clone_nr, clone3_nr = arch
    ret_allow, ret_eperm, ret_enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    ld_w_abs, jeq_k, jset_k, ret_k, jge_k = 0x20, 0x15, 0x45, 0x06, 0x35

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)
    prog = [
        op(ld_w_abs, 4), op(jeq_k, audit, 1, 0), op(ret_k, ret_enosys),          # foreign ABI
        op(ld_w_abs, 0), op(jge_k, 0x40000000, 0, 1), op(ret_k, ret_enosys),     # x32 numbers
        op(jeq_k, clone3_nr, 0, 1), op(ret_k, ret_enosys),
        op(jeq_k, unshare_nr, 1, 0), op(jeq_k, clone_nr, 0, 3),
        op(ld_w_abs, 16), op(jset_k, CLONE_NEWUSER, 0, 1), op(ret_k, ret_eperm),  # args[0], low word
        op(ret_k, ret_allow),
    ]
    code = b"".join(prog)
    buf = ctypes.create_string_buffer(code)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")
    return True


def private_mounts(work: str, inside: str) -> None:
    """Inside new mount and PID namespaces, as root: nothing propagates to the host; fresh read-only
    /proc and /sys; empty root-owned /tmp, /run, /var/tmp (no host UNIX sockets); a private /dev/shm;
    the work dir bound at ``inside``; the root mount read-only."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    fixed = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount("proc", "/proc", "proc", fixed | MS_RDONLY)
    mount("sysfs", "/sys", "sysfs", fixed | MS_RDONLY)
    mount("tmpfs", "/tmp", "tmpfs", fixed, "size=64k,mode=755")
    os.mkdir(inside)
    mount(work, inside, None, MS_BIND)
    for d in ("/run", "/var/tmp"):
        if os.path.isdir(d) and not os.path.islink(d):
            mount("tmpfs", d, "tmpfs", fixed | MS_RDONLY, "size=4k,mode=755")
    if os.path.isdir("/dev/shm"):
        mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=8m,mode=1777")
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
        elif key in ("parent", "channel", "namespaces"):
            cfg[key] = int(value)
        elif key == "uid":
            cfg[key] = int(value) if value else None
        else:
            cfg[key] = value
    return cfg


def confine_and_exec(cfg: dict, argv: list[str]) -> None:
    exe = find_program(argv[0])
    if cfg["namespaces"]:
        libc.sethostname(b"sandbox", 7)
    for d in cfg["cgroups"]:  # before anything can fork; root-owned files: the program cannot leave
        with open(os.path.join(d, "cgroup.procs"), "w") as fh:
            fh.write("0")
    if cfg["namespaces"]:
        private_mounts(cfg["work"], cfg["inside"])
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
    prctl(PR_SET_PDEATHSIG, SIGKILL)  # again: a uid change clears it
    seccomp_no_user_namespaces()
    os.write(CHANNEL_FD, b"S")
    os.execv(exe, argv)


def kill_uid(uid: int) -> None:
    """kill(-1) as ``uid``: one call reaches every process of that uid (and no other), forks included."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    try:
        os.kill(-1, SIGKILL)
    except ProcessLookupError:
        pass


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
        if not cfg["namespaces"]:
            confine_and_exec(cfg, argv)
        _check(libc.unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
        pid = os.fork()
        if pid == 0:
            confine_and_exec(cfg, argv)  # PID 1 of the new namespace: when it dies, all of it dies
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            import signal
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
        os._exit(os.waitstatus_to_exitcode(status))
    except BaseException as exc:  # noqa: BLE001 - any set-up failure is reported, never run unconfined
        os.write(2, f"sandbox: {exc}\n".encode())
        os._exit(125)


if __name__ == "__main__":
    main()
