"""`python -m fim_lsp.eval run/merge` end to end: canonical self-check, resume after a kill, shards,
presets, and a tiny-checkpoint run of the real engine on 5 tasks of every benchmark."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from fim_lsp.eval.cli import main

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present beside the checkout")
HUMANEVAL = ["humaneval-single-line", "humaneval-multi-line", "humaneval-random-span", "humaneval-random-span-light"]


def cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fim_lsp.eval", "run", "--system", "canonical", "--data-dir", str(DATA),
            "--out", str(out), "--workers", "2", "--no-progress", *extra]


def comparable(summary_path: Path) -> dict:
    """A summary without what legitimately differs between runs (timings, the sandbox's own seconds)."""
    s = json.loads(summary_path.read_text())
    s.pop("meta", None)
    for e in s["by_language"].values():
        for k in ("task_seconds", "candidate_seconds"):
            e.pop(k, None)
    return s


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_data
def test_canonical_passes_first_20_of_every_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "--system", "canonical", "--benchmark", ",".join(HUMANEVAL + ["santacoder-fim"]),
               "--languages", "py,js,java", "--limit", "20", "--data-dir", str(DATA), "--out", str(tmp_path),
               "--workers", "3", "--no-progress"])
    assert rc == 0
    for b in HUMANEVAL:
        s = json.loads((tmp_path / b / "summary.json").read_text())
        assert s["by_language"]["py"]["metrics"]["pass"]["systems"]["canonical"]["correct"] == 20
    s = json.loads((tmp_path / "santacoder-fim" / "summary.json").read_text())
    langs = {k: v for k, v in s["by_language"].items() if k != "all"}
    assert sum(v["tasks"] for v in langs.values()) == 20
    for lang, e in langs.items():
        for metric in ("em_first_line", "em_strip", "pass"):
            t = e["metrics"][metric]["systems"]["canonical"]
            assert t["correct"] == t["samples"] == e["tasks"], (lang, metric)
    assert "exact match, first-line rule" in (tmp_path / "santacoder-fim" / "report.md").read_text()


