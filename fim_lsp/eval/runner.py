"""The run loop shared by `run` and `score`: generate, judge in a worker pool, append each finished
task, resume, shard; Ctrl-C stops at once and says what was saved."""
from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .data import Task
from .judge import Judgement, judge
from .sandbox import SlotPool
from .store import Appender, read_records, record_key
from .systems import Job, System


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, carrying how many tasks were saved before it."""

    def __init__(self, saved: int, left: int) -> None:
        super().__init__(f"{saved} tasks saved, {left} not judged")
        self.saved, self.left = saved, left


def shard_tasks(tasks: list[Task], shard: tuple[int, int] | None) -> list[Task]:
    if shard is None:
        return tasks
    i, n = shard
    return [t for k, t in enumerate(tasks) if k % n == i]


def judge_candidates(task: Task, candidates: list[dict[str, Any]], pool: SlotPool, execute_tests: bool,
                     timeout: float | None) -> None:
    """Judge each distinct text once: the models often agree, and the program is deterministic.
    A judging error (the harness's, not the program's) marks that candidate ``error``: never the run."""
    cache: dict[str, Judgement] = {}
    for c in candidates:
        text = c["text"]
        if text not in cache:
            try:
                cache[text] = judge(task, text, pool, execute_tests, timeout)
            except Exception as exc:  # noqa: BLE001 - one task's harness failure must not end the run
                cache[text] = Judgement(False, "error", detail=f"judging failed: {type(exc).__name__}: {exc}")
        c["judge"] = cache[text].to_dict()


def make_record(job: Job, gen: dict[str, Any], system: str) -> dict[str, Any]:
    t = job.task
    timings = gen.get("timings") or {}
    seconds = gen.get("batch_seconds")
    if seconds is None:
        seconds = timings.get("total", sum(v for v in timings.values() if isinstance(v, (int, float))))
    return {"task_id": t.task_id, "sample": job.sample, "benchmark": t.benchmark, "language": t.language,
            "system": system, "reference": t.middle, **{k: v for k, v in gen.items() if k != "batch_seconds"},
            "seconds": seconds}


def sample_jobs(tasks: list[Task], samples: int) -> list[Job]:
    """Sample-major order: a batch never mixes sample indices (each sample has its own seed)."""
    return [Job(t, s) for s in range(samples) for t in tasks]


def run_jobs(jobs: list[Job], system: System, results_path: Path, *, workers: int = 4, batch_size: int = 1,
             execute_tests: bool = True, timeout: float | None = None, progress: bool = True) -> dict[str, int]:
    """Run every job not yet in ``results_path``. Returns counts: done before, run now.
    Raises Interrupted on Ctrl-C, after killing the sandboxes in flight (their tasks are not saved)."""
    done = {record_key(r) for r in read_records(results_path)}
    todo = [j for j in jobs if (j.task.task_id, j.sample) not in done]
    skipped = len(jobs) - len(todo)
    appender = Appender(results_path)
    slots = SlotPool(workers)
    bar = tqdm(total=len(jobs), initial=skipped, desc=results_path.parent.name, unit="task",
               disable=not progress, dynamic_ncols=True)
    saved = 0

    def finish(job: Job, gen: dict[str, Any]) -> bool:
        judge_candidates(job.task, gen["candidates"], slots, execute_tests, timeout)
        if slots.cancelled:
            return False  # a killed sandbox says nothing about the program
        appender.write(make_record(job, gen, system.name))
        return True

    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge")
    pending: set[cf.Future[bool]] = set()

    def reap(until: int) -> None:
        nonlocal saved
        while len(pending) > until:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for f in finished:
                pending.discard(f)
                saved += f.result()
                bar.update(1)
    try:
        for batch in _batches(todo, batch_size):
            for job, gen in zip(batch, system.generate(batch)):
                pending.add(pool.submit(finish, job, gen))
            # back-pressure: generation must not run far ahead of judging (memory, and lost work on Ctrl-C)
            reap(workers * 2 - 1)
        reap(0)
    except KeyboardInterrupt:
        slots.cancel()  # sandboxes in flight are killed within ~50 ms
        pool.shutdown(wait=True, cancel_futures=True)
        saved += sum(f.result() for f in pending if f.done() and not f.cancelled())
        raise Interrupted(saved, len(todo) - saved) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        appender.close()
        bar.close()
    return {"skipped_finished": skipped, "ran": saved}


def _batches(jobs: list[Job], size: int) -> list[list[Job]]:
    out: list[list[Job]] = []
    for job in jobs:
        if out and len(out[-1]) < size and out[-1][0].sample == job.sample:
            out[-1].append(job)
        else:
            out.append([job])
    return out
