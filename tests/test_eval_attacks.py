"""Completions that attack the judge and the sandbox (issue 10's first table), each through real
sandboxed subprocesses: the attack fails, and the host is untouched (no file read, no hang, no
survivor, no leaked dir, no cross-eval kill)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fim_lsp.eval import cgroups, sandbox
from fim_lsp.eval.data import Task
from fim_lsp.eval.judge import judge
from fim_lsp.eval.runner import run_jobs, sample_jobs
from fim_lsp.eval.sandbox import Limits, SlotPool, isolation, run_program
from fim_lsp.eval.store import read_records
from fim_lsp.eval.systems import CanonicalSystem
from test_eval_sandbox import uid_processes

ROOT = Path(__file__).resolve().parents[1]
PY = [sandbox.python_executable(), "-I", "prog.py"]
# a HumanEval-shaped task built here: the hole is add()'s body
TASK = Task("attack/0", "humaneval-single-line", "py", "def add(a, b):\n", "\n", "    return a + b\n",
            {"prompt": "def add(a, b):\n", "suffix": "\n", "entry_point": "add",
             "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"})
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="uid blocks, cgroups and namespaces need root")


def my_work_dirs() -> list[Path]:
    return sorted(sandbox._work_root(sandbox._uid_block()).glob("fim-eval-*"))


# wrong on purpose (a - b), so only the exit trick could make them pass
EARLY_EXITS = {
    "sys.exit(0)": "    import sys; sys.exit(0)\n",
    "os._exit(0)": "    import os; os._exit(0)\n",
    "raise SystemExit": "    raise SystemExit\n",
    "exit(0)": "    exit(0)\n",
    "atexit os._exit": "    import atexit, os; atexit.register(os._exit, 0); return a - b\n",
    "excepthook os._exit": "    import sys, os; sys.excepthook = lambda *e: os._exit(0); return a - b\n",
    "module-level SystemExit": "    return a - b\nraise SystemExit(0)\n",
}


@pytest.mark.parametrize("name", list(EARLY_EXITS))
def test_early_exit_with_status_0_is_not_a_pass(name: str) -> None:
    pool = SlotPool(1)
    j = judge(TASK, EARLY_EXITS[name], pool)
    assert j.passed is False and j.status == "exited early", j
    assert judge(TASK, "    return a + b\n", pool).passed  # the same task passes when the tests run to the end


def test_output_files_are_never_reopened(tmp_path: Path) -> None:
    """The old judge read .stdout/.stderr back from the sandbox dir, as root: a symlink there leaked any file."""
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET-42")
    secret.chmod(0o600)
    code = (f"import os\nfor n in ('.stdout', '.stderr'):\n    try: os.remove(n)\n    except OSError: pass\n"
            f"    os.symlink({str(secret)!r}, n)\nraise SystemExit(1)\n")
    r = run_program(PY, {"prog.py": code})
    assert r.status == "failed"
    assert "TOPSECRET" not in r.stdout + r.stderr


def test_fifo_in_the_work_dir_changes_nothing() -> None:
    before = my_work_dirs()
    t0 = time.monotonic()
    r = run_program(PY, {"prog.py": "import os\nfor n in ('.stdout', '.stderr', 'x'): os.mkfifo(n)\nprint('made')\n"},
                    Limits(timeout=3))
    assert r.status == "passed" and "made" in r.stdout
    assert time.monotonic() - t0 < 5
    assert my_work_dirs() == before  # the temp dir went with it


def test_huge_output_is_bounded() -> None:
    r = run_program(PY, {"prog.py": "import sys\nfor _ in range(2000): sys.stderr.write('e' * 65536)\nprint('end')\n"},
                    Limits(timeout=5, output_limit=1000))
    assert len(r.stderr) <= 1000 and len(r.stdout) <= 1000


@pytest.mark.skipif(isolation() != "namespaces", reason="a private /tmp and /run need mount namespaces (root + unshare)")
def test_host_unix_socket_is_out_of_reach() -> None:
    """A listening socket in /tmp that anyone may connect to: the program cannot see it."""
    path = f"/tmp/fim-eval-test-{os.getpid()}.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    os.chmod(path, 0o777)
    srv.listen()
    srv.settimeout(0.1)
    try:
        code = (f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(1)\ns.connect({path!r})\n"
                "print('CONNECTED')\n")
        r = run_program(PY, {"prog.py": code})
        assert r.status == "failed" and "CONNECTED" not in r.stdout
        assert "FileNotFoundError" in r.stderr
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()
        os.unlink(path)


@pytest.mark.skipif(isolation() != "namespaces", reason="read-only /proc and /sys need mount namespaces")
def test_proc_and_sys_are_read_only_and_privileges_cannot_grow() -> None:
    code = textwrap.dedent("""
        import ctypes, os
        for path in ('/sys/kernel/mm/transparent_hugepage/enabled', '/proc/sys/kernel/hostname'):
            try:
                open(path, 'w').write('x')
                print('WROTE', path)
            except OSError as e:
                print('blocked', e.errno)
        print('nnp', open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])
        libc = ctypes.CDLL(None, use_errno=True)
        print('unshare-user', libc.unshare(0x10000000), ctypes.get_errno())
        import subprocess
        print(subprocess.run(['unshare', '--user', '--map-root-user', 'id', '-u'], capture_output=True).returncode)
    """)
    r = run_program(PY, {"prog.py": code})
    assert r.status == "passed", r.stderr
    lines = r.stdout.split("\n")
    assert "WROTE" not in r.stdout and lines.count("blocked 30") == 2  # EROFS
    assert "nnp 1" in lines
    assert "unshare-user -1 1" in lines  # EPERM from the seccomp filter
    assert lines[-2] != "0"  # the unshare tool fails too


@needs_root
@pytest.mark.skipif(cgroups.mode() == "none", reason="no writable cgroup memory/pids hierarchy on this machine")
def test_total_memory_of_all_processes_is_capped() -> None:
    """Six children of 300 MB each, every one within its own RLIMIT_AS; the task's cgroup holds 512 MB."""
    code = textwrap.dedent("""
        import os
        kids = []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:
                x = b'x' * (300 << 20)
                import time; time.sleep(1)
                os._exit(0)
            kids.append(pid)
        ok = sum(os.waitpid(p, 0)[1] == 0 for p in kids)
        print('children ok', ok)
    """)
    r = run_program(PY, {"prog.py": code}, Limits(timeout=10, memory_mb=512, group_memory_mb=512))
    # the OOM killer of the group may take the parent too; either way most children never got their memory
    ok = int(r.stdout.split()[-1]) if "children ok" in r.stdout else 0
    assert ok <= 1, r