def interruptible() -> None:
    """In the child before exec: SIGINT handled by Python whatever signal state the test process has
    picked up (an ignored or blocked SIGINT is inherited across exec; the run would then finish and
    exit 0 instead of 130)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


@needs_data
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    n = 120  # the two kills land at ~15 and ~30: most of the run is left, however loaded the machine
    args = ["--benchmark", "humaneval-single-line", "--limit", str(n)]
    whole = tmp_path / "whole"
    subprocess.run(cli(whole, *args), check=True, cwd=ROOT, capture_output=True)

    cut = tmp_path / "cut"
    jsonl = cut / "humaneval-single-line" / "results.jsonl"
    for sig in (signal.SIGINT, signal.SIGKILL):  # Ctrl-C, then a hard kill on the resumed run
        proc = subprocess.Popen(cli(cut, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, preexec_fn=interruptible)
        start = len(results(jsonl)) if jsonl.exists() else 0
        deadline = time.monotonic() + 60
        while (not jsonl.exists() or len(results(jsonl)) < start + 15) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=30)
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "rerun the same command" in err
    done_before = len(results(jsonl))
    assert 30 <= done_before < n, "the kills must land halfway"
    last = subprocess.run(cli(cut, *args), check=True, cwd=ROOT, capture_output=True, text=True)
    assert f"{n - done_before} run now, {done_before} already finished" in last.stdout
    ids = Counter(r["task_id"] for r in results(jsonl))
    assert len(ids) == n and set(ids.values()) == {1}, "no task may run twice"
    assert comparable(cut / "humaneval-single-line" / "summary.json") == \
        comparable(whole / "humaneval-single-line" / "summary.json")


@needs_data
def test_shards_then_merge_equal_one_run(tmp_path: Path) -> None:
    args = ["--benchmark", "humaneval-random-span-light", "--limit", "12"]
    subprocess.run(cli(tmp_path / "one", *args), check=True, cwd=ROOT, capture_output=True)
    for i in range(3):
        subprocess.run(cli(tmp_path / "sharded", *args, "--shard", f"{i}/3"), check=True, cwd=ROOT, capture_output=True)
    assert main(["merge", "--out", str(tmp_path / "sharded")]) == 0
    run = tmp_path / "sharded" / "humaneval-random-span-light"
    assert len(results(run / "results.jsonl")) == 12
    assert comparable(run / "summary.json") == comparable(tmp_path / "one" / "humaneval-random-span-light" / "summary.json")


@needs_data
def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    args = ["--benchmark", "humaneval-random-span-light", "--limit", "3"]
    subprocess.run(cli(tmp_path, *args), check=True, cwd=ROOT, capture_output=True)
    other = subprocess.run(cli(tmp_path, "--benchmark", "humaneval-random-span-light", "--limit", "4"),
                           cwd=ROOT, capture_output=True, text=True)
    assert other.returncode != 0 and "other settings" in other.stderr


def test_offline_without_data_dir_names_the_fix(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HOME": str(tmp_path),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
           # no route anywhere: the GitHub fetch fails at once instead of waiting
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    r = subprocess.run([sys.executable, "-m", "fim_lsp.eval", "run", "--system", "canonical", "--benchmark",
                        "humaneval-single-line", "--out", str(tmp_path / "o"), "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "--data-dir" in r.stderr


def test_editor_preset_is_the_server_defaults() -> None:
    from fim_lsp.engine.config import config_from_args
    from fim_lsp.server.main import build_parser as server_parser

    preset = tomllib.loads((ROOT / "eval" / "editor.toml").read_text())
    defaults = dataclasses.asdict(config_from_args(server_parser().parse_args([])))
    for key, value in preset.items():
        if key in defaults and key != "dllm_length":
            want = defaults[key]
            assert (list(want) if isinstance(want, tuple) else want) == value, key
    assert preset["dllm_length"] == "auto" and defaults["dllm_length"] is None


def test_seed_preset_sets_the_published_options(tmp_path: Path) -> None:
    from fim_lsp.eval.cli import apply_preset, build_parser

    argv = ["run", "--preset", str(ROOT / "eval" / "seed.toml"), "--benchmark", "humaneval-single-line", "--steps", "8"]
    parser = build_parser()
    apply_preset(parser, argv)
    args = parser.parse_args(argv)
    assert (args.dllm_length_spec, args.temperature, args.alg, args.alg_temp, args.max_new_tokens,
            args.score_mode, args.top_p) == ("oracle", 0.6, "p2", 0.5, 512, "plain", 0.95)
    assert args.steps == 8  # the command line beats the preset


@needs_data
def test_tiny_checkpoints_end_to_end(tiny_models: Path, tmp_path: Path) -> None:
    """The real engine (random tiny weights) on 5 tasks of every benchmark; every candidate is stored
    and judged, and the report covers every system."""
    benches = HUMANEVAL + ["santacoder-fim"]
    rc = main(["run", "--benchmark", ",".join(benches), "--languages", "py,js,java", "--limit", "5",
               "--data-dir", str(DATA), "--out", str(tmp_path), "--ar-model", str(tiny_models / "ar"),
               "--dllm-model", str(tiny_models / "dllm"), "--device", "cpu", "--steps", "4",
               "--max-new-tokens", "8", "--dllm-length", "oracle", "--workers", "3", "--batch-size", "5",
               "--no-progress"])
    assert rc == 0
    for b in benches:
        recs = results(tmp_path / b / "results.jsonl")
        assert len(recs) == 5
        for r in recs:
            models = [c["model"] for c in r["candidates"]]
            assert "qwen" in models and "dllm" in models
            assert r["winner_index"] is not None and r["dllm_length"] >= 1
            assert all("status" in c["judge"] for c in r["candidates"])
        s = json.loads((tmp_path / b / "summary.json").read_text())
        lang = "py" if b != "santacoder-fim" else "all"
        metric = "pass" if b != "santacoder-fim" else "em_first_line"
        systems = s["by_language"][lang]["metrics"][metric]["systems"]
        assert {"qwen", "dllm", "ensemble", "oracle", "random"} <= set(systems)
        assert s["by_language"][lang]["forward_passes"]["dllm"]["mean"] > 0
        assert (tmp_path / b / "plots" / "ppl_by_outcome.png").exists()
