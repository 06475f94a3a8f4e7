"""Metrics over per-task records: pass@k / EM per system, selection rates, perplexity statistics,
AUROC of -PPL for correctness, accuracy by PPL gap, win/tie/loss, latency. Pure functions on dicts."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable

MODELS = ("qwen", "dllm")
# the two generators' systems come from the same run: each stored candidate is judged once
DERIVED = ("ensemble", "oracle", "random")
GAP_EDGES = (-1.0, -0.25, 0.25, 1.0)  # on log(ppl_qwen / ppl_dllm)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), in the stable product form."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """P(score of a positive > score of a negative), ties counted half; None without both classes."""
    pos = sum(labels)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1  # average rank for ties
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def _ppl(c: dict[str, Any]) -> float:
    p = c.get("perplexity")
    return math.inf if p is None else float(p)


def model_pick(record: dict[str, Any], model: str) -> dict[str, Any] | None:
    """The candidate that model alone would return: its lowest-perplexity one (one per hole length)."""
    cands = [c for c in record["candidates"] if c["model"] == model]
    return min(cands, key=_ppl) if cands else None


def outcome(cand: dict[str, Any] | None, metric: str) -> bool | None:
    if cand is None:
        return None
    return cand["judge"].get("passed" if metric == "pass" else metric)


def system_outcomes(record: dict[str, Any], metric: str) -> dict[str, float | None]:
    """Outcome (1/0, or an expectation for `random`) of every system on one record."""
    out: dict[str, float | None] = {}
    models = sorted({c["model"] for c in record["candidates"]}, key=lambda m: (m not in MODELS, m))
    for m in models:
        o = outcome(model_pick(record, m), metric)
        out[m] = None if o is None else float(o)
    if all(m in models for m in MODELS):
        wi = record.get("winner_index")
        win = outcome(record["candidates"][wi], metric) if wi is not None else False
        out["ensemble"] = None if win is None else float(win)
        picks = [out[m] for m in MODELS]
        alls = [outcome(c, metric) for c in record["candidates"]]
        # the best candidate: any pass for a yes/no metric, the highest edit similarity for ES
        out["oracle"] = None if any(o is None for o in alls) else float(max(alls))
        out["random"] = None if any(p is None for p in picks) else sum(picks) / len(picks)  # expectation
    return out


def system_table(records: list[dict[str, Any]], metric: str, ks: Iterable[int]) -> dict[str, Any]:
    by_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for sys_name, o in system_outcomes(r, metric).items():
            if o is not None:
                by_task[r["task_id"]][sys_name].append(o)
    systems = sorted({s for t in by_task.values() for s in t}, key=_system_order)
    table = {}
    for s in systems:
        rows = [t[s] for t in by_task.values() if s in t]
        if not rows:
            continue
        entry: dict[str, Any] = {"tasks": len(rows), "correct": sum(sum(v) for v in rows),
                                 "samples": sum(len(v) for v in rows)}
        entry["pass@1"] = statistics.fmean(sum(v) / len(v) for v in rows)
        if s != "random":
            for k in ks:
                if k > 1 and all(len(v) >= k for v in rows):
                    entry[f"pass@{k}"] = statistics.fmean(pass_at_k(len(v), int(sum(v)), k) for v in rows)
        table[s] = entry
    return table


def _system_order(name: str) -> tuple[int, str]:
    order = ["dllm", "qwen", "ensemble", "oracle", "random"]
    return (order.index(name) if name in order else -1, name)


def _bucket(gap: float) -> str:
    lo = -math.inf
    for hi in (*GAP_EDGES, math.inf):
        if gap < hi or hi == math.inf:
            return f"[{lo:g}, {hi:g})"
        lo = hi
    return ""


def ppl_analysis(records: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """How well perplexity tracks correctness, per model and pooled over both models' picks."""
    res: dict[str, Any] = {"auroc_neg_ppl": {}, "gap_buckets": {}, "win_tie_loss": {}}
    pooled_s: list[float] = []
    pooled_y: list[bool] = []
    for m in MODELS:
        s, y = [], []
        for r in records:
            c = model_pick(r, m)
            o = outcome(c, metric)
            if c is not None and o is not None and math.isfinite(_ppl(c)):
                s.append(-_ppl(c))
                y.append(bool(o))
        if s:
            res["auroc_neg_ppl"][m] = auroc(s, y)
            pooled_s += s
            pooled_y += y
    if pooled_s:
        res["auroc_neg_ppl"]["pooled"] = auroc(pooled_s, pooled_y)
    buckets: dict[str, dict[str, Any]] = {}
    for r in records:
        q, d = model_pick(r, "qwen"), model_pick(r, "dllm")
        if q is None or d is None or not (math.isfinite(_ppl(q)) and math.isfinite(_ppl(d))):
            continue
        if _ppl(q) <= 0 or _ppl(d) <= 0:
            continue
        o = system_outcomes(r, metric)
        if any(o.get(s) is None for s in ("qwen", "dllm", "ensemble", "oracle")):
            continue
        b = buckets.setdefault(_bucket(math.log(_ppl(q) / _ppl(d))),
                               {"n": 0, "qwen": 0.0, "dllm": 0.0, "ensemble": 0.0, "oracle": 0.0})
        b["n"] += 1
        for s in ("qwen", "dllm", "ensemble", "oracle"):
            b[s] += o[s]  # type: ignore[operator]
    for name, b in sorted(buckets.items(), key=lambda kv: float(kv[0].split(",")[0][1:])):
        res["gap_buckets"][name] = {"n": b["n"], **{s: b[s] / b["n"] for s in ("qwen", "dllm", "ensemble", "oracle")}}
    for m in MODELS:
        wtl = {"win": 0, "tie_pass": 0, "tie_fail": 0, "loss": 0}
        for r in records:
            o = system_outcomes(r, metric)
            e, x = o.get("ensemble"), o.get(m)
            if e is None or x is None:
                continue
            key = "tie_pass" if e and x else "tie_fail" if not e and not x else "win" if e else "loss"
            wtl[key] += 1
        if sum(wtl.values()):
            res["win_tie_loss"][f"ensemble_vs_{m}"] = wtl
    return res


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    v = sorted(values)
    return {"mean": statistics.fmean(v), "median": statistics.median(v), "p90": v[min(len(v) - 1, int(0.9 * len(v)))],
            "n": len(v)}


