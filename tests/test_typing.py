"""Prefix reuse through the Engine while a user types (tiny checkpoints, fp32, CPU): the same tokens and
log-probs as a full recompute at every keystroke, the `prefixReuse` switch, `Engine.prefill_idle`, and
the typing bench (`python -m fim_lsp.bench.typing`) end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fim_lsp.engine.ar_fim import stop_ids
from fim_lsp.engine.config import EngineConfig
from fim_lsp.engine.ensemble import Engine
from fim_lsp.engine.qwen_runner import common_prefix
from fim_lsp.engine.requests import ContextChunk, FimRequest, ProjectContext, PromptBudget
from fim_lsp.server.settings import ServerSettings, apply_settings

BEFORE = "from util import area\nfrom shapes import Box\n\ndef main(box):\n    "
AFTER = "\n\nprint(main(Box(2, 3)))\n"
AREA = ContextChunk("app/util.py", "def area(w, h):\n    return w * h\n", 0, 2, "definition", 4.0)
NOTES = ContextChunk("app/notes.py", "NOTE = 'kept for later'\nLIMIT = 10\n", 0, 2, "open-file", 1.5)
BOX = ContextChunk("app/shapes.py", "class Box:\n    def __init__(self, w, h):\n        self.w, self.h = w, h\n",
                   0, 3, "definition", 3.5)
TYPED = "w = area(box.w,\n    box.h)"


def typing_requests() -> list[FimRequest]:
    """A user typing TYPED at the cursor: single-line while code follows on the line, a newline typed half
    way, a definition appended to the context at the ninth key and an open file's chunk leaving it at the
    eighteenth (the prompt's tail after the first difference is recomputed: the partial-reuse case)."""
    out = []
    for k in range(len(TYPED) + 1):
        chunks = (AREA, NOTES) + ((BOX,) if k >= 9 else ())
        if k >= 18:
            chunks = (AREA, BOX)
        context = ProjectContext("demo", "app/main.py", chunks)
        out.append(FimRequest(BEFORE + TYPED[:k], ")" + AFTER, single_line=k % 3 == 0, context=context,
                              budget=PromptBudget()))
    return out


def load(tiny_models: Path, **changes) -> Engine:
    cfg = EngineConfig(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                       dtype="float32", max_new_tokens=6, steps=2, dllm_lengths=(4,), dllm_lengths_single_line=(4,),
                       seed=0, **changes)
    engine = Engine(cfg)
    engine.load()
    # Qwen's stop tokens' rows zeroed, so that it writes a few tokens rather than stopping at once
    with torch.no_grad():
        engine.ar.model.get_output_embeddings().weight[stop_ids(engine.ar.tokenizer)] = 0
    return engine


@pytest.mark.parametrize("temperature", [0.0, 0.6], ids=["greedy", "seeded-T0.6"])
def test_reuse_equals_a_full_recompute_at_every_keystroke(tiny_models: Path, temperature: float) -> None:
    kept = load(tiny_models, temperature=temperature)
    fresh = load(tiny_models, temperature=temperature, prefix_reuse=False)
    last: list[int] = []
    written = 0
    for k, request in enumerate(typing_requests()):
        a, b = kept.complete_batch([request])[0], fresh.complete_batch([request])[0]
        ids = a.qwen_prompt.ids
        assert ids == b.qwen_prompt.ids
        # what each pass ran: with reuse, the tokens past the longest common prefix with the previous key's
        # prompt (all but the last token at most); without, the whole prompt
        want_reused = min(common_prefix(last, ids), len(ids) - 1)
        assert a.prompt_tokens == {"computed": len(ids) - want_reused, "reused": want_reused}, k
        assert b.prompt_tokens == {"computed": len(ids), "reused": 0}, k
        if k:
            assert want_reused > 0  # the repo-level context before the current file is kept at every key
        # the same candidates, tokens and log-probs, and the diffusion candidates scored on the
        # partly reused cache as on the recomputed one
        assert [(c.model, c.text, c.tokens) for c in a.candidates] == [(c.model, c.text, c.tokens) for c in b.candidates]
        for ca, cb in zip(a.candidates, b.candidates):
            assert ca.token_logprobs == pytest.approx(cb.token_logprobs, abs=1e-4)
            assert ca.perplexity == pytest.approx(cb.perplexity, rel=1e-4)
        assert a.winner.model == b.winner.model
        written += next(c.tokens for c in a.candidates if c.model == "qwen")
        last = ids
    assert written > 0  # Qwen wrote tokens: the log-probs compared were its own, not empty lists


def test_prefill_idle_leaves_only_the_local_window_to_the_next_pass(tiny_models: Path) -> None:
    idle, busy = load(tiny_models, temperature=0.0), load(tiny_models, temperature=0.0)
    budget = PromptBudget()
    first = FimRequest(BEFORE, AFTER, context=ProjectContext("demo", "app/main.py", (AREA,)), budget=budget)
    grown = ProjectContext("demo", "app/main.py", (AREA, BOX))  # a new chunk arrived while the user paused
    for engine in (idle, busy):
        engine.complete_batch([first])
    ran = idle.prefill_idle(FimRequest(BEFORE, AFTER, context=grown, budget=budget))
    base = idle._qwen_prompt(first)
    assert ran is not None and ran["reused"] >= base.context_tokens and ran["computed"] > 0
    typed = FimRequest(BEFORE + "w", AFTER, context=grown, budget=budget)
    a, b = idle.complete_batch([typed])[0], busy.complete_batch([typed])[0]
    context_tokens = a.qwen_prompt.context_tokens
    # the whole context, the new chunk included, was in the cache: only the current file's part ran
    assert a.prompt_tokens["reused"] >= context_tokens
    assert a.prompt_tokens["computed"] == len(a.qwen_prompt.ids) - a.prompt_tokens["reused"]
    # without the idle pass the new chunk's tokens ran with the keystroke
    assert b.prompt_tokens["computed"] >= a.prompt_tokens["computed"] + (context_tokens - base.context_tokens)
    assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
    assert [c.perplexity for c in a.candidates] == pytest.approx([c.perplexity for c in b.candidates], rel=1e-4)
    off = load(tiny_models, temperature=0.0, prefix_reuse=False)
    assert off.prefill_idle(typed) is None  # nothing to gain: its next pass runs the whole prompt anyway


def test_prefix_reuse_is_a_setting() -> None:
    up = apply_settings({"prefixReuse": False}, ServerSettings(), EngineConfig())
    assert up.engine.prefix_reuse is False and not up.errors
    bad = apply_settings({"prefixReuse": "no", "scoreReuse": 0}, ServerSettings(), EngineConfig())
    assert bad.engine.prefix_reuse is True and bad.engine.score_reuse is True
    assert [e.split(":")[0] for e in bad.errors] == ["fimLsp.prefixReuse", "fimLsp.scoreReuse"]


def test_typing_bench_end_to_end(tiny_models: Path, tmp_path: Path, capsys) -> None:
    from fim_lsp.bench.typing import main

    out = tmp_path / "typing.json"
    assert main(["--ar-model", str(tiny_models / "ar"), "--dllm-model", str(tiny_models / "dllm"),
                 "--package", "json", "--keys", "3", "--prompt-tokens", "512", "--new-tokens", "4",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| qwen | **off / on** |" in printed and "| both | **off / on** |" in printed
    doc = json.loads(out.read_text())
    assert doc["meta"]["file"].endswith(".py") and len(doc["meta"]["typed"]) == 3
    assert "loadavg" in doc["meta"]["machine_at_end"]
    summary = doc["summary"]
    assert summary["keystrokes"] == 3 and set(summary["ensemble_over_qwen"]) == {"on", "off"}
    for models in ("qwen", "both"):
        row = summary["models"][models]
        for mode in ("on", "off"):
            assert set(row[mode]) == {"computed_p50", "reused_p50", "prefill_s_p50", "total_s_p50", "new_tokens_mean"}
        assert set(row["off_over_on"]) == {"computed", "prefill_s", "total_s"} and "qwen_same_share" in row
    keys = doc["keystrokes"]
    assert [k["index"] for k in keys] == [0, 1, 2, 3] and [k["typed"] for k in keys[1:]] == list(doc["meta"]["typed"])
    for key in keys[1:]:
        assert [(p["models"], p["reuse"]) for p in key["passes"]] == [
            ("qwen", True), ("qwen", False), ("both", True), ("both", False)]
        for p in key["passes"]:
            assert p["computed"] + p["reused"] == p["prompt_tokens"] <= 512
            if p["reuse"]:
                # from the previous key's prompt: the typed token on to the end of the prompt ran again
                assert 2 <= p["computed"] < p["prompt_tokens"]
            else:
                assert p["reused"] == 0
