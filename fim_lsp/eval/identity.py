"""What decides a verdict besides the completion, recorded in run.json so that a resume never mixes
verdicts of two different judges: the benchmark rows as loaded, the judge's own code, and the
runtimes that run the tests."""
from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from .data import Task
from .sandbox import python_executable

# the program assembly and EM rules, the pass rule and limits, the confinement, CrossCodeEval's EM/ES
JUDGE_CODE = ("judge.py", "sandbox.py", "jail.py", "cceval_score.py")
RUNTIMES = {"py": lambda: [python_executable(), "--version"], "js": lambda: ["node", "--version"],
            "java": lambda: ["java", "-version"]}


def data_sha256(tasks: list[Task]) -> str:
    """SHA-256 of every task's benchmark row in order (prompt, suffix, tests, ...): a changed test,
    wherever the data came from, is another run."""
    h = hashlib.sha256()
    for t in tasks:
        h.update(json.dumps([t.task_id, t.raw], sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


@lru_cache(maxsize=1)
def judge_code_sha256() -> str:
    h = hashlib.sha256()
    for name in JUDGE_CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=None)
def runtime_version(language: str) -> str:
    """The first line the language's runtime prints for its version ('missing' when it is absent)."""
    try:
        r = subprocess.run(RUNTIMES[language](), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"missing ({type(err).__name__})"
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]


def verdict_identity(tasks: list[Task], languages: list[str], execute: bool) -> dict[str, Any]:
    return {"data_sha256": data_sha256(tasks), "judge_code_sha256": judge_code_sha256(),
            "runtimes": {lang: runtime_version(lang) for lang in languages} if execute else {}}