@needs_root
@pytest.mark.skipif(cgroups.mode() == "none", reason="no writable cgroup memory/pids hierarchy on this machine")
def test_process_count_is_capped_per_task() -> None:
    code = textwrap.dedent("""
        import os, time
        n = 0
        for _ in range(40):
            try:
                if os.fork() == 0:
                    time.sleep(5); os._exit(0)
                n += 1
            except OSError:
                break
        print('forked', n)
    """)
    r = run_program(PY, {"prog.py": code}, Limits(timeout=3, processes=8))
    assert int(r.stdout.split()[-1]) < 8, r


def test_program_text_that_looks_like_a_start_failure_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = sandbox._run_once

    def spy(*args: object, **kw: object) -> sandbox.ExecResult:  # counts the real runs; changes nothing
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(sandbox, "_run_once", spy)
    r = run_program(PY, {"prog.py": "import sys\nsys.stderr.write('unshare: sigprocmask unblock failed\\n')\nsys.exit(1)\n"})
    assert r.status == "failed" and len(calls) == 1
    calls.clear()
    r = run_program(["/nonexistent/interpreter"], {})  # the helper fails before the program starts
    assert r.status == "error" and len(calls) == sandbox.START_TRIES
    assert "sandbox:" in r.stderr


KILLED_HARNESS = """
import sys, time
from fim_lsp.eval import sandbox
print(sandbox.slot_uid(2), sandbox._work_root(sandbox._uid_block()), flush=True)
sandbox.run_program([sandbox.python_executable(), "-I", "prog.py"],
                    {"prog.py": "import os, subprocess, time\\n"
                                "subprocess.Popen(['sleep', '300'], start_new_session=True)\\n"
                                "print('sleeping', flush=True)\\ntime.sleep(300)\\n"},
                    sandbox.Limits(timeout=600), slot=2)
"""


