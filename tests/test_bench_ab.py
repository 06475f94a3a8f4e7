"""python -m fim_lsp.bench.ab's arithmetic: both sides' samples pooled over rounds, p50 per variant and
stage, after / before (the bench processes themselves are the bench's, tested in test_bench.py)."""
from __future__ import annotations

import json

from fim_lsp.bench.ab import compare, parse_args, pool, table


def _bench_json(path, samples):
    path.write_text(json.dumps({"meta": {}, "samples": [
        {"variant": v, "total_seconds": total, "stages": {k: {"seconds": s} for k, s in stages.items()}}
        for v, total, stages in samples]}))
    return path


def test_rounds_are_pooled_and_ratios_taken_per_variant_and_stage(tmp_path):
    before = pool([_bench_json(tmp_path / "b0.json", [("server", 4.0, {"qwen": 1.0}), ("server", 6.0, {"qwen": 3.0})]),
                   _bench_json(tmp_path / "b1.json", [("server", 5.0, {"qwen": 2.0})])])
    after = pool([_bench_json(tmp_path / "a0.json", [("server", 2.0, {"qwen": 1.0, "score": 0.5})]),
                  _bench_json(tmp_path / "a1.json", [("server", 3.0, {"qwen": 1.0}), ("server", 1.0, {"qwen": 1.0})])])
    rows = {(r.variant, r.stage): r for r in compare(before, after)}
    total = rows[("server", "total")]
    assert (total.n_before, total.n_after, total.before_p50_s, total.after_p50_s) == (3, 3, 5.0, 2.0)
    assert total.ratio == 0.4
    assert rows[("server", "qwen")].ratio == 0.5
    score = rows[("server", "score")]  # a stage only one side has: no ratio, not a crash
    assert score.before_p50_s is None and score.ratio is None
    text = table(list(rows.values()))
    assert "| server | total | 5.00 | 2.00 | **0.40** | 3, 3 |" in text


def test_the_bench_args_follow_the_double_dash_and_get_the_data_dir():
    args, bench = parse_args(["--before", "abc", "--rounds", "2", "--", "--variants", "server"])
    assert (args.before, args.after, args.rounds) == ("abc", "HEAD", 2)
    assert bench[:2] == ["--variants", "server"] and bench[2] == "--data-dir"
    _, bench = parse_args(["--before", "abc", "--", "--data-dir", "/d"])
    assert bench == ["--data-dir", "/d"]
