"""What one task can leave for the next task or the next eval (issue 19): a deep directory, a program
that outlives its harness, a key in the uid's kernel keyring, a host pty. Real sandboxes, real
harness processes, real SIGKILLs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Iterator

import pytest

from fim_lsp.eval import cgroups, sandbox
from fim_lsp.eval.sandbox import Limits, isolation, run_program
from fim_lsp.eval.wipe import remove_tree
from test_eval_sandbox import uid_processes

ROOT = Path(__file__).resolve().parents[1]
PY = [sandbox.python_executable(), "-I", "prog.py"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="worker uids, cgroups and namespaces need root")
needs_namespaces = pytest.mark.skipif(isolation() != "namespaces", reason="needs the namespaces mode (root)")
# the completion for SingleLineInfilling/HumanEval/0/L0: 3000 nested directories, then the right line
DEEP = ("    import os\n    if not getattr(os, '_deep', 0):\n        os._deep = 1\n        for _ in range(3000):\n"
        "            os.mkdir('d'); os.chdir('d')\n    for idx, elem in enumerate(numbers):\n")
# the survivor: clears its parent-death signal, forks a child that leaves the session (a session
# leader itself cannot), and both sleep: only a kill from outside ends them
SURVIVOR = ("import ctypes, os, time\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\nif os.fork() == 0:\n    os.setsid()\n"
            "print('detached', flush=True)\ntime.sleep(120)\n")


def deep_tree(top: Path, depth: int) -> None:
    """``depth`` nested directories under ``top``, with a file, a fifo, a dangling link and an
    unreadable directory on the way (what a program may leave)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for i in range(depth):
        if i == 5:
            os.mkfifo("fifo", dir_fd=fd)
            os.symlink("/nonexistent", "link", dir_fd=fd)
            os.mkdir("locked", 0o000, dir_fd=fd)
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o000, dir_fd=fd))
    os.close(fd)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A place for deep trees that never outlives the test, whatever happens in it: pytest's own
    clean-up of old temp dirs (shutil.rmtree) would fail on one at every later session."""
    yield tmp_path / "t"
    subprocess.run(["rm", "-rf", str(tmp_path / "t")], check=False)


def test_a_deep_tree_with_odd_entries_is_removed(scratch: Path) -> None:
    """shutil.rmtree recursed (RecursionError past ~1000 levels, which its ignore_errors does not catch)."""
    deep_tree(scratch, 3000)
    assert remove_tree(scratch) is True
    assert not scratch.exists()
    assert remove_tree(scratch) is True  # already gone: nothing to do, no error


SCORE_AS = """
import sys
from fim_lsp.eval import sandbox
if sys.argv[1] != "default":
    sandbox.isolation = lambda: sys.argv[1]
from fim_lsp.eval.cli import main
sys.exit(main(sys.argv[2:]))
"""


def score(mode: str, preds: Path, out: Path, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCORE_AS, mode, "score", "--benchmark", "humaneval-single-line",
                           "--predictions", str(preds), "--data-dir", str(data), "--out", str(out),
                           "--workers", "1", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)


@needs_root
@pytest.mark.parametrize("mode", ["default", "uid"])
def test_a_deep_directory_passes_and_the_next_score_runs(mode: str, shared_data: Path, tmp_path: Path) -> None:
    """The deep completion passes (it is right), leaves nothing, and the next `score` on the machine
    judges the canonical solution. uid mode: the tree is on the host's disk; namespaces: in a tmpfs."""
    from fim_lsp.eval.data import load_tasks

    task = load_tasks("humaneval-single-line", shared_data)[0]
    assert task.task_id == "SingleLineInfilling/HumanEval/0/L0"
    deep, good = tmp_path / "deep.jsonl", tmp_path / "good.jsonl"
    deep.write_text(json.dumps({"task_id": task.task_id, "completion": DEEP}) + "\n")
    good.write_text(json.dumps({"task_id": task.task_id, "completion": task.middle}) + "\n")
    first = score(mode, deep, tmp_path / "a", shared_data)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "pass@1 100.00%" in first.stdout, first.stdout
    nxt = score(mode, good, tmp_path / "b", shared_data)
    assert nxt.returncode == 0 and "Traceback" not in nxt.stderr, nxt.stderr[-2000:]
    assert "pass@1 100.00%" in nxt.stdout, nxt.stdout


@needs_root
def test_the_next_eval_clears_a_deep_leftover_without_failing() -> None:
    """What a killed eval leaves in its block (here made in this process's own block, so that no
    other eval on the machine ever meets it): the clearing that every eval does at start removes it."""
    block = sandbox._uid_block()
    root = sandbox._work_root(block)
    root.mkdir(parents=True, exist_ok=True)
    try:
        deep_tree(root / "fim-eval-left", 2000)
        sandbox._clear_blocks([block])
        assert not (root / "fim-eval-left").exists()
    finally:  # never leave it for another eval (older versions failed on it)
        subprocess.run(["rm", "-rf", str(root / "fim-eval-left")], check=False)


