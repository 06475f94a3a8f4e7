"""`score`: judge another model's completions (one JSON line per task: task_id, completion), like
human-eval-infilling's evaluate command. A `passed` field in the file is compared task by task."""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .data import SANTACODER, Task
from .metrics import summarize
from .report import write_reports
from .runner import judge_candidates
from .sandbox import SlotPool, isolation


def read_predictions(path: Path, tasks: list[Task], languages: list[str]) -> tuple[list[tuple[Task, dict[str, Any]]], list[str]]:
    """Match lines to tasks. SantaCoder ids may be bare indices among one language's rows (Open-dLLM's
    files), which need exactly one --languages."""
    by_id = {t.task_id: t for t in tasks}
    matched, unknown = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            tid = str(row["task_id"])
            if tid not in by_id and tasks and tasks[0].benchmark == SANTACODER and tid.isdigit():
                if len(languages) != 1:
                    raise SystemExit("bare numeric SantaCoder task ids need exactly one --languages")
                tid = f"{languages[0]}/{tid}"
            if tid not in by_id:
                unknown.append(tid)
                continue
            matched.append((by_id[tid], row))
    return matched, unknown


def score_file(args: argparse.Namespace, tasks: list[Task]) -> int:
    languages = [x.strip() for x in args.languages.split(",") if x.strip()]
    matched, unknown = read_predictions(Path(args.predictions), tasks, languages)
    if unknown:
        print(f"warning: {len(unknown)} task ids not in {args.benchmark} (first: {unknown[:3]})")
    samples: dict[str, int] = defaultdict(int)
    records: list[dict[str, Any]] = []
    for task, row in matched:
        rec = {"task_id": task.task_id, "sample": samples[task.task_id], "benchmark": task.benchmark,
               "language": task.language, "system": "predictions", "winner_index": 0, "seconds": 0.0,
               "candidates": [{"model": "predictions", "text": row["completion"], "perplexity": None}]}
        if "passed" in row:
            rec["reference_passed"] = bool(row["passed"])
        samples[task.task_id] += 1
        records.append(rec)
    by_id = {t.task_id: t for t in tasks}
    pool = SlotPool(args.workers)
    with cf.ThreadPoolExecutor(args.workers) as ex:
        futs = [ex.submit(judge_candidates, by_id[r["task_id"]], r["candidates"], pool, not args.no_exec, args.timeout)
                for r in records]
        for f in tqdm(cf.as_completed(futs), total=len(futs), disable=args.no_progress, desc="score"):
            f.result()
    summary = summarize(records, args.benchmark)
    missing = len({t.task_id for t in tasks} - {r["task_id"] for r in records})
    summary["missing_tasks"] = missing
    disagree = [{"task_id": r["task_id"], "reference_passed": r["reference_passed"],
                 "passed": r["candidates"][0]["judge"]["passed"], "status": r["candidates"][0]["judge"]["status"],
                 "detail": r["candidates"][0]["judge"]["detail"][-300:]}
                for r in records if "reference_passed" in r and r["reference_passed"] != r["candidates"][0]["judge"]["passed"]]
    compared = sum("reference_passed" in r for r in records)
    if compared:
        summary["reference_passed"] = {"compared": compared, "reference_passes": sum(r["reference_passed"] for r in records
                                                                                     if "reference_passed" in r),
                                       "disagreements": disagree}
    for lang, e in summary["by_language"].items():
        for metric, m in e["metrics"].items():
            if m.get("skipped"):
                print(f"[{lang}] {metric}: skipped ({m['why']})")
            else:
                s = m["systems"]["predictions"]
                print(f"[{lang}] {metric}: {s['correct']:g}/{s['samples']} = {100 * s['pass@1']:.2f}%")
    if missing:
        print(f"{missing} tasks of the benchmark have no prediction (not counted)")
    if compared:
        print(f"file's own `passed`: {summary['reference_passed']['reference_passes']}/{compared}; "
              f"disagreements with this judge: {len(disagree)}")
        for d in disagree:
            print(f"  {d['task_id']}: file says {d['reference_passed']}, here {d['status']}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "results.jsonl", "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        meta = {"system": "predictions", "predictions": str(args.predictions), "benchmark": args.benchmark,
                "languages": languages, "sandbox": isolation(), "timeout": args.timeout}
        write_reports(out, summary, records, meta)
        print(f"report: {out / 'report.md'}")
    return 0
