"""`score`: judge another model's completions (one JSON line per task: task_id, completion), like
human-eval-infilling's evaluate command. A `passed` field in the file is compared task by task.

It runs through the same loop as `run`: each judged task is appended and fsynced, a rerun resumes,
Ctrl-C stops at once. A bad line is reported by number and skipped; it never stops the others."""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import SANTACODER, Task
from .identity import verdict_identity
from .metrics import summarize
from .report import headline, write_reports
from .runner import run_jobs
from .sandbox import isolation
from .store import RESULTS, check_run_info, read_records
from .systems import Job

SHOWN_PROBLEMS = 20


@dataclass
class Prediction:
    task: Task
    sample: int  # the n-th line for this task in the file (duplicates become extra samples)
    completion: str
    reference_passed: bool | None


@dataclass
class Predictions:
    rows: list[Prediction]
    bad_lines: list[str]  # "line N: why"
    unknown_ids: list[str]
    ignored_passed: list[str]  # "line N: why": a `passed` field that is not true/false, not compared
    sha256: str  # of the very bytes parsed (a pipe can be read once only)


def _parse_line(raw: bytes) -> tuple[str, str, Any]:
    """(task_id, completion, the raw `passed` field) of one line, or ValueError saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 (byte {err.start})") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    tid, completion = row.get("task_id"), row.get("completion")
    if not isinstance(tid, (str, int)) or isinstance(tid, bool):
        raise ValueError("no task_id (a string or an integer)")
    if not isinstance(completion, str):
        raise ValueError("completion missing or not a string" if completion is None else "completion is not a string")
    for name, value in (("task_id", str(tid)), ("completion", completion)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name} holds a lone surrogate (not valid Unicode)") from None
    return str(tid), completion, row.get("passed")


def read_predictions(path: Path, tasks: list[Task], languages: list[str]) -> Predictions:
    """Match lines to tasks. SantaCoder ids may be bare indices among one language's rows (Open-dLLM's
    files), which need exactly one --languages. The file is read once, and hashed from those bytes."""
    with open(path, "rb") as fh:
        data = fh.read()
    by_id = {t.task_id: t for t in tasks}
    seen: dict[str, int] = {}
    out = Predictions([], [], [], [], hashlib.sha256(data).hexdigest())
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            tid, completion, passed = _parse_line(raw)
        except ValueError as err:
            out.bad_lines.append(f"line {n}: {err}")
            continue
        if tid not in by_id and tasks and tasks[0].benchmark == SANTACODER and tid.isdigit():
            if len(languages) != 1:
                raise SystemExit("bare numeric SantaCoder task ids need exactly one --languages")
            tid = f"{languages[0]}/{tid}"
        if tid not in by_id:
            out.unknown_ids.append(tid)
            continue
        if passed is not None and not isinstance(passed, bool):
            out.ignored_passed.append(f"line {n}: `passed` is {json.dumps(passed)[:40]}, not true or false")
            passed = None
        out.rows.append(Prediction(by_id[tid], seen.get(tid, 0), completion, passed))
        seen[tid] = seen.get(tid, 0) + 1
    return out


class PredictionsSystem:
    """The file's completions as a System, so `score` shares `run`'s durable loop."""

    name = "predictions"

    def __init__(self, rows: list[Prediction]) -> None:
        self._rows = {(p.task.task_id, p.sample): p for p in rows}

    def info(self) -> dict[str, Any]:
        return {"system": self.name}

    def generate(self, jobs: list[Job]) -> list[dict[str, Any]]:
        out = []
        for j in jobs:
            p = self._rows[(j.task.task_id, j.sample)]
            gen: dict[str, Any] = {"candidates": [{"model": self.name, "text": p.completion, "perplexity": None}],
                                   "winner_index": 0}
            if p.reference_passed is not None:
                gen["reference_passed"] = p.reference_passed
            out.append(gen)
        return out


def reference_agreement(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The file's own `passed` against this judge, record by record."""
    compared = [r for r in records if "reference_passed" in r]
    if not compared:
        return None
    disagree = [{"task_id": r["task_id"], "sample": r["sample"], "reference_passed": r["reference_passed"],
                 "passed": r["candidates"][0]["judge"]["passed"], "status": r["candidates"][0]["judge"]["status"],
                 "detail": r["candidates"][0]["judge"]["detail"][-300:]}
                for r in compared if r["reference_passed"] != r["candidates"][0]["judge"]["passed"]]
    return {"compared": len(compared), "reference_passes": sum(r["reference_passed"] for r in compared),
            "disagreements": disagree}


def score_file(args: argparse.Namespace, tasks: list[Task]) -> int:
    languages = [x.strip() for x in args.languages.split(",") if x.strip()]
    path = Path(args.predictions)
    preds = read_predictions(path, tasks, languages)
    for line in preds.bad_lines[:SHOWN_PROBLEMS]:
        print(f"skipped {line}")
    if len(preds.bad_lines) > SHOWN_PROBLEMS:
        print(f"skipped {len(preds.bad_lines) - SHOWN_PROBLEMS} more bad lines")
    for line in preds.ignored_passed[:SHOWN_PROBLEMS]:
        print(f"ignored {line}")
    if preds.unknown_ids:
        print(f"warning: {len(preds.unknown_ids)} task ids not in {args.benchmark} "
              f"(first: {ascii(preds.unknown_ids[:3])})")
    out = Path(args.out)
    used = languages if args.benchmark == SANTACODER else ["py"]
    info = {"system": "predictions", "predictions": str(path), "predictions_sha256": preds.sha256,
            "benchmark": args.benchmark, "languages": languages, "santacoder_layout": args.santacoder_layout,
            "timeout": args.timeout, "execute": not args.no_exec, "sandbox": isolation(),
            **verdict_identity(tasks, used, not args.no_exec)}
    check_run_info(out, info)
    jobs = [Job(p.task, p.sample) for p in preds.rows]
    counts = run_jobs(jobs, PredictionsSystem(preds.rows), out / RESULTS, workers=args.workers,
                      execute_tests=not args.no_exec, timeout=args.timeout, progress=not args.no_progress)
    print(f"{counts['ran']} judged now, {counts['skipped_finished']} already judged -> {out / RESULTS}")
    wanted = {(p.task.task_id, p.sample) for p in preds.rows}
    records = [r for r in read_records(out / RESULTS) if (r["task_id"], r["sample"]) in wanted]
    summary = summarize(records, args.benchmark)
    summary["missing_tasks"] = len(tasks) - summary["tasks"]
    summary["bad_lines"] = preds.bad_lines
    summary["ignored_passed"] = preds.ignored_passed
    summary["unknown_task_ids"] = len(preds.unknown_ids)
    agreement = reference_agreement(records)
    if agreement:
        summary["reference_passed"] = agreement
    for line in headline(summary, tasks, "predictions"):
        print(line)
    if agreement:
        print(f"file's own `passed`: {agreement['reference_passes']}/{agreement['compared']}; "
              f"disagreements with this judge: {len(agreement['disagreements'])}")
        for d in agreement["disagreements"]:
            print(f"  {d['task_id']}: file says {d['reference_passed']}, here {d['status']}")
    write_reports(out, summary, records, info)
    print(f"report: {out / 'report.md'}")
    return 0
