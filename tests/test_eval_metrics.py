"""Metric functions on hand-made records whose answers are known."""
from __future__ import annotations

import math

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
