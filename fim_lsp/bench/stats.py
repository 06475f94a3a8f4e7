"""Summaries and ratios, computed only from the samples of one run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..percentile import percentile
from .measure import STAGES, Sample
from .variants import QWEN_ALONE_KINDS, denominator

# Issue 6's targets, meant for random real-shape weights on CPU at a 256-token context and a 16-token hole.
TARGETS = {"editor_dllm_passes": 12.0, "editor_over_qwen": 2.0, "editor_score_share": 0.10}


@dataclass(frozen=True)
class ServerTarget:
    context_tokens: int
    figure: str  # "total_p50_s", "total_p90_s" or "over_qwen" (total p50 over Qwen alone's generation p50)
    limit: float


# Issue 9's targets for the server variant, meant for an H100 (bf16) at these context lengths.
SERVER_TARGETS = {
    "server_p50_256": ServerTarget(256, "total_p50_s", 0.150),
    "server_p90_256": ServerTarget(256, "total_p90_s", 0.250),
    "server_p50_1024": ServerTarget(1024, "total_p50_s", 0.200),
    "server_over_qwen_256": ServerTarget(256, "over_qwen", 1.3),
    "server_over_qwen_1024": ServerTarget(1024, "over_qwen", 1.3),
}


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclass
class StageSummary:
    p50_s: float | None
    p90_s: float | None
    forward_passes: float | None  # mean per completion
    positions: float | None  # mean query positions through the network per completion
    tokens: float | None  # mean tokens produced (generators) or scored (scoring)
    peak_mb: float | None  # highest over the samples


@dataclass
class VariantSummary:
    variant: str
    n: int
    stages: dict[str, StageSummary]
    total_p50_s: float | None
    total_p90_s: float | None
    total_peak_mb: float | None
    abs_peak_mb: float | None
    engine_passes: dict[str, float]  # mean of the engine's own Candidate.forward_passes
    qwen_decode_ms_per_token_p50: float | None = None  # when the engine reports Qwen's prefill time
    dllm_score_p50_s: float | None = None  # the diffusion candidates scored beside Qwen (overlap)
    hooked: bool = True  # every sample's forward passes were counted by hooks


def summarize(samples: list[Sample]) -> VariantSummary:
    stages = {}
    for stage in STAGES:
        ss = [s.stages[stage] for s in samples if stage in s.stages]
        if not ss:
            continue
        peaks = [x.peak_mb for x in ss if x.peak_mb is not None]
        stages[stage] = StageSummary(
            p50_s=percentile([x.seconds for x in ss], 0.5), p90_s=percentile([x.seconds for x in ss], 0.9),
            forward_passes=_mean([x.forward_passes for x in ss]), positions=_mean([x.positions for x in ss]),
            tokens=_mean([x.out_tokens for x in ss]), peak_mb=max(peaks) if peaks else None)
    totals = [s.total_seconds for s in samples]
    peaks = [s.total_peak_mb for s in samples if s.total_peak_mb is not None]
    models = sorted({m for s in samples for m in s.reported_passes})
    return VariantSummary(
        variant=samples[0].variant if samples else "", n=len(samples), stages=stages,
        total_p50_s=percentile(totals, 0.5), total_p90_s=percentile(totals, 0.9),
        total_peak_mb=max(peaks) if peaks else None,
        abs_peak_mb=max((s.abs_peak_mb for s in samples if s.abs_peak_mb is not None), default=None),
        engine_passes={m: _mean([s.reported_passes[m] for s in samples if m in s.reported_passes]) for m in models},
        qwen_decode_ms_per_token_p50=percentile(
            [d for d in (s.qwen_decode_ms_per_token for s in samples) if d is not None], 0.5),
        dllm_score_p50_s=percentile([s.dllm_score_s for s in samples if s.dllm_score_s is not None], 0.5),
        hooked=all(s.hooked for s in samples))


def agreement(exact: list[Sample], other: list[Sample]) -> dict[str, Any]:
    """How often `other` produced the exact path's output, pairing samples by (context, repeat).

    dllm_token_share: over all pairs, positions where the diffusion candidates' token ids agree, over
    the longer candidate's length (a shorter or longer answer counts its extra tokens as disagreeing;
    two empty answers agree). The *_exact shares count whole candidates that are identical."""
    by_key = {(s.context, s.repeat): s for s in exact}
    same_tok = total_tok = pairs = dllm_same = winner_same = qwen_same = 0
    for s in other:
        e = by_key.get((s.context, s.repeat))
        if e is None:
            continue
        pairs += 1
        a, b = e.token_ids.get("dllm"), s.token_ids.get("dllm")
        if a is not None and b is not None:
            n = max(len(a), len(b))
            same_tok += sum(x == y for x, y in zip(a, b)) if n else 0
            total_tok += n
            dllm_same += a == b
        qwen_same += e.texts.get("qwen") == s.texts.get("qwen")
        winner_same += e.texts.get("winner") == s.texts.get("winner")
    return {
        "pairs": pairs,
        "dllm_tokens_compared": total_tok,
        "dllm_token_share": same_tok / total_tok if total_tok else (1.0 if pairs else None),
        "dllm_exact_share": dllm_same / pairs if pairs else None,
        "qwen_exact_share": qwen_same / pairs if pairs else None,
        "winner_exact_share": winner_same / pairs if pairs else None,
    }


@dataclass
class GroupReport:
    context_tokens: int
    hole_tokens: int
    summaries: dict[str, VariantSummary]
    ratios: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


def _stage(summary: VariantSummary | None, stage: str, attr: str) -> float | None:
    if summary is None or stage not in summary.stages:
        return None
    return getattr(summary.stages[stage], attr)


def _score_share(samples: list[Sample]) -> float | None:
    # Summed over samples rather than a ratio of medians: a share of time spent must add up.
    score = sum(s.stages["score"].seconds for s in samples if "score" in s.stages)
    total = sum(s.total_seconds for s in samples)
    return score / total if total else None


def group_report(context_tokens: int, hole_tokens: int, by_variant: dict[str, list[Sample]],
                 kinds: dict[str, str]) -> GroupReport:
    sums = {name: summarize(ss) for name, ss in by_variant.items() if ss}
    rep = GroupReport(context_tokens, hole_tokens, sums)
    exact = sums.get("exact")
    # Qwen alone is its generation only: no ensemble, nothing to choose between, so no scoring pass.
    for name in QWEN_ALONE_KINDS:
        if name in sums:
            rep.ratios[f"{name.replace('-', '_')}_p50_s"] = _stage(sums[name], "qwen", "p50_s")
    for name, s in sums.items():
        kind = kinds.get(name, "")
        if kind in QWEN_ALONE_KINDS:
            continue
        r: dict[str, Any] = {
            "ensemble_over_qwen_alone": _ratio(s.total_p50_s, _stage(sums.get(denominator(kind)), "qwen", "p50_s")),
            "score_share_of_total": _score_share(by_variant[name]),
        }
        # the server variant runs another temperature and hole length: nothing to compare with the exact path
        if exact is not None and name != "exact" and kind != "server":
            r["total_over_exact"] = _ratio(s.total_p50_s, exact.total_p50_s)
            for stage in STAGES:
                r[f"{stage}_time_over_exact"] = _ratio(_stage(s, stage, "p50_s"), _stage(exact, stage, "p50_s"))
                r[f"{stage}_passes_over_exact"] = _ratio(_stage(s, stage, "forward_passes"),
                                                         _stage(exact, stage, "forward_passes"))
                r[f"{stage}_positions_over_exact"] = _ratio(_stage(s, stage, "positions"),
                                                            _stage(exact, stage, "positions"))
            rep.agreement[name] = agreement(by_variant.get("exact", []), by_variant[name])
        rep.ratios[name] = r
    editor = sums.get("editor")
    if editor is not None:
        values = {"editor_dllm_passes": _stage(editor, "dllm", "forward_passes"),
                  "editor_over_qwen": rep.ratios["editor"]["ensemble_over_qwen_alone"],
                  "editor_score_share": rep.ratios["editor"]["score_share_of_total"]}
        for key, limit in TARGETS.items():
            v = values[key]
            rep.checks[key] = _check(v, limit)
    return rep


def _check(value: float | None, limit: float) -> dict[str, Any]:
    return {"measured": value, "limit": limit, "met": value is not None and value <= limit}


def server_checks(groups: list[GroupReport], variant: str = "server") -> dict[str, dict[str, Any]]:
    """Issue 9's targets, each from the first group at its context length that measured the server variant
    (the server variant has no hole length: every group runs the same requests). A target whose context
    was not run is measured None, not met."""
    out = {}
    for key, t in SERVER_TARGETS.items():
        g = next((g for g in groups if g.context_tokens == t.context_tokens and variant in g.summaries), None)
        if g is None:
            value = None
        elif t.figure == "over_qwen":
            value = g.ratios[variant]["ensemble_over_qwen_alone"]
        else:
            value = getattr(g.summaries[variant], t.figure)
        out[key] = _check(value, t.limit) | {"context_tokens": t.context_tokens, "figure": t.figure}
    return out
