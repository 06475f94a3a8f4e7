"""The diffusion stage beside Qwen (engine/overlap.py), on CPU with the tiny checkpoints: `overlap on`
runs the same side thread as on a GPU, without the CUDA stream (which needs a GPU: not exercised here).

- the side stage scores the diffusion candidates on Qwen's cached prompt, so scoring after Qwen's last
  token is left with Qwen's own candidate; the results equal the stages taken in turn;
- a Qwen stage that fails before its prompt pass never leaves the side worker waiting for a prompt
  (the next request would queue behind it forever)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fim_lsp.engine.config import EngineConfig
from fim_lsp.engine.ensemble import Engine, FimRequest

SOURCE = (Path(__file__).resolve().parents[1] / "fim_lsp" / "tiny.py").read_text()
REQUESTS = [FimRequest(SOURCE[:300], SOURCE[300:500]), FimRequest("x = ", "\n", single_line=True)]


@pytest.fixture(scope="module")
def engine(tiny_models):
    cfg = EngineConfig(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                       temperature=0.0, max_new_tokens=6, steps=4, dllm_lengths=(4, 8),
                       dllm_lengths_single_line=(2, 4), compile="on", overlap="on",
                       decode_weights="exact")  # int8's rescoring of Qwen's candidates: test_int8_decode
    engine = Engine(cfg)
    engine.load()
    return engine


def scoring_calls(engine, monkeypatch) -> list[tuple[str, int]]:
    """(thread name, candidates) of every scoring pass on Qwen's prompt."""
    calls: list[tuple[str, int]] = []
    score = engine.qwen.score

    def spy(prompt, items):
        calls.append((threading.current_thread().name, len(items)))
        return score(prompt, items)

    monkeypatch.setattr(engine.qwen, "score", spy)
    return calls


def test_the_side_stage_scores_its_candidates_and_matches_turns(engine, monkeypatch):
    calls = scoring_calls(engine, monkeypatch)
    side = engine.complete_batch(REQUESTS)
    dllm_candidates = sum(c.model == "dllm" for comp in side for c in comp.candidates)
    assert dllm_candidates == 4
    assert calls[0] == ("fim-dllm_0", dllm_candidates)  # all of them, on the side thread
    # after Qwen: no scoring pass over any candidate (Qwen's own cut by its budget get their end
    # token's log-prob from one decode step instead: QwenRunner.end_logprobs)
    assert all(n == 0 for _, n in calls[1:])
    assert all("dllm_score" in comp.timings for comp in side)

    calls.clear()
    assert not engine.reconfigure(engine.config.replace(overlap="off"))
    turns = engine.complete_batch(REQUESTS)
    engine.reconfigure(engine.config.replace(overlap="on"))
    assert [name for name, _ in calls] == ["MainThread"]  # one pass for every candidate left
    assert all("dllm_score" not in comp.timings for comp in turns)
    for a, b in zip(side, turns):
        assert [(c.model, c.text) for c in a.candidates] == [(c.model, c.text) for c in b.candidates]
        assert [c.perplexity for c in a.candidates] == pytest.approx([c.perplexity for c in b.candidates], rel=1e-5)
        assert a.winner.text == b.winner.text


def test_qwen_failing_before_its_prompt_does_not_stall_the_side_worker(engine, monkeypatch):
    """The failure is forced (a real one would be running out of memory in the prompt pass)."""
    def fail(*args, **kwargs):
        raise RuntimeError("prompt pass failed")

    with monkeypatch.context() as m:
        m.setattr(engine.qwen, "generate", fail)
        with pytest.raises(RuntimeError, match="prompt pass failed"):
            engine.complete_batch(REQUESTS)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(engine.complete_batch(REQUESTS)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert done, "the next request never finished: the side worker still waits for a prompt"
    assert all(c.perplexity < float("inf") for comp in done[0] for c in comp.candidates)


def test_the_editor_profile_on_the_static_path_equals_the_eager_engine(tiny_models):
    """The server's profile (on CPU: DualCache refreshed every 8 steps, threshold, fewer steps) with the
    static path, its DualCache graphs, warm-up and the side stage, against the eager engine at T=0."""
    cfg = EngineConfig(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                       temperature=0.0, max_new_tokens=6, profile="editor", compile="on", overlap="on")
    static, eager = Engine(cfg), Engine(cfg.replace(compile="off", overlap="off"))
    static.load()
    eager.load()
    for a, b in zip(static.complete_batch(REQUESTS), eager.complete_batch(REQUESTS)):
        assert "dllm_score" in a.timings
        assert [(c.model, c.text) for c in a.candidates] == [(c.model, c.text) for c in b.candidates]
        assert [c.perplexity for c in a.candidates] == pytest.approx([c.perplexity for c in b.candidates], rel=1e-5)
    keys = {key[0][0] for key in static.diffusion.graphs.keys()}
    assert keys == {"dual_full", "dual_block"}  # DualCache replayed, no full pass at every step
