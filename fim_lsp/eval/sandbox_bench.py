"""Start-up cost of the sandbox per task: `python -m fim_lsp.eval.sandbox_bench [--before CHECKOUT]`.

A trivial program (`pass`) is run, in alternating batches within one run, by: the bare interpreter;
this checkout's sandbox (run_program, the mode this machine gets); optionally another checkout's
(--before, e.g. main, run in a child process so that both import their own package); and, where
bubblewrap is installed and this is root, bwrap as a worker uid with the namespaces and mounts that the
sandbox makes (no cgroup join, rlimits or seccomp: a lower bound of a bwrap-based sandbox). Prints the
median per task and the ratios against this checkout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from . import sandbox

PROGRAM = {"prog.py": "pass\n"}
BATCH_OF_OTHER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from fim_lsp.eval import sandbox
py = [sandbox.python_executable(), "-I", "prog.py"]
sandbox.run_program(py, {"prog.py": "pass\\n"})  # warm: mode probe, uid block
out = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); r = sandbox.run_program(py, {"prog.py": "pass\\n"}); out.append(time.perf_counter() - t)
    assert r.status == "passed", r
print(json.dumps(out))
"""


def _timed(fn: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _bare() -> None:
    subprocess.run([sandbox.python_executable(), "-I", "-c", "pass"], check=True)


def _ours() -> None:
    r = sandbox.run_program([sandbox.python_executable(), "-I", "prog.py"], PROGRAM)
    assert r.status == "passed", r


def _bwrap() -> None:
    uid = str(sandbox.slot_uid(1))
    work = Path(tempfile.mkdtemp(prefix="fim-eval-bwrap-", dir=sandbox._work_root(sandbox._uid_block())))
    try:
        (work / "prog.py").write_text("pass\n")
        os.chown(work, int(uid), int(uid))
        subprocess.run(["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", "bwrap", "--unshare-all",
                        "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                        "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
                        "--tmpfs", "/var/tmp", "--bind", str(work), "/tmp/w", "--chdir", "/tmp/w", "--",
                        sandbox.python_executable(), "-I", "prog.py"],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)
    finally:
        shutil.rmtree(work)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fim_lsp.eval.sandbox_bench", description=__doc__)
    p.add_argument("--before", default=None, help="another checkout (its fim_lsp package) to compare with")
    p.add_argument("--runs", type=int, default=60, help="runs per variant")
    p.add_argument("--batch", type=int, default=10)
    args = p.parse_args(argv)
    variants: dict[str, Callable[[int], list[float]]] = {
        "bare interpreter": lambda n: _timed(_bare, n),
        f"this checkout ({sandbox.isolation()})": lambda n: _timed(_ours, n),
    }
    if args.before:
        variants["before"] = lambda n: json.loads(subprocess.run(
            [sys.executable, "-c", BATCH_OF_OTHER, args.before, str(n)], check=True, capture_output=True,
            text=True).stdout)
    if os.geteuid() == 0 and shutil.which("bwrap") and shutil.which("setpriv"):
        variants["bwrap (lower bound)"] = lambda n: _timed(_bwrap, n)
    _ours()  # warm: the mode probe and the uid block
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(max(1, args.runs // args.batch)):
        for name, fn in variants.items():
            times[name] += fn(args.batch)
    ours = statistics.median(times[f"this checkout ({sandbox.isolation()})"])
    bare = statistics.median(times["bare interpreter"])
    print(f"load average {os.getloadavg()[0]:.1f}; {len(next(iter(times.values())))} runs per variant, "
          f"alternating batches of {args.batch}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:32s} median {med * 1e3:7.1f} ms  /this checkout {med / ours:5.2f}  "
              f"overhead over bare {(med - bare) * 1e3:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
