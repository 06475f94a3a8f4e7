"""The run loop: generate, judge in a worker pool, append each finished task, resume, shard."""
from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .data import Task
from .judge import Judgement, judge
from .sandbox import SlotPool
from .store import Appender, read_records, record_key, shard_name
from .systems import Job, System


def shard_tasks(tasks: list[Task], shard: tuple[int, int] | None) -> list[Task]:
    if shard is None:
        return tasks
    i, n = shard
    return [t for k, t in enumerate(tasks) if k % n == i]


def judge_candidates(task: Task, candidates: list[dict[str, Any]], pool: SlotPool, execute_tests: bool,
                     timeout: float | None) -> None:
    """Judge each distinct text once: the models often agree, and the program is deterministic."""
    cache: dict[str, Judgement] = {}
    for c in candidates:
        text = c["text"]
        if text not in cache:
            cache[text] = judge(task, text, pool, execute_tests, timeout)
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


def run_tasks(tasks: list[Task], system: System, results_path: Path, *, samples: int = 1, workers: int = 4,
              batch_size: int = 1, execute_tests: bool = True, timeout: float | None = None,
              progress: bool = True) -> dict[str, int]:
    """Run every (task, sample) not yet in ``results_path``. Returns counts: done before, run now."""
    done = {record_key(r) for r in read_records(results_path)}
    # sample-major order: a batch never mixes sample indices (each sample has its own seed)
    jobs = [Job(t, s) for s in range(samples) for t in tasks if (t.task_id, s) not in done]
    skipped = len(tasks) * samples - len(jobs)
    appender = Appender(results_path)
    slots = SlotPool(workers)
    bar = tqdm(total=len(tasks) * samples, initial=skipped, desc=results_path.parent.name, unit="task",
               disable=not progress, dynamic_ncols=True)
    ran = 0

    def finish(job: Job, gen: dict[str, Any]) -> None:
        judge_candidates(job.task, gen["candidates"], slots, execute_tests, timeout)
        appender.write(make_record(job, gen, system.name))

    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge")
    pending: set[cf.Future[None]] = set()
    try:
        for batch in _batches(jobs, batch_size):
            for job, gen in zip(batch, system.generate(batch)):
                pending.add(pool.submit(finish, job, gen))
            # back-pressure: generation must not run far ahead of judging (memory, and lost work on Ctrl-C)
            while len(pending) >= workers * 2:
                ran += _reap(pending, bar, cf.FIRST_COMPLETED)
        while pending:
            ran += _reap(pending, bar, cf.FIRST_COMPLETED)
    finally:
        # on Ctrl-C: queued judging is dropped, the few in flight end within their sandbox timeout
        pool.shutdown(wait=True, cancel_futures=True)
        appender.close()
        bar.close()
    return {"skipped_finished": skipped, "ran": ran}


def _reap(pending: set[cf.Future[None]], bar: tqdm, when: str) -> int:
    done, _ = cf.wait(pending, return_when=when)
    for f in done:
        pending.discard(f)
        f.result()  # a judging bug must surface, not vanish
        bar.update(1)
    return len(done)



def _batches(jobs: list[Job], size: int) -> list[list[Job]]:
    out: list[list[Job]] = []
    for job in jobs:
        if out and len(out[-1]) < size and out[-1][0].sample == job.sample:
            out[-1].append(job)
        else:
            out.append([job])
    return out
