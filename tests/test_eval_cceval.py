"""CrossCodeEval in `python -m fim_lsp.eval`: its JSONL rows read from --data-dir, the retrieved chunks
reaching the models' prompts through the engine in the with-context setting only, its metrics (the
statement cut, exact match, edit similarity) on hand-made predictions, both settings end to end through
the CLI on the tiny checkpoints, and a killed run resumed. The rows are written here, in the published
format (the real data can't be fetched on this machine); no assertion depends on what a random-weight
model writes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fim_lsp.eval.cceval import NO_CONTEXT, WITH_CONTEXT, cceval_tasks, prompt_budget
from fim_lsp.eval.cceval_score import (bracket_statement, edit_similarity, exact_match, python_statement,
                                       remove_comments, score)
from fim_lsp.eval.cli import main
from fim_lsp.eval.data import DataUnavailable
from fim_lsp.eval.judge import judge

ROOT = Path(__file__).resolve().parents[1]
FILE = "line_completion_rg1_bm25"


def chunk_text(i: int) -> str:
    return f"def scale_{i}(value, factor):\n    return value * factor  # helper number {i}\n"


def py_row(i: int) -> dict:
    return {"prompt": f"from helpers import scale_{i}\n\n\ndef run(x):\n    y = ",
            "right_context": "\n    return y\n",
            "groundtruth": f"scale_{i}(x, factor={i})",
            "metadata": {"task_id": f"project_cc_python/{i}", "repository": "demo-repo", "file": "src/run.py"},
            "crossfile_context": {"text": "# Here are some relevant code fragments ...",
                                  "list": [{"retrieved_chunk": chunk_text(i), "filename": "src/helpers.py",
                                            "score": 4.0},
                                           {"retrieved_chunk": f"LIMIT_{i} = {i}\n", "filename": "src/limits.py",
                                            "score": None}]}}


def java_row(i: int) -> dict:
    return {"prompt": "class Run {\n    int go(Helper h) {\n        int y = ", "right_context": "\n        return y;\n    }\n}\n",
            "groundtruth": f"h.twice({i});",
            "metadata": {"task_id": f"project_cc_java/{i}", "repository": "demo-java", "file": "src/Run.java"},
            "crossfile_context": {"text": "// ...", "list": [{"retrieved_chunk": f"int twice(int v) {{ return {i} * v; }}",
                                                            "filename": "src/Helper.java", "score": 1.5}]}}


def write_data(root: Path, python: int = 4, java: int = 2) -> Path:
    for lang, rows in (("python", [py_row(i) for i in range(python)]), ("java", [java_row(i) for i in range(java)])):
        (root / lang).mkdir(parents=True, exist_ok=True)
        (root / lang / f"{FILE}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the metrics, on hand-made predictions ---------------------------------------------------------

def test_python_prediction_is_cut_after_its_first_statement() -> None:
    prompt = "def run(x):\n    y = "
    assert python_statement(prompt, "scale(x)  \n    return y\n") == "scale(x)"
    # a statement over two lines is kept whole: the cut is the parser's, not the first newline
    assert python_statement(prompt, "scale(x,\n          2)\n    return y") == "scale(x,\n          2)"
    # no head parses before a newline: the whole completion (cceval's fallback)
    assert python_statement(prompt, "scale(x,") == "scale(x,"


def test_bracket_languages_cut_at_the_first_semicolon_or_brace() -> None:
    assert bracket_statement("h.twice(2);\n        return y;") == "h.twice(2);"
    assert bracket_statement("if (ok) {\n  go();") == "if (ok) {"
    assert bracket_statement("h.twice(2)") == "h.twice(2)"
    # cceval's quirk: a bracket as the very first character keeps the whole completion
    assert bracket_statement("}\nfoo();") == "}\nfoo();"


def test_exact_match_compares_non_blank_stripped_lines_without_comments() -> None:
    assert exact_match("  a = 1\n\n   b()  ", "a = 1\nb()")
    assert not exact_match("a = 1", "a = 2")
    assert remove_comments("x = 1  # note\ny = 2 // other") == "x = 1  \ny = 2 "


def test_edit_similarity_is_fuzz_ratio_rounded() -> None:
    # Indel similarity 2 * LCS / (len a + len b), in percent, rounded; texts stripped first
    assert edit_similarity("kitten", "sitting") == 62  # LCS "ittn": 8 / 13 = 61.5
    assert edit_similarity("  scale_0(x)\n", "scale_0(x, factor=0)") == 67  # LCS 10: 20 / 30
    assert edit_similarity("baba", "bba") == 86  # LCS 3: 6 / 7 (difflib's matcher says 57)
    assert edit_similarity("", "x") == 0 and edit_similarity(" ", "") == 100


def test_score_applies_the_cut_then_the_metrics() -> None:
    prompt = "def run(x):\n    y = "
    s = score(prompt, "scale(x)  # twice\n    return y\n", "scale(x)", "python")
    assert (s.em, s.es, s.compared) == (True, 100, "scale(x)  ")
    # the ground truth loses its comment too
    assert score(prompt, "scale(x)\n", "scale(x)  # the reference's note", "python").em
    s = score("int y = ", "h.go(1);\nreturn y;", "h.go(2);", "java")
    assert (s.em, s.es, s.compared) == (False, 88, "h.go(1);")  # LCS 7: 14 / 16 = 87.5, rounded to even


def test_the_oracle_takes_the_best_edit_similarity() -> None:
    from fim_lsp.eval.metrics import system_outcomes

    def cand(model: str, es: float, ppl: float) -> dict:
        return {"model": model, "perplexity": ppl, "judge": {"em": False, "es": es}}
    rec = {"task_id": "t", "winner_index": 1,
           "candidates": [cand("qwen", 0.3, 2.0), cand("dllm", 0.6, 1.5), cand("dllm", 0.8, 3.0)]}
    # each model's pick is its lowest-perplexity candidate; the oracle is the best of all candidates
    assert system_outcomes(rec, "es") == pytest.approx({"qwen": 0.3, "dllm": 0.6, "ensemble": 0.6, "oracle": 0.8,
                                                        "random": 0.45})


# -- the rows -------------------------------------------------------------------------------------

def test_rows_are_read_with_their_context_only_in_the_with_setting(tmp_path: Path) -> None:
    data = write_data(tmp_path)
    without = cceval_tasks(data, ["py", "java"], FILE, NO_CONTEXT)
    with_ = cceval_tasks(data, ["python", "java"], FILE, WITH_CONTEXT)
    assert [t.task_id for t in without] == [f"project_cc_python/{i}" for i in range(4)] + \
        ["project_cc_java/0", "project_cc_java/1"]
    t = with_[1]
    assert (t.language, t.prefix, t.suffix, t.middle) == ("python", py_row(1)["prompt"], "\n    return y\n",
                                                          "scale_1(x, factor=1)")
    assert all(x.context is None and x.budget is not None for x in without)
    ctx = t.context
    assert (ctx.repo, ctx.path) == ("demo-repo", "src/run.py")
    assert [(c.path, c.text, c.source, c.score) for c in ctx.chunks] == [
        ("src/helpers.py", chunk_text(1), "retrieved", 4.0), ("src/limits.py", "LIMIT_1 = 1\n", "retrieved", 0.0)]
    assert with_[4].language == "java" and with_[4].context.chunks[0].path == "src/Helper.java"


def test_a_bad_row_names_its_file_and_line(tmp_path: Path) -> None:
    data = write_data(tmp_path, python=2, java=0)
    path = data / "python" / f"{FILE}.jsonl"
    bad = py_row(2)
    del bad["groundtruth"]
    path.write_text(path.read_text() + json.dumps(bad) + "\n")
    with pytest.raises(DataUnavailable, match=r"python/line_completion_rg1_bm25.jsonl:3: no string field 'groundtruth'"):
        cceval_tasks(data, ["py"], FILE, NO_CONTEXT)
    with pytest.raises(DataUnavailable, match="does not exist"):
        cceval_tasks(data, ["ts"], FILE, NO_CONTEXT)
    with pytest.raises(DataUnavailable, match="--data-dir"):
        cceval_tasks(None, ["py"], FILE, NO_CONTEXT)


def test_the_judge_scores_against_the_rows_prompt_and_groundtruth(tmp_path: Path) -> None:
    task = cceval_tasks(write_data(tmp_path), ["py"], FILE, WITH_CONTEXT)[0]
    j = judge(task, "scale_0(x, factor=0)\n    return y\n", pool=None)  # nothing runs: no sandbox needed
    assert (j.em, j.es, j.passed) == (True, 1.0, None)
    j = judge(task, "scale_0(x)\n    return y\n", pool=None)
    assert (j.em, j.es) == (False, 0.67)


# -- through the engine and the CLI (tiny random-weight checkpoints) ------------------------------

def test_the_retrieved_chunks_reach_both_prompts_only_with_context(tiny_models: Path, tmp_path: Path) -> None:
    from fim_lsp.engine.config import EngineConfig
    from fim_lsp.engine.ensemble import Engine
    from fim_lsp.eval.systems import fim_request

    data = write_data(tmp_path, python=1, java=0)
    eng = Engine(EngineConfig(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                              max_new_tokens=4, steps=2, dllm_lengths=(4,), seed=0))
    eng.load()
    with_ = eng.complete_batch([fim_request(cceval_tasks(data, ["py"], FILE, WITH_CONTEXT)[0], None)])[0]
    without = eng.complete_batch([fim_request(cceval_tasks(data, ["py"], FILE, NO_CONTEXT)[0], None)])[0]
    chunk = chunk_text(0).rstrip("\n")
    assert with_.qwen_prompt.text.startswith(f"<|repo_name|>demo-repo\n<|file_sep|>src/helpers.py\n{chunk}\n")
    assert f"<|file_sep|>src/run.py\n<|fim_prefix|>{py_row(0)['prompt']}" in with_.qwen_prompt.text
    assert f"# src/helpers.py\n{chunk}\n" in with_.dllm_prompt.prefix_text
    assert "<|repo_name|>" not in with_.dllm_prompt.prefix_text
    assert "helper number 0" not in without.qwen_prompt.text and "helper number 0" not in without.dllm_prompt.prefix_text
    assert without.qwen_prompt.text.startswith("<|fim_prefix|>" + py_row(0)["prompt"])
    # --budget-dllm-context-tokens 0: the diffusion model gets no context, Qwen still does
    task = cceval_tasks(data, ["py"], FILE, WITH_CONTEXT, prompt_budget({"dllm_context_tokens": 0}))[0]
    none = eng.complete_batch([fim_request(task, None)])[0]
    assert "helper number 0" in none.qwen_prompt.text and "helper number 0" not in none.dllm_prompt.prefix_text


def tiny_args(tiny_models: Path, data: Path, out: Path) -> list[str]:
    return ["run", "--benchmark", "crosscodeeval", "--data-dir", str(data), "--out", str(out),
            "--ar-model", str(tiny_models / "ar"), "--dllm-model", str(tiny_models / "dllm"), "--device", "cpu",
            "--steps", "2", "--max-new-tokens", "6", "--dllm-lengths", "4,8", "--workers", "2", "--no-progress"]


def test_both_settings_end_to_end(tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_data(tmp_path / "data")
    out = tmp_path / "out"
    assert main([*tiny_args(tiny_models, data, out), "--languages", "py,java", "--batch-size", "3"]) == 0
    root = out / "crosscodeeval"
    for setting, chunks in ((NO_CONTEXT, 0), (WITH_CONTEXT, 1)):
        recs = results(root / setting / "results.jsonl")
        assert sorted(r["task_id"] for r in recs) == sorted([f"project_cc_python/{i}" for i in range(4)] +
                                                            ["project_cc_java/0", "project_cc_java/1"])
        for r in recs:
            assert {c["model"] for c in r["candidates"]} == {"qwen", "dllm"}
            assert all(isinstance(c["judge"]["em"], bool) and 0 <= c["judge"]["es"] <= 1 for c in r["candidates"])
            # the engine's record of what it was given: the retrieved chunks with context only
            assert min(r["prompt"]["qwen_chunks"], r["prompt"]["dllm_chunks"]) >= chunks
            assert max(r["prompt"]["qwen_chunks"], r["prompt"]["dllm_chunks"]) <= (2 if chunks else 0)
        s = json.loads((root / setting / "summary.json").read_text())
        assert set(s["by_language"]) == {"python", "java", "all"}
        assert json.loads((root / setting / "run.json").read_text())["setting"] == setting
    cmp = json.loads((root / "comparison.json").read_text())
    assert cmp["tasks_in_both"] == 6
    for lang in ("python", "java", "all"):
        e = cmp["by_language"][lang]
        for metric in ("em", "es"):
            assert {"qwen", "dllm", "ensemble"} <= set(e["delta"][metric])
            for name, d in e["delta"][metric].items():
                assert d == pytest.approx(e[WITH_CONTEXT][metric][name] - e[NO_CONTEXT][metric][name])
    table = (root / "comparison.md").read_text()
    assert "| system | EM no ctx | EM with ctx | EM delta | ES no ctx | ES with ctx | ES delta |" in table
    assert "[all] ensemble: EM " in capsys.readouterr().out


def test_canonical_self_check_scores_every_row_full(tmp_path: Path) -> None:
    """The ground truth as the completion: EM and ES 100 in both settings (no models loaded)."""
    data = write_data(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["run", "--system", "canonical", "--benchmark", "crosscodeeval", "--languages", "python,java",
                 "--data-dir", str(data), "--out", str(out), "--no-progress"]) == 0
    e = json.loads((out / "crosscodeeval" / "comparison.json").read_text())["by_language"]["all"]
    for setting in (NO_CONTEXT, WITH_CONTEXT):
        assert (e[setting]["em"]["canonical"], e[setting]["es"]["canonical"]) == (1.0, 1.0)
    with pytest.raises(SystemExit, match="dllmContextTokens must be between 0 and 2047"):
        main(["run", "--system", "canonical", "--benchmark", "crosscodeeval", "--data-dir", str(data),
              "--out", str(tmp_path / "other"), "--budget-dllm-context-tokens", "4096", "--no-progress"])


def test_a_killed_run_resumes(tiny_models: Path, tmp_path: Path) -> None:
    n = 16
    data = write_data(tmp_path / "data", python=n, java=0)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fim_lsp.eval", *tiny_args(tiny_models, data, out),
           "--cceval-settings", NO_CONTEXT, "--workers", "1"]
    jsonl = out / "crosscodeeval" / NO_CONTEXT / "results.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    kept = jsonl.read_bytes()
    kept = kept[:kept.rfind(b"\n") + 1]  # a torn last line is not a finished task
    done = kept.count(b"\n")
    assert 3 <= done < n, "the kill must land halfway"
    last = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    assert f"{n - done} run now, {done} already finished" in last.stdout
    assert jsonl.read_bytes().startswith(kept), "the tasks finished before the kill are kept, not rerun"
    ids = [r["task_id"] for r in results(jsonl)]
    assert sorted(ids) == sorted(f"project_cc_python/{i}" for i in range(n)) and len(set(ids)) == n
    assert json.loads((out / "crosscodeeval" / NO_CONTEXT / "summary.json").read_text())["tasks"] == n
