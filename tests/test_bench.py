"""The bench harness: the server variant runs the server's own configuration and request, the figures
are measured, and the arithmetic over them (percentiles, ratios, agreement, target verdicts) is checked on
hand-made samples with hand-computed answers."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from fim_lsp.bench.__main__ import engine_configs, main, parse_args
from fim_lsp.bench.measure import Pass, Sample, StageSample, measure, stage_windows
from fim_lsp.bench.models import SHAPES, write_random
from fim_lsp.bench.report import CHECK_TEXT, print_group, print_server_targets
from fim_lsp.bench.server_variant import server_config, simulated_stop, single_line
from fim_lsp.bench.stats import agreement, group_report, percentile, server_checks, summarize
from fim_lsp.engine.config import EngineConfig, config_from_args
from fim_lsp.engine.ensemble import Engine, FimRequest
from fim_lsp.server.main import build_parser

KINDS = {"qwen-alone": "qwen-alone", "exact": "exact", "editor": "editor", "server": "server",
         "server-qwen-alone": "server-qwen-alone"}


def _close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _run(argv: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


def _sample(variant: str, total: float, stages: dict[str, tuple[float, int]], context: int = 0,
            context_tokens: int = 256, **kw) -> Sample:
    """A hand-made sample: stages maps a stage to (seconds, forward passes)."""
    st = {k: StageSample(seconds=sec, forward_passes=fp, positions=fp * 10, out_tokens=4, peak_mb=None)
          for k, (sec, fp) in stages.items()}
    return Sample(variant, context, 0, context_tokens, 16, st, total, None, None, {}, **kw)


# -- end to end on the tiny checkpoints -------------------------------------------------------------

@pytest.fixture(scope="module")
def bench_json(tiny_models: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = _run(["--ar-model", str(tiny_models / "ar"), "--dllm-model", str(tiny_models / "dllm"),
                    "--data-dir", str(shared_data), "--context-tokens", "48", "--hole-tokens", "4",
                    "--samples", "2", "--steps", "8", "--json", str(out)])
    return json.loads(out.read_text()), printed


def test_json_structure_and_every_variant(bench_json: tuple[dict, str]) -> None:
    doc, printed = bench_json
    assert doc["meta"]["complete"] and doc["meta"]["machine_at_end"]["cpus"] >= 1
    kinds = {v["name"]: v["kind"] for v in doc["variants"]}
    assert {k: kinds[k] for k in KINDS} == KINDS
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
        stages = {"qwen", "score"} if "qwen-alone" in name else {"qwen", "dllm", "score"}
        assert set(s["stages"]) == stages
    # each issue-6 verdict is the measured value against its limit
    for key, c in group["checks"].items():
        verdict = "met" if c["measured"] <= c["limit"] else "NOT met"
        assert f"{CHECK_TEXT[key]}: {c['measured']:.3f} (target <= {c['limit']}) {verdict}\n" in printed
    # --steps was given, so the server variant takes it; --temperature was not, so it keeps the server's
    server = next(v for v in doc["variants"] if v["name"] == "server")["config"]
    assert server["steps"] == 8 and server["temperature"] == 0.6 and server["profile"] == "editor"
    assert exact_cfg["temperature"] == 0.0


def test_hook_counts_agree_with_the_engine(bench_json: tuple[dict, str]) -> None:
    doc, _ = bench_json
    for s in doc["samples"]:
        assert s["hooked"]
        if "dllm" in s["stages"]:
            assert s["stages"]["dllm"]["forward_passes"] == s["reported_passes"]["dllm"]
    (g,) = doc["groups"]
    # exact p2 with 8 steps and a 4-token hole: floor(4 * (8 - i - 1) / 8) > 0 for i < 6, so 7 passes
    assert g["summaries"]["exact"]["stages"]["dllm"]["forward_passes"] == 7


def test_server_variant_end_to_end(tiny_models: Path, shared_data: Path, tmp_path: Path) -> None:
    """`--variants server` alone runs the 256- and 1024-token contexts and prints every issue-9 target."""
    out = tmp_path / "server.json"
    printed = _run(["--ar-model", str(tiny_models / "ar"), "--dllm-model", str(tiny_models / "dllm"),
                    "--data-dir", str(shared_data), "--variants", "server", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert [v["name"] for v in doc["variants"]] == ["server-qwen-alone", "server"]
    assert [g["context_tokens"] for g in doc["groups"]] == [256, 1024]
    checks = doc["meta"]["server_targets"]
    assert set(checks) == {"server_p50_256", "server_p90_256", "server_p50_1024", "server_over_qwen_256",
                           "server_over_qwen_1024"}
    for c in checks.values():
        assert c["measured"] is not None
        verdict = "met" if c["measured"] <= c["limit"] else "NOT met"
        assert f": {c['measured']:.3f} (target <= {c['limit']}) {verdict}\n" in printed
    assert "load, models=both" in printed and "Qwen decode ms/token" in printed
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_models / "ar"))
    middles = {int(n): [c["middle"] for c in cs] for n, cs in doc["meta"]["contexts"].items()}
    for s in doc["samples"]:
        # HumanEval's hole is a whole line: the cursor sits before the next line's code, so single-line
        assert s["single_line"]
        budget = simulated_stop(tok, middles[s["context_tokens"]][s["context"]])
        assert s["qwen_budget"] == budget
        assert s["stages"]["qwen"]["forward_passes"] <= budget and s["stages"]["qwen"]["out_tokens"] <= budget
        if s["variant"] == "server":  # hole length unknown: one candidate per single-line length
            assert sorted(k for k in s["texts"] if k.startswith("dllm")) == ["dllm-16", "dllm-8"]


def test_compiled_engine_takes_the_engines_counts(tiny_models: Path) -> None:
    # Stands in for an engine replaying CUDA graphs (none here): measure() must register no hook and
    # take the engine's own counts. The property swallows the engine's own assignment of the flag.
    class Captured(Engine):
        compiled = property(lambda self: True, lambda self, value: None)

    cfg = EngineConfig(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                       temperature=0.0, steps=4, max_new_tokens=3)
    engine = Captured(cfg)
    engine.load()
    s = measure(engine, FimRequest("def f(x):\n    return ", "\n", dllm_length=4), "v", 0, 0, 16, 4)
    assert not s.hooked
    assert s.stages["qwen"].forward_passes == s.reported_passes["qwen"] and s.stages["qwen"].positions is None
    assert s.stages["dllm"].forward_passes == s.reported_passes["dllm"] and s.stages["dllm"].positions is None
    assert s.stages["score"].forward_passes is None
    summary = summarize([s])
    assert not summary.hooked and summary.stages["score"].forward_passes is None


def test_side_scoring_is_reported_inside_the_diffusion_stage(tiny_models: Path) -> None:
    """With the diffusion stage beside Qwen (overlap on: a second thread, here on CPU), its candidates are
    scored in its own stage: the bench says so and the score stage counts only what is left."""
    cfg = EngineConfig(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                       temperature=0.0, steps=4, max_new_tokens=3, compile="on", overlap="on")
    engine = Engine(cfg)
    engine.load()
    s = measure(engine, FimRequest("def f(x):\n    return ", "\n", dllm_length=4), "server", 0, 0, 16, 4)
    assert s.dllm_score_s is not None and 0 < s.dllm_score_s < s.stages["dllm"].seconds
    assert s.stages["score"].out_tokens == s.stages["qwen"].out_tokens  # Qwen's candidate alone
    rep = group_report(16, 4, {"server": [s]}, KINDS)
    buf = io.StringIO()
    print_group(rep, buf)
    assert f"server: the diffusion candidates scored beside Qwen in {s.dllm_score_s:.3f} s" in buf.getvalue()


# -- the server variant's configuration and request -------------------------------------------------

def test_server_config_is_the_servers_own() -> None:
    cfg = server_config("ar-dir", "dllm-dir", "cpu", "auto")
    want = config_from_args(build_parser().parse_args(["--ar-model", "ar-dir", "--dllm-model", "dllm-dir",
                                                       "--device", "cpu", "--dtype", "auto"]))
    assert cfg == want
    assert (cfg.profile, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.dllm_length) == \
        ("editor", 0.6, 0.95, 128, None)
    # bench options given explicitly reach it as the server's own options would
    assert server_config("a", "b", "cpu", "auto", {"temperature": 0.0, "steps": 8}).temperature == 0.0


def test_bench_options_override_the_server_only_when_given() -> None:
    base, server = engine_configs(parse_args(["--random-config", "small"]), "a", "b")
    assert (base.temperature, server.temperature) == (0.0, 0.6)  # oracle greedy, server as it runs
    assert server.steps == EngineConfig.steps and server.profile == "editor"
    base, server = engine_configs(parse_args(["--random-config", "small", "--temperature", "0.3", "--steps", "5",
                                              "--max-new-tokens", "7"]), "a", "b")
    assert (base.temperature, base.steps, server.temperature, server.steps, server.max_new_tokens) == \
        (0.3, 5, 0.3, 5, 7)


def test_context_defaults_and_multiline_option() -> None:
    assert parse_args(["--random-config", "small", "--variants", "server"]).context_tokens == [256, 1024]
    assert parse_args(["--random-config", "small"]).context_tokens == [256]
    given = parse_args(["--random-config", "small", "--variants", "server", "--context-tokens", "64"])
    assert given.context_tokens == [64]
    assert parse_args(["--random-config", "small"]).multiline == "auto"  # the server setting's default
    with pytest.raises(SystemExit):
        parse_args(["--random-config", "small", "--multiline", "sometimes"])


def test_single_line_decision_as_the_server_makes_it() -> None:
    mid = ("x = compute(", "a, b)\nprint(x)\n")  # code after the cursor on its line
    start = ("def f():\n", "\n    pass\n")  # cursor at the start of an empty line
    closers = ("print(f(", "))\n")  # only closing brackets after the cursor
    humaneval = ("def f(x):\n", "    return x\n")  # a removed line: the next line's code follows the cursor
    assert single_line(*mid) and not single_line(*start) and not single_line(*closers) and single_line(*humaneval)
    assert single_line(*start, multiline="never") and not single_line(*mid, multiline="always")


def test_simulated_stop_counts_the_middle_and_its_newline(shared_data: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(shared_data / "tokenizers" / "qwen2.5-coder"))
    # Qwen2.5 splits "    return x + 1" into '   ', ' return', ' x', ' +', ' ', '1' (digits on their own)
    assert simulated_stop(tok, "    return x + 1\n") == 7
    assert simulated_stop(tok, "    return x + 1") == 7  # no newline in the reference: still one to stop on
    assert simulated_stop(tok, "\n") == 1


# -- arithmetic on hand-made samples ----------------------------------------------------------------

def test_percentile_and_agreement_units() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert _close(percentile([1.0, 2.0, 3.0, 4.0], 0.9), 3.7)
    assert percentile([], 0.5) is None

    def sample(variant: str, context: int, ids: list[int], text: str, winner: str) -> Sample:
        return _sample(variant, 1.0, {"dllm": (1.0, 1)}, context, texts={"winner": winner, "dllm": text, "qwen": "q"},
                       token_ids={"dllm": ids})

    exact = [sample("exact", 0, [1, 2, 3], "abc", "w"), sample("exact", 1, [5, 7, 8], "d", "w"),
             sample("exact", 2, [], "", "w")]
    other = [sample("x", 0, [1, 2, 3], "abc", "w"), sample("x", 1, [5, 6], "e", "v"), sample("x", 2, [], "", "w"),
             sample("x", 3, [9], "z", "w")]  # context 3 has no exact sample: not paired
    a = agreement(exact, other)
    # token positions: 3 of 3 + 1 of 3 + 0 of 0 = 4 of 6; whole candidates: contexts 0 and 2
    assert a["pairs"] == 3 and a["dllm_tokens_compared"] == 6 and _close(a["dllm_token_share"], 4 / 6)
    assert _close(a["dllm_exact_share"], 2 / 3) and _close(a["winner_exact_share"], 2 / 3)
    assert a["qwen_exact_share"] == 1.0
    a = agreement([sample("exact", 0, [1, 2, 3, 4], "a", "a")], [sample("x", 0, [1, 2, 9], "b", "b")])
    assert _close(a["dllm_token_share"], 2 / 4) and a["dllm_exact_share"] == 0 and a["winner_exact_share"] == 0


def test_group_report_arithmetic_and_issue6_verdicts() -> None:
    qwen = [_sample("qwen-alone", t, {"qwen": (q, 5), "score": (0.1, 1)}, i)
            for i, (t, q) in enumerate([(1.1, 1.0), (3.1, 3.0), (2.1, 2.0)])]
    exact = [_sample("exact", t, {"qwen": (1.0, 5), "dllm": (d, 8), "score": (sc, 1)}, i)
             for i, (t, d, sc) in enumerate([(10.0, 6.0, 3.0), (20.0, 14.0, 5.0), (30.0, 22.0, 7.0)])]
    editor = [_sample("editor", t, {"qwen": (1.0, 5), "dllm": (d, fp), "score": (sc, 1)}, i)
              for i, (t, d, fp, sc) in enumerate([(4.0, 2.0, 4, 0.5), (5.0, 3.0, 4, 0.5), (9.0, 6.0, 5, 1.0)])]
    rep = group_report(256, 16, {"qwen-alone": qwen, "exact": exact, "editor": editor}, KINDS)
    ed = rep.summaries["editor"]
    assert ed.total_p50_s == 5.0 and _close(ed.total_p90_s, 8.2)  # 5 + 0.8 * (9 - 5)
    assert _close(ed.stages["dllm"].forward_passes, 13 / 3) and ed.stages["dllm"].positions == 130 / 3
    assert rep.ratios["qwen_alone_p50_s"] == 2.0  # its generation stage, not its total
    r = rep.ratios["editor"]
    assert _close(r["ensemble_over_qwen_alone"], 5.0 / 2.0) and _close(r["score_share_of_total"], 2.0 / 18.0)
    assert _close(r["total_over_exact"], 5.0 / 20.0) and _close(r["dllm_time_over_exact"], 3.0 / 14.0)
    assert _close(r["dllm_passes_over_exact"], (13 / 3) / 8) and _close(r["score_time_over_exact"], 0.5 / 5.0)
    assert _close(rep.ratios["exact"]["score_share_of_total"], 15.0 / 60.0)
    assert "total_over_exact" not in rep.ratios["exact"]
    assert {k: c["met"] for k, c in rep.checks.items()} == \
        {"editor_dllm_passes": True, "editor_over_qwen": False, "editor_score_share": False}
    buf = io.StringIO()
    print_group(rep, buf)
    printed = buf.getvalue()
    assert "  editor: diffusion forward passes per completion: 4.333 (target <= 12.0) met\n" in printed
    assert "  editor: ensemble latency over Qwen alone (p50): 2.500 (target <= 2.0) NOT met\n" in printed
    assert "  editor: scoring time over total: 0.111 (target <= 0.1) NOT met\n" in printed


def test_server_targets_verdicts() -> None:
    def group(n: int, totals: list[float], alone: list[float]):
        server = [_sample("server", t, {"qwen": (t / 2, 5), "dllm": (t / 4, 4), "score": (t / 4, 1)}, i, n)
                  for i, t in enumerate(totals)]
        qwen = [_sample("server-qwen-alone", q, {"qwen": (q, 5)}, i, n) for i, q in enumerate(alone)]
        exact = [_sample("exact", 1.0, {"qwen": (0.5, 5), "dllm": (0.3, 8), "score": (0.2, 1)}, 0, n)]
        return group_report(n, 16, {"server": server, "server-qwen-alone": qwen, "exact": exact}, KINDS)

    g256 = group(256, [0.10, 0.12, 0.14, 0.20, 0.30], [0.08, 0.10, 0.12, 0.20, 0.05])
    g1024 = group(1024, [0.2, 0.2, 0.2], [0.2, 0.2, 0.2])
    # the server variant is compared with the server's Qwen alone, never with the exact path
    assert _close(g256.ratios["server"]["ensemble_over_qwen_alone"], 0.14 / 0.10)
    assert "total_over_exact" not in g256.ratios["server"] and "server" not in g256.agreement
    checks = server_checks([g256, g1024])
    # p50 0.14; p90 0.20 + 0.6 * 0.10 = 0.26; 1024: p50 0.2 sits on its limit; ratios 1.4 and 1.0
    want = {"server_p50_256": (0.14, True), "server_p90_256": (0.26, False), "server_p50_1024": (0.2, True),
            "server_over_qwen_256": (1.4, False), "server_over_qwen_1024": (1.0, True)}
    assert {k: (round(c["measured"], 9), c["met"]) for k, c in checks.items()} == want
    buf = io.StringIO()
    print_server_targets(checks, {256: None, 1024: 3.25}, {"both": 12.5}, buf)
    printed = buf.getvalue()
    for line in ("server, 256-token context: latency p50 s: 0.140 (target <= 0.15) met",
                 "server, 256-token context: latency p90 s: 0.260 (target <= 0.25) NOT met",
                 "server, 1024-token context: latency p50 s: 0.200 (target <= 0.2) met",
                 "server, 256-token context: ensemble over Qwen alone (p50): 1.400 (target <= 1.3) NOT met",
                 "server, 1024-token context: ensemble over Qwen alone (p50): 1.000 (target <= 1.3) met",
                 "server, 1024-token context: Qwen decode ms/token (p50): 3.25",
                 "load, models=both (compile and capture included when compiled): 12.5 s"):
        assert f"  {line}\n" in printed
    # a context the run did not measure: no value, and not met
    only = server_checks([g256])
    assert only["server_p50_1024"]["measured"] is None and not only["server_p50_1024"]["met"]
    buf = io.StringIO()
    print_server_targets(only, {}, {}, buf)
    assert "1024-token context: latency p50 s: - (target <= 0.2) NOT met (not measured)\n" in buf.getvalue()


def test_qwen_decode_ms_per_token() -> None:
    # 0.5 s in Qwen's stage, 0.1 s of it the prompt pass, 11 passes: 0.4 s over 10 decode steps
    s = _sample("server", 1.0, {"qwen": (0.5, 11)}, qwen_prefill_s=0.1)
    assert _close(s.qwen_decode_ms_per_token, 40.0)
    assert _sample("server", 1.0, {"qwen": (0.5, 11)}).qwen_decode_ms_per_token is None  # no prefill timing
    assert _sample("server", 1.0, {"qwen": (0.5, 1)}, qwen_prefill_s=0.1).qwen_decode_ms_per_token is None
    slow = _sample("server", 1.0, {"qwen": (0.9, 11)}, 1, qwen_prefill_s=0.1)
    assert _close(summarize([s, slow]).qwen_decode_ms_per_token_p50, 60.0)  # median of 40 and 80


def test_contexts_one_problem_each_at_the_asked_length(shared_data: Path) -> None:
    from fim_lsp.bench.contexts import make_contexts, read_problems
    from fim_lsp.tiny import build_tokenizer

    problems = read_problems(shared_data)
    assert len(problems) == 164  # HumanEval has 164 problems; the single-line file many holes each
    cs = make_contexts(problems, build_tokenizer(), 200, 3)
    assert len({c.task_id.rsplit("/L", 1)[0] for c in cs}) == 3
    for c in cs:  # a cut can re-tokenize a token or two differently at its edge
        assert abs(c.prefix_tokens - 150) <= 2 and abs(c.suffix_tokens - 50) <= 2


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
    from fim_lsp.bench.variants import build_variants

    server = server_config("a", "b", "cpu", "auto")
    variants, _ = build_variants(EngineConfig(), server)
    by_name = {v.name: v for v in variants}
    exact, editor = by_name["exact"].config, by_name["editor"].config
    assert exact.score_reuse is False  # the seed's separate scoring pass
    for v in variants:
        if v.kind == "option":  # exactly one field off the exact path, at the editor's value
            assert getattr(v.config, v.name) == getattr(editor, v.name) != getattr(exact, v.name)
    assert by_name["server"].config == server and by_name["server-qwen-alone"].config == server.replace(models="qwen")
    subset, notes = build_variants(EngineConfig(), server, ["editor"])
    assert [v.name for v in subset] == ["qwen-alone", "editor"] and notes
    subset, notes = build_variants(EngineConfig(), server, ["server"])
    assert [v.name for v in subset] == ["server", "server-qwen-alone"] and not notes
    with pytest.raises(ValueError, match="unknown variant"):
        build_variants(EngineConfig(), server, ["nope"])