KILLED = """
import sys
from fim_lsp.eval import cgroups, sandbox
mode, groups = sys.argv[1], sys.argv[2]
if mode != "default":
    sandbox.isolation = lambda: mode
if groups == "none":
    cgroups.mode = lambda: "none"  # as on a cgroup v2 host without delegation
print(sandbox.slot_uid(3), sandbox.isolation(), len(cgroups.slot_groups(f"{sandbox._uid_block()}-3", 1024, 64)),
      flush=True)
sandbox.run_program([sandbox.python_executable(), "-I", "prog.py"], {"prog.py": sys.argv[3]},
                    sandbox.Limits(timeout=600), slot=3)
"""


def _killed_harness(mode: str, groups: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED, mode, groups, SURVIVOR], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    uid_text, used, n_groups = proc.stdout.readline().split()
    uid = int(uid_text)
    assert used == ("namespaces" if mode == "default" else mode)
    assert (n_groups == "0") == (groups == "none")
    try:
        deadline = 60
        while len(uid_processes(uid, wait=0)) < 2 and deadline > 0:  # the program and its fork
            threading.Event().wait(0.05)
            deadline -= 0.05
        assert len(uid_processes(uid, wait=0)) >= 2
    finally:
        proc.kill()
        proc.wait()
    assert uid_processes(uid, wait=5) == []


@needs_namespaces
@pytest.mark.skipif(cgroups.mode() == "none", reason="no writable cgroup memory/pids hierarchy on this machine")
def test_a_survivor_dies_with_a_killed_harness_with_cgroups() -> None:
    _killed_harness("default", "cgroups")


@needs_namespaces
def test_a_survivor_dies_with_a_killed_harness_without_cgroups() -> None:
    _killed_harness("default", "none")


@needs_root
def test_a_survivor_dies_with_a_killed_harness_without_namespaces_or_cgroups() -> None:
    _killed_harness("uid", "none")


@pytest.fixture(params=["namespaces", "uid"])
def forced_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sandbox in each root mode (the uid mode is what a root host without namespaces gets)."""
    if os.geteuid() != 0:
        pytest.skip("worker uids and namespaces need root")
    if request.param == "namespaces" and isolation() != "namespaces":
        pytest.skip("needs the namespaces mode")
    monkeypatch.setattr(sandbox, "isolation", lambda: request.param)
    return request.param


def test_a_survivor_is_killed_at_the_timeout_without_cgroups(forced_mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "mode", lambda: "none")
    r = run_program(PY, {"prog.py": SURVIVOR}, Limits(timeout=1.5), slot=4)
    assert r.status == "timeout"
    assert uid_processes(sandbox.slot_uid(4), wait=5) == []


KEYRING = textwrap.dedent("""
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ADD_KEY, KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[__import__("os").uname().machine]
    if sys.argv[1] == "write":
        r = libc.syscall(ADD_KEY, b"user", b"fim-eval-test", b"left by task 1", 14, ctypes.c_int(-4))  # @u
        print("add_key", r, ctypes.get_errno())
    else:
        key = libc.syscall(KEYCTL, 10, ctypes.c_int(-4), b"user", b"fim-eval-test", 0)  # KEYCTL_SEARCH
        buf = ctypes.create_string_buffer(64)
        n = libc.syscall(KEYCTL, 11, ctypes.c_long(key), buf, 64) if key > 0 else -1  # KEYCTL_READ
        print("found", buf.raw[:max(n, 0)])
""")


def test_the_uid_keyring_carries_nothing_to_the_next_task(forced_mode: str) -> None:
    first = run_program([*PY[:-1], "prog.py", "write"], {"prog.py": KEYRING}, slot=6)
    second = run_program([*PY[:-1], "prog.py", "read"], {"prog.py": KEYRING}, slot=6)
    assert first.status == second.status == "passed", first.stderr + second.stderr
    assert first.stdout.split() == ["add_key", "-1", "1"]  # EPERM from the seccomp filter
    assert second.stdout.strip() == "found b''"


@needs_namespaces
def test_a_pty_opened_inside_is_not_a_host_pty() -> None:
    code = ("import os\nm, s = os.openpty()\nprint(os.ttyname(s), os.stat('/dev/pts').st_dev, "
            "sorted(os.listdir('/dev/pts')), sorted(os.listdir('/dev')))\n")
    r = run_program(PY, {"prog.py": code})
    assert r.status == "passed", r.stderr
    name, dev, *_ = r.stdout.split(" ", 2)
    assert int(dev) != os.stat("/dev/pts").st_dev  # its own devpts instance, gone with the sandbox
    assert name == "/dev/pts/0" and "['0', 'ptmx']" in r.stdout
    for host_only in ("'vda'", "'kmsg'", "'mem'", "'nvidia0'"):
        assert host_only not in r.stdout  # a fresh /dev holds only the harmless nodes