@needs_root
def test_nothing_outlives_a_killed_harness() -> None:
    """SIGKILL the harness while its program sleeps (a detached child too): both die with it, and the
    next eval to start removes the work dir left behind."""
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_HARNESS], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        uid_text, root_text = proc.stdout.readline().split()
        uid, root = int(uid_text), Path(root_text)
        deadline = time.monotonic() + 20
        while not uid_processes(uid, wait=0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(uid_processes(uid, wait=0)) >= 1
        leftover = list(root.glob("fim-eval-*"))
        assert leftover
        proc.kill()
        proc.wait()
        assert uid_processes(uid) == []
        # the next eval to start takes the freed block and clears what the killed one left
        subprocess.run([sys.executable, "-c", "from fim_lsp.eval import sandbox; sandbox._uid_block()"],
                       cwd=ROOT, check=True)
        assert not any(p.exists() for p in leftover)


TWO_EVALS = """
import sys
from fim_lsp.eval import sandbox
sandbox.isolation = lambda: "uid"  # no PID namespace: the clean-up kills every process of a uid
print(sandbox.slot_uid(0), flush=True)
code = sys.argv[1]
for _ in range(int(sys.argv[2])):
    r = sandbox.run_program([sandbox.python_executable(), "-I", "prog.py"], {"prog.py": code}, sandbox.Limits(timeout=10))
    print(r.status, flush=True)
"""


@needs_root
def test_two_evals_with_different_tmpdirs_never_share_a_uid(tmp_path: Path) -> None:
    """Eval A runs a slow task on slot 0 while eval B (another TMPDIR) runs and cleans up many quick
    ones on its slot 0: B's clean-up must not kill A's program."""
    envs = [{**os.environ, "TMPDIR": str(tmp_path / d)} for d in ("a", "b")]
    for e in envs:
        Path(e["TMPDIR"]).mkdir()
    a = subprocess.Popen([sys.executable, "-c", TWO_EVALS, "import time\ntime.sleep(2)\nprint('a done')", "1"],
                         cwd=ROOT, env=envs[0], stdout=subprocess.PIPE, text=True)
    uid_a = int(a.stdout.readline())
    b = subprocess.run([sys.executable, "-c", TWO_EVALS, "print('b')", "6"], cwd=ROOT, env=envs[1],
                       capture_output=True, text=True, timeout=60)
    out_a = a.communicate(timeout=30)[0]
    uid_b = int(b.stdout.split()[0])
    assert uid_a != uid_b
    assert b.stdout.split()[1:] == ["passed"] * 6
    assert out_a.split() == ["passed"]


def test_judging_threads_spawn_sandboxes_while_another_thread_allocates(tmp_path: Path) -> None:
    """What crashed a GPU run: a thread holds a lock and allocates while judging threads start
    sandboxes, batch size 8. Nothing in the harness may fork: the at-fork hook refuses, like the
    machine's filelock did, and every task still gets its record."""
    forks: list[str] = []
    active = threading.Event()

    def refuse() -> None:
        if active.is_set():  # the hook cannot be removed again; it is inert outside this test
            forks.append(threading.current_thread().name)
            raise RuntimeError("os.fork is unsafe while filelock is changing descriptor ownership")
    os.register_at_fork(before=refuse)
    stop = threading.Event()
    lock = threading.Lock()

    def allocate() -> None:
        while not stop.is_set():
            with lock:
                sum(len(bytearray(1 << 20)) for _ in range(8))
    tasks = [dataclasses.replace(TASK, task_id=f"attack/{k}") for k in range(16)]
    t = threading.Thread(target=allocate)
    active.set()
    t.start()
    try:
        counts = run_jobs(sample_jobs(tasks, 1), CanonicalSystem(), tmp_path / "results.jsonl", workers=8,
                          batch_size=8, progress=False)
    finally:
        active.clear()
        stop.set()
        t.join()
    assert forks == []
    recs = read_records(tmp_path / "results.jsonl")
    assert counts["ran"] == 16 and sorted(r["task_id"] for r in recs) == sorted(t.task_id for t in tasks)
    assert all(r["candidates"][0]["judge"]["status"] == "passed" for r in recs)


def test_a_judging_error_marks_the_task_and_the_run_goes_on(tmp_path: Path) -> None:
    """A task whose row lacks its test (a harness-side failure, not the program's): that task is
    recorded as `error`, the others are judged."""
    broken = dataclasses.replace(TASK, task_id="attack/broken", raw={"prompt": "def add(a, b):\n"})
    tasks = [TASK, broken, dataclasses.replace(TASK, task_id="attack/1")]
    counts = run_jobs(sample_jobs(tasks, 1), CanonicalSystem(), tmp_path / "results.jsonl", workers=2,
                      progress=False)
    by_id = {r["task_id"]: r["candidates"][0]["judge"] for r in read_records(tmp_path / "results.jsonl")}
    assert counts["ran"] == 3
    assert by_id["attack/broken"]["status"] == "error" and by_id["attack/broken"]["passed"] is False
    assert "KeyError" in by_id["attack/broken"]["detail"]
    assert by_id["attack/0"]["status"] == by_id["attack/1"]["status"] == "passed"


AS_NOBODY = """
from fim_lsp.eval import sandbox as s
py = [s.python_executable(), "-I", "prog.py"]
print(s.isolation())
print(s.run_program(py, {"prog.py": "import os; os.write(3, b'N')"}, expect=b"N").status)
print(s.run_program(py, {"prog.py": "raise SystemExit(0)"}, expect=b"N").status)
print(s.run_program(py, {"prog.py": "import ctypes; l = ctypes.CDLL(None, use_errno=True); "
                                    "print(l.unshare(0x10000000), ctypes.get_errno())"}).stdout.strip())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("setpriv") and os.path.exists("/usr/bin/python3")),
                    reason="needs root to become an ordinary user (setpriv) and a system python3")
def test_rlimits_mode_as_an_ordinary_user() -> None:
    """The not-root mode, run as `nobody`: the nonce rule and the user-namespace filter hold there too
    (the eval's package needs only the standard library for this part). The package is copied to a
    world-readable temp dir: the checkout may sit where `nobody` cannot read (a clone under /root)."""
    copy = Path(tempfile.mkdtemp(prefix="fim-eval-nobody-"))
    try:
        shutil.copytree(ROOT / "fim_lsp", copy / "fim_lsp", ignore=shutil.ignore_patterns("__pycache__"))
        for p in [copy, *copy.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3",
                            "-c", AS_NOBODY], cwd="/", env={"PYTHONPATH": str(copy), "HOME": "/", "PATH": os.environ["PATH"]},
                           capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(copy)
    assert r.stdout.split("\n")[:4] == ["rlimits", "passed", "exited early", "-1 1"], r.stdout + r.stderr


def test_a_marker_that_matches_the_nonce_only_in_its_first_bytes_is_not_a_pass() -> None:
    nonce = b"0123456789abcdef0123456789abcdef"
    for written in (nonce[:16], nonce[:-1], nonce + b"0", nonce[:16] + b"X" * 16):
        r = run_program(PY, {"prog.py": f"import os; os.write(3, {written!r})"}, expect=nonce)
        assert r.status == "exited early", (written, r)
    assert run_program(PY, {"prog.py": f"import os; os.write(3, {nonce!r})"}, expect=nonce).status == "passed"


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data").is_dir(), reason="../shared/data is not present")
@pytest.mark.parametrize("language,exit_call", [("js", "process.exit(0);"), ("java", "System.exit(0);")])
def test_early_exit_in_js_and_java_is_not_a_pass(language: str, exit_call: str) -> None:
    from fim_lsp.eval.data import SANTACODER, load_tasks, santacoder_first_body_line
    from fim_lsp.eval.judge import tool_missing

    if tool_missing(language):
        pytest.skip(tool_missing(language))
    tasks = load_tasks(SANTACODER, ROOT.parent / "shared" / "data", [language])
    # the hole opens the function body; prime_fib's reference Java is randomized (eval/README.md)
    task = next(t for t in tasks if santacoder_first_body_line(t.raw) and "prime_fib" not in t.raw["name"])
    pool = SlotPool(1)
    j = judge(task, exit_call + task.middle, pool)  # an exit, then the right line: the tests never end
    assert j.passed is False and j.status == "exited early", j
    assert judge(task, task.middle, pool).passed


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data").is_dir(), reason="../shared/data is not present")
def test_java_tests_moved_out_of_problem_are_not_a_pass() -> None:
    """The completion closes its method, defines an empty Problem.main, closes class Problem and opens a
    subclass, so the tests' main() lands there and never runs. The end marker sits in the tests' own
    main(), so it moves with them."""
    from fim_lsp.eval.data import SANTACODER, load_tasks
    from fim_lsp.eval.judge import tool_missing

    if tool_missing("java"):
        pytest.skip(tool_missing("java"))
    tasks = load_tasks(SANTACODER, ROOT.parent / "shared" / "data", ["java"])
    # a hole on the method's last line: only the closing braces follow it
    task = next(t for t in tasks if "".join(t.raw["suffix"].split()) == "}}" and "prime_fib" not in t.raw["name"])
    cheat = (task.middle + "\n    }\n    public static void main(String[] a) {}\n}\n"
             "class Moved extends Problem {\n    static void unused() {")
    pool = SlotPool(1)
    j = judge(task, cheat, pool)
    assert j.passed is False and j.status == "exited early", j
    assert judge(task, task.middle, pool).passed
