"""The sandbox contains hostile programs, each within its limits, while ordinary tasks keep passing."""
from __future__ import annotations

import concurrent.futures as cf
import os
import time
import uuid
from pathlib import Path

import pytest

from fim_lsp.eval import sandbox
from fim_lsp.eval.sandbox import Limits, SlotPool, isolation, run_program

PY = [sandbox.python_executable(), "-I", "prog.py"]


def run_py(code: str, limits: Limits | None = None, slot: int = 0) -> sandbox.ExecResult:
    return run_program(PY, {"prog.py": code}, limits or Limits(timeout=3), slot=slot)


def uid_processes(uid: int, wait: float = 3.0) -> list[int]:
    """Live (non-zombie) processes of a worker uid, polled until none or ``wait`` runs out. Zombies
    hold no memory or CPU; they wait for the host's init to reap them after the namespace is gone."""
    deadline = time.monotonic() + wait
    while True:
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if p.stat().st_uid == uid and (p / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                        pids.append(int(p.name))
                except (FileNotFoundError, ProcessLookupError, IndexError):
                    pass
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def test_ordinary_program_passes_and_fails() -> None:
    assert run_py("print('ok')").status == "passed"
    r = run_py("assert 1 == 2")
    assert r.status == "failed" and "AssertionError" in r.stderr


def test_infinite_loop_times_out() -> None:
    t0 = time.monotonic()
    r = run_py("while True: pass", Limits(timeout=1.5))
    assert r.status == "timeout"
    assert time.monotonic() - t0 < 5


def test_memory_bomb_fails_fast() -> None:
    t0 = time.monotonic()
    r = run_py("x = []\nwhile True: x.append(bytearray(50 * 1024 * 1024))", Limits(timeout=10, memory_mb=512))
    assert r.status == "failed" and "MemoryError" in r.stderr
    assert time.monotonic() - t0 < 10


def test_env_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIM_EVAL_SECRET_TOKEN", "hunter2")
    r = run_py("import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'], os.getcwd())")
    assert "FIM_EVAL_SECRET_TOKEN" not in r.stdout and "hunter2" not in r.stdout
    home, cwd = r.stdout.strip().splitlines()[-1].split()
    assert home.startswith(cwd) and Path(cwd).name.startswith("fim-eval-")
    assert not Path(cwd).exists()  # the temp dir is removed afterwards


def test_subprocess_and_os_system_are_confined() -> None:
    marker = f"/tmp/fim-eval-escape-{uuid.uuid4().hex}"
    code = (
        "import os, subprocess, sys\n"
        f"os.system('echo pwned > {marker}')\n"
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"  # tries to outlive the sandbox
        "print(p.pid, flush=True)\n"
        "print(subprocess.run(['sh', '-c', 'echo child-ran'], capture_output=True, text=True).stdout)\n"
    )
    r = run_py(code, Limits(timeout=3), slot=5)
    assert "child-ran" in r.stdout  # running programs is allowed; escaping is not
    assert not os.path.exists(marker)
    if isolation() != "rlimits":
        assert uid_processes(sandbox.slot_uid(5)) == []  # the detached sleep was killed with the sandbox


def test_writes_outside_the_temp_dir_fail(tmp_path: Path) -> None:
    targets = [f"/tmp/fim-eval-escape-{uuid.uuid4().hex}", str(tmp_path / "escape.txt"),
               str(Path(__file__).resolve().parent / "escape.txt"), "/root/fim-eval-escape"]
    code = "import os\nopen('inside.txt', 'w').write('ok')\nopen(os.path.join(os.environ['HOME'], 'h'), 'w').write('ok')\n"
    code += "".join(f"try:\n    open({t!r}, 'w').write('x')\n    print('WROTE', {t!r})\nexcept OSError as e:\n    print('blocked', e.errno)\n"
                    for t in targets)
    r = run_py(code)
    assert r.status == "passed", r.stderr
    if isolation() == "rlimits":
        pytest.skip("not root: only the working directory and HOME/TMPDIR are redirected (see eval/README.md)")
    assert "WROTE" not in r.stdout, r.stdout
    assert r.stdout.count("blocked") == len(targets)
    for t in targets:
        assert not os.path.exists(t)


def test_shared_memory_writes_stay_private() -> None:
    if isolation() != "namespaces":
        pytest.skip("/dev/shm is only private inside a mount namespace (see eval/README.md)")
    target = f"/dev/shm/fim-eval-escape-{uuid.uuid4().hex}"
    r = run_py(f"open({target!r}, 'w').write('x')")
    assert r.status == "passed"  # the write lands in the sandbox's own small tmpfs ...
    assert not os.path.exists(target)  # ... which is gone with it


def _fork_bomb(mode: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if mode:
        monkeypatch.setattr(sandbox, "isolation", lambda: mode)
    # tight limits: this machine is shared and small
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    r = run_py(code, Limits(timeout=1.5, processes=16), slot=7)
    assert r.status == "timeout"
    assert time.monotonic() - t0 < 8
    assert uid_processes(sandbox.slot_uid(7)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop and process limit need root (RLIMIT_NPROC skips root)")
def test_fork_loop_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    _fork_bomb(None, monkeypatch)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_fork_loop_is_contained_without_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    _fork_bomb("uid", monkeypatch)


def test_output_flood_is_capped() -> None:
    t0 = time.monotonic()
    r = run_py("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", Limits(timeout=3, file_mb=4, output_limit=1000))
    assert r.status in ("failed", "timeout")  # SIGXFSZ at the file-size limit, or the timeout
    assert len(r.stdout) <= 1000
    assert time.monotonic() - t0 < 6


def test_no_network_in_namespaces() -> None:
    if isolation() != "namespaces":
        pytest.skip("network isolation needs unshare as root")
    r = run_py("import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 80))")
    assert r.status == "failed" and ("unreachable" in r.stderr.lower() or "Errno" in r.stderr)


def test_hostile_programs_do_not_disturb_ordinary_tasks() -> None:
    """Run the hostile programs and ordinary ones together through one worker pool."""
    pool = SlotPool(3)
    hostile = {
        "loop": ("while True: pass", Limits(timeout=1.5)),
        "memory": ("x = bytearray(8 * 1024 ** 3)", Limits(timeout=3, memory_mb=512)),
        "flood": ("while True: print('y' * 10000)", Limits(timeout=2, file_mb=2)),
        "fork": ("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", Limits(timeout=1.5, processes=16)),
    }
    good = {f"ok{i}": (f"assert sum(range({i})) == {sum(range(i))}", Limits(timeout=3)) for i in range(8)}
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(3) as ex:
        futs = {name: ex.submit(pool.run, PY, {"prog.py": code}, lim) for name, (code, lim) in {**hostile, **good}.items()}
        res = {name: f.result() for name, f in futs.items()}
    assert all(res[n].status == "passed" for n in good), {n: res[n] for n in good}
    assert res["loop"].status == "timeout"
    assert res["memory"].status == "failed"
    assert res["flood"].status in ("failed", "timeout")
    # every mode: RLIMIT_NPROC binds any user but root, and as root the program runs under a worker uid
    assert res["fork"].status in ("timeout", "failed")
    assert time.monotonic() - t0 < 30
