"""`python -m fim_lsp.eval score` as a user runs it (issue 10's second table): bad input lines,
interrupts and kills, resume, and a headline that counts tasks."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fim_lsp.eval.cli import main
from fim_lsp.eval.data import load_tasks

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present beside the checkout")
BENCH = "humaneval-single-line"


def score(preds: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fim_lsp.eval", "score", "--benchmark", BENCH, "--predictions", str(preds),
            "--data-dir", str(DATA), "--out", str(out), "--workers", "2", "--no-progress", *extra]


def line(task_id: str, completion: str, **extra: object) -> bytes:
    return (json.dumps({"task_id": task_id, "completion": completion, **extra}) + "\n").encode()


def results(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def tasks() -> list:
    return load_tasks(BENCH, DATA)


def test_bad_lines_are_reported_by_number_and_skipped(tasks: list, tmp_path: Path) -> None:
    good = [line(t.task_id, t.middle) for t in tasks[:3]]
    bad = [b'{"task_id": "x", "completion": \n', b"\xff\xfe not utf-8\n",
           b'{"task_id": "%s"}\n' % tasks[0].task_id.encode(),
           b'{"task_id": "%s", "completion": null}\n' % tasks[0].task_id.encode(),
           b'{"task_id": "%s", "completion": "\\ud800"}\n' % tasks[0].task_id.encode(), b"[1, 2]\n"]
    preds = tmp_path / "preds.jsonl"
    preds.write_bytes(good[0] + b"".join(bad) + b"".join(good[1:]))
    r = subprocess.run(score(preds, tmp_path / "out"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    shown = {int(x.split()[2].rstrip(":")): x for x in r.stdout.splitlines() if x.startswith("skipped line ")}
    for n, why in [(2, "not JSON"), (3, "not UTF-8"), (4, "completion missing"), (5, "completion missing"),
                   (6, "lone surrogate"), (7, "not a JSON object")]:
        assert why in shown[n], (n, r.stdout)
    assert len(results(tmp_path / "out")) == 3
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["bad_lines"]) == 6 and summary["missing_tasks"] == len(tasks) - 3


def test_headline_counts_tasks_missing_and_duplicates(tasks: list, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    one = tmp_path / "one.jsonl"
    one.write_bytes(line(tasks[0].task_id, tasks[0].middle))
    assert main(score(one, tmp_path / "o1")[3:]) == 0
    stdout = capsys.readouterr().out
    assert f"pass@1 100.00% (averaged per task) on 1/{len(tasks)} tasks ({len(tasks) - 1} missing from the predictions)" \
        in stdout
    dup = tmp_path / "dup.jsonl"  # task 0 twice (right, then wrong), task 1 once (right)
    dup.write_bytes(line(tasks[0].task_id, tasks[0].middle) + line(tasks[0].task_id, "    return None\n")
                    + line(tasks[1].task_id, tasks[1].middle))
    assert main(score(dup, tmp_path / "o2")[3:]) == 0
    stdout = capsys.readouterr().out
    assert f"pass@1 75.00% (averaged per task) on 2/{len(tasks)} tasks" in stdout, stdout
    assert "2/3 samples correct (tasks with several lines: each line is one sample)" in stdout
    assert sorted((x["task_id"], x["sample"]) for x in results(tmp_path / "o2")) == \
        [(tasks[0].task_id, 0), (tasks[0].task_id, 1), (tasks[1].task_id, 0)]


def interruptible() -> None:
    """In the child before exec: Ctrl-C handled as a terminal would deliver it, whatever signal state
    the test process has picked up (an ignored or blocked SIGINT is inherited across exec, and Python
    then never raises KeyboardInterrupt: the run would finish and exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def _wait_for(out: Path, n: int, proc: subprocess.Popen, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while len(results(out)) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def test_interrupt_and_kill_lose_nothing_and_a_rerun_resumes(tasks: list, tmp_path: Path) -> None:
    """Each program sleeps 1 s. Ctrl-C must end the run without judging the rest (queued tasks are
    dropped: fewer than all are saved), say exactly how many tasks were saved; SIGKILL keeps every
    saved line; the rerun judges only the rest. (No wall-clock bound: on a loaded machine the 1 s
    programs say nothing about "at once"; the sandbox tests check that in-flight programs die.)"""
    n = 8
    preds = tmp_path / "slow.jsonl"
    preds.write_bytes(b"".join(line(t.task_id, "    import time; time.sleep(1)\n" + t.middle) for t in tasks[:n]))
    out = tmp_path / "out"
    proc = subprocess.Popen(score(preds, out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    _wait_for(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    saved = len(results(out))
    assert proc.returncode == 130 and f"interrupted: {saved} tasks judged and saved in this run" in err, err
    assert saved < n

    proc = subprocess.Popen(score(preds, out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out, saved + 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    kept = len(results(out))
    assert saved < kept < n

    r = subprocess.run(score(preds, out), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert f"{n - kept} judged now, {kept} already judged" in r.stdout, r.stdout
    ids = [x["task_id"] for x in results(out)]
    assert sorted(ids) == sorted(t.task_id for t in tasks[:n])  # every task once


def test_resume_refuses_another_predictions_file(tasks: list, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(line(tasks[0].task_id, tasks[0].middle))
    b.write_bytes(line(tasks[0].task_id, "    return None\n"))
    assert main(score(a, tmp_path / "out")[3:]) == 0
    with pytest.raises(SystemExit, match="other settings.*predictions_sha256"):
        main(score(b, tmp_path / "out")[3:])
    assert os.path.getsize(tmp_path / "out" / "results.jsonl") > 0


def test_resume_from_a_pipe_refuses_other_bytes(tasks: list, tmp_path: Path) -> None:
    """`cat file | score --predictions /dev/stdin`: the hash is of the bytes judged, not of the drained pipe."""
    good, wrong = line(tasks[0].task_id, tasks[0].middle), line(tasks[0].task_id, "    return None\n")
    out = tmp_path / "out"
    r = subprocess.run(score(Path("/dev/stdin"), out), input=good, cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 0 and b"pass@1 100.00%" in r.stdout, r.stdout + r.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["predictions_sha256"] == hashlib.sha256(good).hexdigest()
    r = subprocess.run(score(Path("/dev/stdin"), out), input=wrong, cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode != 0 and b"other settings (predictions_sha256" in r.stderr, r.stdout + r.stderr
    r = subprocess.run(score(Path("/dev/stdin"), tmp_path / "fresh"), input=wrong, cwd=ROOT, capture_output=True,
                       timeout=120)
    assert b"pass@1 0.00%" in r.stdout  # the wrong file alone


def test_resume_refuses_changed_benchmark_data(tasks: list, tmp_path: Path) -> None:
    """The same predictions against a data dir whose test was changed to fail is another run."""
    name = "HumanEval-SingleLineInfilling.jsonl.gz"
    changed = tmp_path / "data" / "human-eval-infilling"
    changed.mkdir(parents=True)
    rows = [json.loads(x) for x in gzip.open(DATA / "human-eval-infilling" / name, "rt")]
    rows[0]["test"] += "\n    assert False\n"
    with gzip.open(changed / name, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    preds = tmp_path / "p.jsonl"
    preds.write_bytes(line(tasks[0].task_id, tasks[0].middle))
    assert main(score(preds, tmp_path / "out")[3:]) == 0
    args = score(preds, tmp_path / "out")[3:]
    args[args.index("--data-dir") + 1] = str(tmp_path / "data")
    with pytest.raises(SystemExit, match="other settings.*data_sha256"):
        main(args)


def test_workers_beyond_the_uid_slots_are_refused(tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_bytes(b"")
    r = subprocess.run(score(preds, tmp_path / "out", "--workers", "65"), cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "--workers: 65: between 1 and 64" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_passed_field_that_is_not_a_boolean_is_not_compared(tasks: list, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_bytes(line(tasks[0].task_id, "    return None\n", passed="false")
                      + line(tasks[1].task_id, tasks[1].middle, passed=True))
    assert main(score(preds, tmp_path / "out")[3:]) == 0
    stdout = capsys.readouterr().out
    assert 'ignored line 1: `passed` is "false", not true or false' in stdout
    assert "file's own `passed`: 1/1; disagreements with this judge: 0" in stdout, stdout


def test_a_torn_last_line_is_never_a_judged_task(tasks: list, tmp_path: Path) -> None:
    """A complete record without its newline (killed between the two writes) is judged again."""
    preds = tmp_path / "p.jsonl"
    preds.write_bytes(line(tasks[0].task_id, tasks[0].middle) + line(tasks[1].task_id, tasks[1].middle))
    out = tmp_path / "out"
    assert main(score(preds, out)[3:]) == 0
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text[:-1])  # the last record, whole but for its newline
    r = subprocess.run(score(preds, out), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "1 judged now, 1 already judged" in r.stdout, r.stdout
    assert sorted(x["task_id"] for x in results(out)) == sorted(t.task_id for t in tasks[:2])
