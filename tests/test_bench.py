"""The bench harness: its JSON holds measured figures only, and every ratio follows from them."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fim_lsp.bench.__main__ import main
from fim_lsp.bench.measure import Pass, Sample, StageSample, stage_windows
from fim_lsp.bench.models import SHAPES, write_random
from fim_lsp.bench.stats import agreement, percentile


def _close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.fixture(scope="module")
def bench_json(tiny_models: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["--ar-model", str(tiny_models / "ar"), "--dllm-model", str(tiny_models / "dllm"),
                   "--data-dir", str(shared_data), "--context-tokens", "48", "--hole-tokens", "4",
                   "--samples", "2", "--steps", "8", "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text()), buf.getvalue()


def test_json_structure_and_every_variant(bench_json: tuple[dict, str]) -> None:
    doc, printed = bench_json
    assert doc["meta"]["complete"] and doc["meta"]["machine_at_end"]["cpus"] >= 1
    kinds = {v["name"]: v["kind"] for v in doc["variants"]}
    assert kinds["qwen-alone"] == "qwen-alone" and kinds["exact"] == "exact" and kinds["editor"] == "editor"
    options = [n for n, k in kinds.items() if k == "option"]
    # every option the editor profile sets is measured alone, and together they are the profile
    editor = next(v for v in doc["variants"] if v["name"] == "editor")
    assert set(options) == set(editor["changes"]) and options
    exact_cfg = next(v for v in doc["variants"] if v["name"] == "exact")["config"]
    for v in doc["variants"]:
        if v["kind"] == "option":
            diff = {k for k in v["config"] if v["config"][k] != exact_cfg[k] and k != "profile"}
            assert diff == {v["name"]}
    (group,) = doc["groups"]
    assert len(doc["samples"]) == 2 * len(doc["variants"])
    for name, s in group["summaries"].items():
        assert s["n"] == 2 and s["total_p50_s"] > 0 and s["total_p90_s"] >= s["total_p50_s"]
        assert s["abs_peak_mb"] is None or s["abs_peak_mb"] > 10  # the process holds at least torch
        stages = {"qwen", "score"} if name == "qwen-alone" else {"qwen", "dllm", "score"}
        assert set(s["stages"]) == stages
    assert "NOT met" in printed or " met" in printed  # the targets are printed, with a verdict
    assert "ratios, measured in this run" in printed


def test_ratios_follow_from_measured_numbers(bench_json: tuple[dict, str]) -> None:
    doc, _ = bench_json
    (g,) = doc["groups"]
    sums, ratios = g["summaries"], g["ratios"]
    qwen = sums["qwen-alone"]["stages"]["qwen"]["p50_s"]
    assert _close(ratios["qwen_alone_p50_s"], qwen)
    exact = sums["exact"]
    for name, r in ratios.items():
        if not isinstance(r, dict):
            continue
        assert _close(r["ensemble_over_qwen_alone"], sums[name]["total_p50_s"] / qwen)
        samples = [s for s in doc["samples"] if s["variant"] == name]
        share = sum(s["stages"]["score"]["seconds"] for s in samples) / sum(s["total_seconds"] for s in samples)
        assert _close(r["score_share_of_total"], share)
        if name != "exact":
            assert _close(r["total_over_exact"], sums[name]["total_p50_s"] / exact["total_p50_s"])
            assert _close(r["dllm_passes_over_exact"], sums[name]["stages"]["dllm"]["forward_passes"]
                          / exact["stages"]["dllm"]["forward_passes"])
    # the hook count agrees with the engine's own count of diffusion passes
    for s in doc["samples"]:
        if "dllm" in s["stages"]:
            assert s["stages"]["dllm"]["forward_passes"] == s["reported_passes"]["dllm"]
    # exact p2 with 8 steps and a 4-token hole: floor(4 * (8 - i - 1) / 8) > 0 for i < 6, so 7 passes
    assert exact["stages"]["dllm"]["forward_passes"] == 7
    assert g["checks"]["editor_dllm_passes"]["measured"] == sums["editor"]["stages"]["dllm"]["forward_passes"]
    # the exact path agrees with itself; a variant's agreement is recomputed from the stored ids
    for name, a in g["agreement"].items():
        ex = {(s["context"], s["repeat"]): s for s in doc["samples"] if s["variant"] == "exact"}
        same = total = 0
        for s in (s for s in doc["samples"] if s["variant"] == name):
            x, y = ex[(s["context"], s["repeat"])]["token_ids"]["dllm"], s["token_ids"]["dllm"]
            total += max(len(x), len(y))
            same += sum(p == q for p, q in zip(x, y))
        assert _close(a["dllm_token_share"], same / total if total else 1.0)


def test_contexts_one_problem_each_at_the_asked_length(shared_data: Path) -> None:
    from fim_lsp.bench.contexts import make_contexts, read_problems
    from fim_lsp.tiny import build_tokenizer

    problems = read_problems(shared_data)
    assert len(problems) == 164  # HumanEval has 164 problems; the single-line file many holes each
    cs = make_contexts(problems, build_tokenizer(), 200, 3)
    assert len({c.task_id.rsplit("/L", 1)[0] for c in cs}) == 3
    for c in cs:  # a cut can re-tokenize a token or two differently at its edge
        assert abs(c.prefix_tokens - 150) <= 2 and abs(c.suffix_tokens - 50) <= 2


def test_percentile_and_agreement_units() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert _close(percentile([1.0, 2.0, 3.0, 4.0], 0.9), 3.7)
    assert percentile([], 0.5) is None

    def sample(variant: str, ids: list[int], text: str) -> Sample:
        st = StageSample(1.0, 1, 1, 1, None)
        return Sample(variant, 0, 0, 10, 4, {"dllm": st}, 1.0, None, None, {}, {"winner": text, "dllm": text},
                      {"dllm": ids})

    a = agreement([sample("exact", [1, 2, 3, 4], "a")], [sample("x", [1, 2, 9], "b")])
    assert a["pairs"] == 1 and _close(a["dllm_token_share"], 2 / 4) and a["dllm_exact_share"] == 0
    assert a["winner_exact_share"] == 0


def test_stage_windows_sequential_and_concurrent() -> None:
    w = stage_windows(0.0, 10.0, {"qwen": 2.0, "dllm": 7.0, "score": 1.0})
    assert w == {"qwen": (0.0, 2.0), "dllm": (2.0, 9.0), "score": (9.0, 10.0)}
    w = stage_windows(0.0, 8.0, {"qwen": 2.0, "dllm": 7.0, "score": 1.0})  # side by side on a GPU
    assert w["dllm"] == (0.0, 7.0) and w["qwen"] == (0.0, 2.0)
    assert Pass(0.0, "ar", 3).positions == 3


def test_shapes_and_small_checkpoint_reuse(tmp_path: Path) -> None:
    real = SHAPES["real"]  # REFERENCE.md section 1
    assert (real.hidden, real.layers, real.heads, real.kv_heads, real.intermediate, real.vocab_rows) == \
        (896, 24, 14, 2, 4864, 151936)
    ck = write_random(tmp_path, "small", None)  # no data dir: the tiny tokenizer
    cfg = json.loads((ck.ar / "config.json").read_text())
    assert cfg["hidden_size"] == 64 and cfg["vocab_size"] == 151936 and cfg["tie_word_embeddings"]
    assert (ck.dllm / "tokenizer_config.json").is_file() and "tiny" in ck.tokenizer
    stamp = (ck.ar / "config.json").stat().st_mtime_ns
    write_random(tmp_path, "small", None)  # same shape and tokenizer: reused, not rewritten
    assert (ck.ar / "config.json").stat().st_mtime_ns == stamp


def test_variants_are_the_editor_profile_options() -> None:
    from fim_lsp.engine.config import EngineConfig
    from fim_lsp.bench.variants import build_variants

    variants, _ = build_variants(EngineConfig())
    by_name = {v.name: v for v in variants}
    exact, editor = by_name["exact"].config, by_name["editor"].config
    assert exact.score_reuse is False  # the seed's separate scoring pass
    for v in variants:
        if v.kind == "option":  # exactly one field off the exact path, at the editor's value
            assert getattr(v.config, v.name) == getattr(editor, v.name) != getattr(exact, v.name)
    subset, notes = build_variants(EngineConfig(), ["editor"])
    assert [v.name for v in subset] == ["qwen-alone", "editor"] and notes
    with pytest.raises(ValueError, match="unknown variant"):
        build_variants(EngineConfig(), ["nope"])
