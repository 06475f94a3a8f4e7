"""summary.json, report.md and PNG plots for one run (or one scored predictions file)."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from .data import Task  # noqa: E402
from .metrics import MODELS, model_pick, outcome, primary_metric  # noqa: E402

METRIC_TITLES = {
    "pass": "execution pass@1 (tests run in the sandbox)",
    "em_first_line": "exact match, first-line rule (Qwen2.5-Coder hm_fim / Open-dLLM: first line, stripped)",
    "em_strip": "exact match, whole-output strip rule (bigcode-evaluation-harness)",
    "em": "exact match, CrossCodeEval (statement cut, comments removed, non-blank lines stripped); pass@1 = % of tasks",
    "es": "edit similarity, CrossCodeEval (fuzz.ratio of the stripped texts); pass@1 = mean ES (0-100), "
          "correct = sum of ES / 100",
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def render_markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# {summary['benchmark']}: {meta.get('system', '')}", ""]
    for k, v in meta.items():
        if k != "engine":
            lines.append(f"- {k}: `{json.dumps(v) if not isinstance(v, str) else v}`")
    if meta.get("engine"):
        lines.append(f"- engine: `{json.dumps(meta['engine'], sort_keys=True)}`")
    lines.append(f"- records: {summary['records']} ({summary['tasks']} tasks)")
    if "missing_tasks" in summary:
        lines.append(f"- tasks missing from the predictions: {summary['missing_tasks']}")
    if summary.get("bad_lines"):
        lines.append(f"- input lines skipped: {len(summary['bad_lines'])} (`bad_lines` in summary.json)")
    lines.append("")
    for lang, entry in summary["by_language"].items():
        lines += [f"## language: {lang} ({entry['tasks']} tasks)", ""]
        if entry.get("judge_status"):
            lines += ["Judge outcomes over all judged candidates: " +
                      ", ".join(f"{k} {v}" for k, v in entry["judge_status"].items()), ""]
        for metric, m in entry["metrics"].items():
            lines += [f"### {METRIC_TITLES.get(metric, metric)}", ""]
            if m.get("skipped"):
                lines += [f"Skipped: {m['why']}", ""]
                continue
            ks = sorted({k for s in m["systems"].values() for k in s if k.startswith("pass@")},
                        key=lambda k: int(k[5:]))
            lines += ["| system | correct / samples | " + " | ".join(f"{k} %" for k in ks) + " |",
                      "|---|---|" + "---|" * len(ks)]
            for name, s in m["systems"].items():
                label = {"oracle": "oracle (any candidate passes)", "random": "random pick (expectation)"}.get(name, name)
                lines.append(f"| {label} | {_num(s['correct'], '{:g}')} / {s['samples']} | " +
                             " | ".join(_pct(s.get(k)) for k in ks) + " |")
            lines.append("")
            if m.get("auroc_neg_ppl"):
                lines += ["AUROC of -perplexity for correctness: " +
                          ", ".join(f"{k} {_num(v)}" for k, v in m["auroc_neg_ppl"].items()), ""]
            if m.get("gap_buckets"):
                lines += ["Accuracy by perplexity gap, log(PPL qwen / PPL dllm) (positive: dllm looks better):", "",
                          "| gap bucket | n | qwen % | dllm % | ensemble % | oracle % |", "|---|---|---|---|---|---|"]
                for b, v in m["gap_buckets"].items():
                    lines.append(f"| {b} | {v['n']} | {_pct(v['qwen'])} | {_pct(v['dllm'])} | "
                                 f"{_pct(v['ensemble'])} | {_pct(v['oracle'])} |")
                lines.append("")
            if m.get("win_tie_loss"):
                lines += ["| ensemble vs | win | tie (both pass) | tie (both fail) | loss |", "|---|---|---|---|---|"]
                for k, v in m["win_tie_loss"].items():
                    lines.append(f"| {k.split('_vs_')[1]} | {v['win']} | {v['tie_pass']} | {v['tie_fail']} | {v['loss']} |")
                lines.append("")
        if entry.get("selection_rate"):
            lines += ["Selection rate: " + ", ".join(f"{k} {_pct(v)} %" for k, v in entry["selection_rate"].items()), ""]
        if entry.get("perplexity"):
            lines += ["| model | PPL mean | PPL median | median if correct | median if wrong |", "|---|---|---|---|---|"]
            for k, v in entry["perplexity"].items():
                lines.append(f"| {k} | {_num(v['mean'])} | {_num(v['median'])} | {_num(v['median_pass'])} | "
                             f"{_num(v['median_fail'])} |")
            lines.append("")
        cost = [(k, entry["forward_passes"].get(k), entry["candidate_seconds"].get(k)) for k in entry["forward_passes"]]
        if cost:
            lines += ["| model | forward passes / task (mean) | seconds / task (mean, median) |", "|---|---|---|"]
            for k, fp, sec in cost:
                lines.append(f"| {k} | {_num(fp and fp['mean'], '{:.1f}')} | "
                             f"{_num(sec and sec['mean'])}, {_num(sec and sec['median'])} |")
            lines.append("")
        ts = entry.get("task_seconds")
        if ts:
            lines += [f"End-to-end generation seconds per task: mean {_num(ts['mean'])}, median {_num(ts['median'])}, "
                      f"p90 {_num(ts['p90'])}", ""]
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], summary: dict[str, Any], plots: Path, metric: str) -> list[str]:
    """Only plots that have data: the canonical self-check has no perplexities, so it gets none."""
    made = []
    have = [m for m in MODELS if any(c["model"] == m and c.get("perplexity") for r in records for c in r["candidates"])]
    if not have:
        return made
    plots.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(have), figsize=(5 * len(have), 3.5), squeeze=False)
    for ax, m in zip(axes[0], have):
        for label, want, color in (("correct", True, "tab:green"), ("wrong", False, "tab:red")):
            vals = [math.log10(c["perplexity"]) for r in records if (c := model_pick(r, m)) is not None
                    and c.get("perplexity") and outcome(c, metric) is want]
            if vals:
                ax.hist(vals, bins=30, alpha=0.6, color=color, label=f"{label} ({len(vals)})")
        ax.set_title(f"{m}: perplexity by outcome ({metric})")
        ax.set_xlabel("log10 PPL")
        ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "ppl_by_outcome.png", dpi=100)
    plt.close(fig)
    made.append("ppl_by_outcome.png")
    langs = summary["by_language"]
    rates = {lang: e.get("selection_rate", {}) for lang, e in langs.items() if e.get("selection_rate")}
    if rates:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = list(rates)
        bottom = [0.0] * len(xs)
        for m in MODELS:
            v = [rates[x].get(m, 0.0) for x in xs]
            ax.bar(xs, v, bottom=bottom, label=m)
            bottom = [a + b for a, b in zip(bottom, v)]
        ax.set_ylabel("share of tasks won")
        ax.set_title("ensemble selection rate")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plots / "selection_rate.png", dpi=100)
        plt.close(fig)
        made.append("selection_rate.png")
    for lang, e in langs.items():
        buckets = e["metrics"].get(metric, {}).get("gap_buckets")
        if not buckets:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = list(buckets)
        width = 0.2
        for i, s in enumerate(("qwen", "dllm", "ensemble", "oracle")):
            ax.bar([x + (i - 1.5) * width for x in range(len(names))], [buckets[b][s] for b in names], width, label=s)
        ax.set_xticks(range(len(names)), [f"{b}\nn={buckets[b]['n']}" for b in names], fontsize=7)
        ax.set_xlabel("log(PPL qwen / PPL dllm)")
        ax.set_ylabel(metric)
        ax.set_title(f"accuracy by perplexity gap ({lang})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"accuracy_by_ppl_gap_{lang}.png"
        fig.savefig(plots / name, dpi=100)
        plt.close(fig)
        made.append(name)
    return made


def headline(summary: dict[str, Any], tasks: list[Task] | None, system: str | None = None,
             source: str = "predictions") -> list[str]:
    """One line per language, metric and system: pass@1 averaged per task, over how many of the
    benchmark's tasks (the rest named as missing from ``source``; without ``tasks``, those with a
    record), and samples when a task has several."""
    if tasks is None:
        totals = Counter({lang: e["tasks"] for lang, e in summary["by_language"].items()})
    else:
        totals = Counter(t.language for t in tasks)
        if len(totals) > 1:
            totals["all"] = len(tasks)
    lines = []
    for lang in sorted(totals):
        e = summary["by_language"].get(lang)
        if e is None:
            lines.append(f"[{lang}] 0/{totals[lang]} tasks: all missing from the {source}")
            continue
        missing = totals[lang] - e["tasks"]
        for metric, m in e["metrics"].items():
            if m.get("skipped"):
                lines.append(f"[{lang}] {metric}: skipped ({m['why']})")
                continue
            for name, s in m["systems"].items():
                if system is not None and name != system:
                    continue
                samples = f"{s['correct']:g}/{s['samples']} samples correct"
                if s["samples"] > s["tasks"]:
                    samples += " (tasks with several lines: each line is one sample)"
                lines.append(f"[{lang}] {metric} {name}: pass@1 {100 * s['pass@1']:.2f}% (averaged per task) on "
                             f"{s['tasks']}/{totals[lang]} tasks ({missing} missing from the {source}); {samples}")
    return lines


def write_reports(out: Path, summary: dict[str, Any], records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    made = plot(records, summary, out / "plots", primary_metric(summary["benchmark"]))
    body = render_markdown(summary, meta)
    if made:
        body += "## Plots\n\n" + "".join(f"![{m}](plots/{m})\n" for m in made)
    (out / "summary.json").write_text(json.dumps({"meta": meta, **summary}, indent=2, sort_keys=True) + "\n")
    (out / "report.md").write_text(body)
