"""CrossCodeEval (amazon-science/cceval): its published JSONL rows as Tasks, in two settings (the local
window alone, and with the row's retrieved cross-file chunks as the engine's project context), and the
with/without comparison of a run.

The data is one file per language and retrieval setting, `DIR/<language>/<file>.jsonl`
(`python/line_completion_rg1_bm25.jsonl`, ...). A row: `prompt` (the file before the hole),
`right_context` (after it), `groundtruth` (the line), `crossfile_context` = {"text", "list":
[{"retrieved_chunk", "filename", "score"}]}, `metadata` with `task_id`, `repository`, `file`.
Its tarball ships in the cceval repository (data/crosscodeeval_data.tar.xz); nothing here fetches it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .cceval_score import CCEVAL_LANGUAGES
from .data import DataUnavailable, Task

CCEVAL = "crosscodeeval"
DEFAULT_FILE = "line_completion_rg1_bm25"
NO_CONTEXT, WITH_CONTEXT = "no-context", "with-context"
SETTINGS = (NO_CONTEXT, WITH_CONTEXT)
# --languages takes the eval's short names too, so its default (py) selects python
ALIASES = {"py": "python", "ts": "typescript", "cs": "csharp", **{x: x for x in CCEVAL_LANGUAGES}}
COMPARISON = "comparison.md"
METRICS = ("em", "es")


def cceval_languages(names: Iterable[str]) -> list[str]:
    out = []
    for name in names:
        if name not in ALIASES:
            raise ValueError(f"CrossCodeEval language {name!r}: one of {', '.join(CCEVAL_LANGUAGES)} "
                             f"(or py, ts, cs)")
        out.append(ALIASES[name])
    return list(dict.fromkeys(out))


def _chunks(row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    cfc = row.get("crossfile_context") or {}  # the baseline files carry none
    if not isinstance(cfc, dict) or not isinstance(cfc.get("list", []), list):
        raise DataUnavailable(f"{where}: crossfile_context must be an object with a list")
    chunks = cfc.get("list", [])
    for k, c in enumerate(chunks):
        if not (isinstance(c, dict) and isinstance(c.get("retrieved_chunk"), str) and isinstance(c.get("filename"), str)):
            raise DataUnavailable(f"{where}: crossfile_context.list[{k}] lacks a string retrieved_chunk or filename")
    return chunks


def project_context(row: dict[str, Any], where: str = "row") -> Any:
    """The row's retrieved chunks as the engine's ProjectContext, in the row's order (the retriever's
    ranking). The rows don't say where in its file a chunk sits: its lines are counted from 0. A
    `score` of null (cceval writes one without a reranker) counts as 0: the order then decides."""
    from fim_lsp.engine.requests import ContextChunk, ProjectContext

    meta = row["metadata"]
    chunks = tuple(ContextChunk(path=c["filename"], text=c["retrieved_chunk"], start_line=0,
                                end_line=c["retrieved_chunk"].count("\n") + 1, source="retrieved",
                                score=float(c.get("score") or 0.0))
                   for c in _chunks(row, where))
    return ProjectContext(repo=str(meta.get("repository", "")), path=str(meta.get("file", "")), chunks=chunks)


def _row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataUnavailable(f"{where}: not JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise DataUnavailable(f"{where}: not a JSON object")
    for key in ("prompt", "right_context", "groundtruth"):
        if not isinstance(row.get(key), str):
            raise DataUnavailable(f"{where}: no string field {key!r}")
    meta = row.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("task_id"), str):
        raise DataUnavailable(f"{where}: no metadata.task_id")
    _chunks(row, where)
    return row


# PromptBudget's fields, each a `--budget-<field>` option of `run` (default: the server's)
BUDGET_FIELDS = ("total_tokens", "prefix_tokens", "suffix_tokens", "dllm_context_tokens")


def prompt_budget(overrides: dict[str, int | None] | None = None) -> Any:
    """The server's default PromptBudget with the given fields changed (None: keep the default);
    ValueError naming the bad one."""
    from fim_lsp.engine.requests import PromptBudget

    budget = PromptBudget(**{k: v for k, v in (overrides or {}).items() if v is not None})
    budget.validate()
    return budget


def cceval_tasks(data_dir: str | Path | None, languages: Iterable[str], file: str, setting: str,
                 budget: Any = None) -> list[Task]:
    """Every row of `data_dir/<language>/<file>.jsonl`, in file order. Both settings get the same
    prompt budget (default: the server's, PromptBudget()): the same local window, so the delta is the
    context's."""
    if setting not in SETTINGS:
        raise ValueError(f"CrossCodeEval setting {setting!r}: one of {', '.join(SETTINGS)}")
    if data_dir is None:
        raise DataUnavailable("CrossCodeEval is read from --data-dir only (no download): unpack "
                              "data/crosscodeeval_data.tar.xz of github.com/amazon-science/cceval and pass "
                              "--data-dir pointing at the folder holding python/, java/, typescript/, csharp/")
    budget = budget if budget is not None else prompt_budget()
    tasks: list[Task] = []
    seen: set[str] = set()
    for lang in cceval_languages(languages):
        path = Path(data_dir) / lang / f"{file}.jsonl"
        if not path.exists():
            raise DataUnavailable(f"--data-dir {data_dir}: {path} does not exist")
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                row = _row(line, where)
                tid = row["metadata"]["task_id"]
                if tid in seen:
                    raise DataUnavailable(f"{where}: task_id {tid!r} appears twice")
                seen.add(tid)
                context = project_context(row, where) if setting == WITH_CONTEXT else None
                tasks.append(Task(tid, CCEVAL, lang, row["prompt"], row["right_context"], row["groundtruth"],
                                  row, context=context, budget=budget))
    return tasks


def compare(root: Path) -> dict[str, Any] | None:
    """EM and ES per language, system and setting from the settings' summary.json files under `root`
    (OUT/crosscodeeval), and with minus without per system on the tasks both settings ran. None until
    both settings have a summary."""
    from .metrics import system_table
    from .store import RESULTS, read_records

    records = {s: read_records(root / s / RESULTS) for s in SETTINGS}
    if not all((root / s / "summary.json").exists() for s in SETTINGS):
        return None
    common = set.intersection(*({r["task_id"] for r in recs} for recs in records.values()))
    out: dict[str, Any] = {"tasks_in_both": len(common), "by_language": {}}
    languages = sorted({r.get("language", "") for recs in records.values() for r in recs})
    for lang in [*languages, *(["all"] if len(languages) > 1 else [])]:
        entry: dict[str, Any] = {}
        for setting, recs in records.items():
            mine = [r for r in recs if r["task_id"] in common and lang in ("all", r.get("language"))]
            entry[setting] = {m: {name: s["pass@1"] for name, s in system_table(mine, m, (1,)).items()}
                              for m in METRICS}
        entry["delta"] = {m: {name: entry[WITH_CONTEXT][m][name] - v for name, v in entry[NO_CONTEXT][m].items()
                              if name in entry[WITH_CONTEXT][m]} for m in METRICS}
        out["by_language"][lang] = entry
    return out


def render_comparison(cmp: dict[str, Any]) -> str:
    lines = ["# CrossCodeEval: with and without cross-file context", "",
             f"Tasks run in both settings: {cmp['tasks_in_both']}. EM: exact match (% of tasks); ES: edit "
             "similarity (mean, 0-100); both after cceval's statement cut and comment removal. "
             "Per-setting reports: no-context/report.md, with-context/report.md.", ""]
    for lang, e in cmp["by_language"].items():
        lines += [f"## {lang}", "", "| system | EM no ctx | EM with ctx | EM delta | ES no ctx | ES with ctx | ES delta |",
                  "|---|---|---|---|---|---|---|"]
        for name in e[NO_CONTEXT]["em"]:
            cells = []
            for m in METRICS:
                cells += [f"{100 * e[s][m][name]:.2f}" if name in e[s][m] else "-" for s in SETTINGS]
                d = e["delta"][m].get(name)
                cells.append("-" if d is None else f"{100 * d:+.2f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_comparison(root: Path) -> list[str]:
    """Write comparison.md and comparison.json under OUT/crosscodeeval once both settings have run;
    returns the headline lines to print (none before that)."""
    cmp = compare(root)
    if cmp is None:
        return []
    (root / "comparison.json").write_text(json.dumps(cmp, indent=2, sort_keys=True) + "\n")
    (root / COMPARISON).write_text(render_comparison(cmp))
    lines = []
    for lang, e in cmp["by_language"].items():
        for name in e["delta"]["em"]:
            em, es = e["delta"]["em"][name], e["delta"]["es"].get(name, 0.0)
            lines.append(f"[{lang}] {name}: EM {100 * e[NO_CONTEXT]['em'][name]:.2f} -> "
                         f"{100 * e[WITH_CONTEXT]['em'][name]:.2f} ({100 * em:+.2f}), ES "
                         f"{100 * e[NO_CONTEXT]['es'][name]:.2f} -> {100 * e[WITH_CONTEXT]['es'][name]:.2f} "
                         f"({100 * es:+.2f})")
    return lines
