"""Benchmark loading: HumanEval-Infilling (4 sets) and SantaCoder-FIM, as uniform Task records.

Local raw files (``--data-dir``, laid out like ../shared/data) are the tested path. Without it the public
copies are fetched (raw GitHub for HumanEval, the Hub through ``datasets`` for SantaCoder); that network
code could not be exercised where this was written (no network) and is marked unverified.
"""
from __future__ import annotations

import gzip
import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # the engine's types; importing them here would load torch for the canonical self-check
    from fim_lsp.engine.requests import ProjectContext, PromptBudget

HUMANEVAL_FILES = {
    "humaneval-single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "humaneval-multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "humaneval-random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "humaneval-random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
HUMANEVAL_HF_SUBSETS = {
    "humaneval-single-line": "HumanEval-SingleLineInfilling",
    "humaneval-multi-line": "HumanEval-MultiLineInfilling",
    "humaneval-random-span": "HumanEval-RandomSpanInfilling",
    "humaneval-random-span-light": "HumanEval-RandomSpanInfillingLight",
}
SANTACODER = "santacoder-fim"
BENCHMARKS = (*HUMANEVAL_FILES, SANTACODER)
LANGUAGES = ("py", "js", "java")
HUMANEVAL_RAW_URL = "https://raw.githubusercontent.com/openai/human-eval-infilling/master/data/{name}"
SANTACODER_HF = "bigcode/santacoder-fim-task"
SANTACODER_FILE = "santacoder-fim/santacoder-fim-task.train.jsonl"
SANTACODER_PARQUET = "santacoder-fim/santacoder-fim-task.train.parquet"
# "file": the model sees the hole exactly where it sits in the original program.
# "open-dllm": prefix = prompt + "\n", suffix = suffix, as Open-dLLM's eval_infill.py builds it.
SANTACODER_LAYOUTS = ("file", "open-dllm")


class DataUnavailable(RuntimeError):
    """The benchmark files could not be found or fetched."""


@dataclass
class Task:
    task_id: str
    benchmark: str
    language: str
    prefix: str  # text before the hole, as the model sees it
    suffix: str  # text after the hole, as the model sees it
    middle: str  # ground truth
    raw: dict[str, Any] = field(default_factory=dict)  # the benchmark row, for building the test program
    # what the engine is given besides the text (CrossCodeEval); None: the whole prefix and suffix, no context
    context: ProjectContext | None = None
    budget: PromptBudget | None = None


def humaneval_tasks(benchmark: str, rows: Iterable[dict[str, Any]]) -> list[Task]:
    return [Task(r["task_id"], benchmark, "py", r["prompt"], r["suffix"], r["canonical_solution"], dict(r))
            for r in rows]


def santacoder_first_body_line(row: dict[str, Any]) -> bool:
    """True when the hole is the first body line: the prompt already ends in "\\n" (SOURCES.md rule)."""
    return int(row["name"].rsplit("-L", 1)[1]) == len(row["prompt"].split("\n"))


def santacoder_tasks(rows: Iterable[dict[str, Any]], languages: Iterable[str], layout: str = "file") -> list[Task]:
    """Task ids are ``<lang>/<index among that language's rows, file order>``; the py index is the
    ``task_id`` of Open-dLLM's output files."""
    wanted = list(languages)
    counters = {lang: 0 for lang in wanted}
    tasks = []
    for r in rows:
        lang = r["language"]
        if lang not in counters:
            continue
        idx = counters[lang]
        counters[lang] += 1
        if layout == "open-dllm":
            prefix, suffix = r["prompt"] + "\n", r["suffix"]
        else:
            prefix = r["prompt"] if santacoder_first_body_line(r) else r["prompt"] + "\n"
            suffix = "\n" + r["suffix"]
        tasks.append(Task(f"{lang}/{idx}", SANTACODER, lang, prefix, suffix, r["canonical_solution"], dict(r)))
    return tasks


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _offline_error(benchmark: str, detail: str) -> DataUnavailable:
    return DataUnavailable(
        f"cannot load benchmark {benchmark!r}: {detail}. If this machine is offline, pass "
        f"--data-dir DIR pointing at a folder laid out like shared/data (human-eval-infilling/*.jsonl.gz, "
        f"santacoder-fim/santacoder-fim-task.train.jsonl or .parquet).")


def _cache_dir() -> Path:
    try:
        import platformdirs
        return Path(platformdirs.user_cache_dir("fim-lsp")) / "eval-data"
    except ImportError:  # platformdirs is a dependency, but the loader should not die for a cache path
        return Path(os.path.expanduser("~/.cache/fim-lsp/eval-data"))


def _fetch_humaneval(benchmark: str) -> list[dict[str, Any]]:
    """UNVERIFIED (no network where written): raw GitHub file first, then the Hub copy."""
    name = HUMANEVAL_FILES[benchmark]
    target = _cache_dir() / name
    errors = []
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(HUMANEVAL_RAW_URL.format(name=name), timeout=30) as resp:
                data = resp.read()
            tmp = target.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(target)
        except OSError as exc:
            errors.append(f"GitHub: {exc}")
    if target.exists():
        return _read_jsonl(target)
    try:
        import datasets
        ds = datasets.load_dataset("loubnabnl/humaneval_infilling", HUMANEVAL_HF_SUBSETS[benchmark], split="test")
        return [dict(r) for r in ds]
    except Exception as exc:  # datasets raises many types (offline, script datasets refused, ...)
        errors.append(f"Hub: {exc}")
    raise _offline_error(benchmark, "; ".join(errors))


def _fetch_santacoder() -> list[dict[str, Any]]:
    """UNVERIFIED (no network where written): the Hub dataset through ``datasets``."""
    try:
        import datasets
        ds = datasets.load_dataset(SANTACODER_HF, split="train")
        return [dict(r) for r in ds]
    except Exception as exc:
        raise _offline_error(SANTACODER, f"Hub: {exc}") from exc


def _local_santacoder(data_dir: Path) -> list[dict[str, Any]] | None:
    jsonl, parquet = data_dir / SANTACODER_FILE, data_dir / SANTACODER_PARQUET
    if jsonl.exists():
        return _read_jsonl(jsonl)
    if parquet.exists():
        import pyarrow.parquet as pq  # shipped with datasets
        return pq.read_table(parquet).to_pylist()
    return None


def load_tasks(benchmark: str, data_dir: str | Path | None = None, languages: Iterable[str] = ("py",),
               santacoder_layout: str = "file") -> list[Task]:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    languages = list(languages)
    bad = [lang for lang in languages if lang not in LANGUAGES]
    if bad:
        raise ValueError(f"unknown language(s) {bad}; choose from {', '.join(LANGUAGES)}")
    if data_dir is not None:
        root = Path(data_dir)
        if benchmark == SANTACODER:
            rows = _local_santacoder(root)
            if rows is None:
                raise DataUnavailable(f"--data-dir {root}: neither {SANTACODER_FILE} nor {SANTACODER_PARQUET} exists")
            return santacoder_tasks(rows, languages, santacoder_layout)
        path = root / "human-eval-infilling" / HUMANEVAL_FILES[benchmark]
        if not path.exists():
            raise DataUnavailable(f"--data-dir {root}: {path} does not exist")
        return humaneval_tasks(benchmark, _read_jsonl(path))
    if benchmark == SANTACODER:
        return santacoder_tasks(_fetch_santacoder(), languages, santacoder_layout)
    return humaneval_tasks(benchmark, _fetch_humaneval(benchmark))
