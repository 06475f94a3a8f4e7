"""Metric functions and judging limits on hand-made records whose answers are known."""
from __future__ import annotations

import math

from fim_lsp.eval.judge import default_limits
from fim_lsp.eval.metrics import auroc, pass_at_k, summarize, system_outcomes


def cand(model: str, ppl: float | None, passed: bool, fp: int = 3) -> dict:
    return {"model": model, "text": "x", "perplexity": ppl, "forward_passes": fp, "seconds": 0.1,
            "judge": {"passed": passed, "status": "passed" if passed else "failed"}}


def rec(tid: str, q: tuple, d: tuple, winner: int, sample: int = 0) -> dict:
    return {"task_id": tid, "sample": sample, "language": "py", "winner_index": winner, "seconds": 0.5,
            "candidates": [cand("qwen", *q), cand("dllm", *d)]}


def test_pass_at_k_matches_the_combinatorial_formula() -> None:
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 5), (5, 5, 2), (7, 2, 3)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert math.isclose(pass_at_k(n, c, k), exact)


def test_auroc() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([1.0, 2.0], [True, True]) is None


def test_systems_from_one_record() -> None:
    r = rec("a", (2.0, True), (1.5, False), winner=1)  # ensemble picked the wrong one
    o = system_outcomes(r, "pass")
    assert o == {"qwen": 1.0, "dllm": 0.0, "ensemble": 0.0, "oracle": 1.0, "random": 0.5}


def test_summary_tables() -> None:
    records = [
        rec("a", (2.0, True), (3.0, False), 0),
        rec("b", (2.0, False), (1.0, True), 1),
        rec("c", (1.0, False), (2.0, True), 0),
        rec("d", (9.0, False), (8.0, False), 1),
    ]
    s = summarize(records, "humaneval-single-line")
    py = s["by_language"]["py"]
    sys_ = py["metrics"]["pass"]["systems"]
    assert (sys_["qwen"]["correct"], sys_["dllm"]["correct"], sys_["ensemble"]["correct"],
            sys_["oracle"]["correct"]) == (1, 2, 2, 3)
    assert sys_["random"]["pass@1"] == 0.375
    assert py["selection_rate"] == {"qwen": 0.5, "dllm": 0.5}
    wtl = py["metrics"]["pass"]["win_tie_loss"]
    assert wtl["ensemble_vs_qwen"] == {"win": 1, "tie_pass": 1, "tie_fail": 2, "loss": 0}
    assert wtl["ensemble_vs_dllm"] == {"win": 1, "tie_pass": 1, "tie_fail": 1, "loss": 1}
    assert py["perplexity"]["qwen"]["median"] == 2.0
    assert py["forward_passes"]["dllm"]["mean"] == 3.0
    assert sum(b["n"] for b in py["metrics"]["pass"]["gap_buckets"].values()) == 4


def test_pass_at_k_over_samples() -> None:
    records = [rec("a", (1.0, s < 2), (2.0, False), 0, sample=s) for s in range(5)]
    table = summarize(records, "humaneval-single-line", ks=(1, 5))["by_language"]["py"]["metrics"]["pass"]["systems"]
    assert math.isclose(table["qwen"]["pass@1"], 0.4)
    assert table["qwen"]["pass@5"] == 1.0
    assert table["dllm"]["pass@5"] == 0.0


def test_pass_at_k_is_averaged_per_task_when_sample_counts_differ() -> None:
    """Task a: 2 samples, qwen passes 1; task b: 4 samples, qwen passes 1. Per task pass@1 is 1/2 and
    1/4, so 0.375 (pooling the 6 samples would say 2/6); pass@2 is (1 + (1 - C(3,2)/C(4,2))) / 2."""
    records = [rec("a", (1.0, s == 0), (2.0, True), 0, sample=s) for s in range(2)]
    records += [rec("b", (1.0, s == 3), (2.0, False), 1, sample=s) for s in range(4)]
    table = summarize(records, "humaneval-single-line", ks=(1, 2, 3))["by_language"]["py"]["metrics"]["pass"]["systems"]
    assert math.isclose(table["qwen"]["pass@1"], 0.375)
    assert math.isclose(table["qwen"]["pass@2"], 0.75)
    assert "pass@3" not in table["qwen"]  # task a has only 2 samples
    assert (table["qwen"]["correct"], table["qwen"]["samples"], table["qwen"]["tasks"]) == (2, 6, 2)
    assert math.isclose(table["dllm"]["pass@1"], 0.5)  # 2/2 and 0/4
    assert math.isclose(table["ensemble"]["pass@1"], (0.5 + 0.0) / 2)  # winner qwen in a, dllm in b


def test_auroc_hand_computed_with_ties() -> None:
    # pairs (positive, negative): (2,1) 1, (2,2) 0.5, (3,1) 1, (3,2) 1 -> 3.5 / 4
    assert auroc([1.0, 2.0, 2.0, 3.0], [False, True, False, True]) == 0.875


def test_lower_perplexity_means_more_likely_correct() -> None:
    """AUROC of -perplexity: qwen's passing completions have the lower perplexities (1.0), dllm's the
    higher (0.0). Pooled by hand over the 16 pairs: 6/16."""
    records = [rec(t, q, d, 0) for t, q, d in [
        ("a", (1.0, True), (1.0, False)), ("b", (2.0, True), (2.0, False)),
        ("c", (3.0, False), (5.0, True)), ("d", (4.0, False), (6.0, True))]]
    au = summarize(records, "humaneval-single-line")["by_language"]["py"]["metrics"]["pass"]["auroc_neg_ppl"]
    assert au == {"qwen": 1.0, "dllm": 0.0, "pooled": 0.375}


def test_gap_buckets_by_hand() -> None:
    """log(ppl_qwen / ppl_dllm): 2/1 -> 0.69 in [0.25, 1); 1/4 -> -1.39 in [-inf, -1); 1/1 -> 0."""
    records = [rec("a", (2.0, False), (1.0, True), 1), rec("b", (1.0, True), (4.0, False), 0),
               rec("c", (3.0, True), (3.0, True), 0)]
    buckets = summarize(records, "humaneval-single-line")["by_language"]["py"]["metrics"]["pass"]["gap_buckets"]
    assert buckets == {
        "[-inf, -1)": {"n": 1, "qwen": 1.0, "dllm": 0.0, "ensemble": 1.0, "oracle": 1.0},
        "[-0.25, 0.25)": {"n": 1, "qwen": 1.0, "dllm": 1.0, "ensemble": 1.0, "oracle": 1.0},
        "[0.25, 1)": {"n": 1, "qwen": 0.0, "dllm": 1.0, "ensemble": 1.0, "oracle": 1.0},
    }


def test_default_sandbox_limits_per_language() -> None:
    """3 s for Python (the reference harness); V8 and the JVM get longer and no RLIMIT_AS (they reserve
    huge virtual ranges); an explicit timeout overrides every default."""
    py, js, java = (default_limits(lang) for lang in ("py", "js", "java"))
    assert (py.timeout, js.timeout, java.timeout) == (3.0, 5.0, 20.0)
    assert py.memory_mb == 1024 and js.memory_mb is None and java.memory_mb is None
    assert java.processes > py.processes
    assert all(default_limits(lang, 7.5).timeout == 7.5 for lang in ("py", "js", "java"))