def model_stats(records: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    out: dict[str, Any] = {"selection_rate": {}, "perplexity": {}, "forward_passes": {}, "candidate_seconds": {}}
    with_winner = [r for r in records if r.get("winner_index") is not None
                   and all(any(c["model"] == m for c in r["candidates"]) for m in MODELS)]
    for m in MODELS:
        if with_winner:
            out["selection_rate"][m] = sum(r["candidates"][r["winner_index"]]["model"] == m
                                           for r in with_winner) / len(with_winner)
        picks = [model_pick(r, m) for r in records]
        ppl = [_ppl(c) for c in picks if c is not None and math.isfinite(_ppl(c))]
        if ppl:
            entry = _stats(ppl) or {}
            for label, want in (("pass", True), ("fail", False)):
                sub = [_ppl(c) for c in picks if c is not None and math.isfinite(_ppl(c))
                       and outcome(c, metric) is want]
                entry[f"median_{label}"] = statistics.median(sub) if sub else None
            out["perplexity"][m] = entry
        # cost counts every candidate of the model (all hole lengths tried), per task
        fp = [sum(c.get("forward_passes", 0) for c in r["candidates"] if c["model"] == m) for r in records]
        secs = [sum(c.get("seconds", 0.0) for c in r["candidates"] if c["model"] == m) for r in records]
        if any(c["model"] == m for r in records for c in r["candidates"]):
            out["forward_passes"][m] = _stats([float(x) for x in fp])
            out["candidate_seconds"][m] = _stats(secs)
    secs = [float(r.get("seconds") or 0.0) for r in records]
    out["task_seconds"] = _stats(secs) if any(secs) else None  # scored files carry no timings
    return out


# metrics whose outcome is a share, not yes/no: the AUROC, gap buckets and win/tie/loss need yes/no
GRADED = ("es",)


def metric_names(benchmark: str) -> list[str]:
    if benchmark == "crosscodeeval":
        return ["em", "es"]
    return ["em_first_line", "em_strip", "pass"] if benchmark == "santacoder-fim" else ["pass"]


def primary_metric(benchmark: str) -> str:
    return {"santacoder-fim": "em_first_line", "crosscodeeval": "em"}.get(benchmark, "pass")


def summarize(records: list[dict[str, Any]], benchmark: str, ks: Iterable[int] = (1, 5, 10)) -> dict[str, Any]:
    """Everything the report shows, split by language (SantaCoder) and pooled."""
    ks = list(ks)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r.get("language", "py")].append(r)
    if len(groups) > 1:
        groups["all"] = list(records)
    summary: dict[str, Any] = {"benchmark": benchmark, "records": len(records),
                               "tasks": len({r["task_id"] for r in records}), "by_language": {}}
    for lang, recs in sorted(groups.items()):
        entry: dict[str, Any] = {"tasks": len({r["task_id"] for r in recs}), "records": len(recs), "metrics": {}}
        for metric in metric_names(benchmark):
            statuses = [c["judge"].get("status") for r in recs for c in r["candidates"]]
            table = system_table(recs, metric, ks)
            if not table:
                entry["metrics"][metric] = {"skipped": True, "why": _skip_reason(recs)}
                continue
            entry["metrics"][metric] = {"systems": table,
                                        **(ppl_analysis(recs, metric) if metric not in GRADED else {})}
            if metric == "pass":
                entry["judge_status"] = {s: statuses.count(s) for s in sorted(set(map(str, statuses)))}
        entry.update(model_stats(recs, primary_metric(benchmark)))
        summary["by_language"][lang] = entry
    return summary


def _skip_reason(records: list[dict[str, Any]]) -> str:
    for r in records:
        for c in r["candidates"]:
            if c["judge"].get("detail"):
                return c["judge"]["detail"]
    return "not executed"
