"""The static path fails and the engine goes on serving: a capture that raises, and out of memory from a
pass, at warm-up and during a request; the side job of a cancelled request is stopped before the call
returns; a reload ends the side stage. CPU, tiny checkpoints, compile on, overlap on.

A CUDA graph capture and a CUDA out-of-memory error cannot happen on this machine (no GPU), so they are
injected: `GraphSet._build` (where a capture happens) raises `CaptureError` or `torch.OutOfMemoryError`,
or a pass raises `torch.OutOfMemoryError`. Everything around them (the runners' fallback, the engine's
retry, the messages, the answers) is the real code."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from fim_lsp.engine.ar_fim import stop_ids
from fim_lsp.engine.config import EngineConfig
from fim_lsp.engine.ensemble import Engine, FimRequest, OutOfMemory
from fim_lsp.engine.graphs import CaptureError, GraphSet
from fim_lsp.engine.results import Cancelled
from fim_lsp.engine.static_model import StaticQwen2

SOURCE = (Path(__file__).resolve().parents[1] / "fim_lsp" / "tiny.py").read_text()
REQUESTS = [FimRequest(SOURCE[:300], SOURCE[300:500]), FimRequest("x = ", "\n", single_line=True)]


def config(tiny_models: Path, **kw) -> EngineConfig:
    base = dict(ar_model=str(tiny_models / "ar"), dllm_model=str(tiny_models / "dllm"), device="cpu",
                temperature=0.0, max_new_tokens=6, steps=4, dllm_lengths=(4, 8), dllm_lengths_single_line=(2, 4),
                compile="on", overlap="on")
    return EngineConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def eager(tiny_models):
    """What the eager path answers: every fallback must answer the same."""
    engine = Engine(config(tiny_models, compile="off"))
    return [[(c.model, c.text, c.perplexity) for c in comp.candidates] for comp in engine.complete_batch(REQUESTS)]


def same(answers, eager) -> None:
    for comp, want in zip(answers, eager):
        assert [(c.model, c.text) for c in comp.candidates] == [(m, t) for m, t, _ in want]
        assert [c.perplexity for c in comp.candidates] == pytest.approx([p for _, _, p in want], rel=1e-4)


def raising(error: BaseException):
    def build(self, key, make, inputs):
        raise error
    return build


def test_a_capture_that_raises_at_warm_up_leaves_an_engine_that_serves_eagerly(tiny_models, eager, monkeypatch):
    monkeypatch.setattr(GraphSet, "_build", raising(CaptureError("injected: the capture raised")))
    notes: list[str] = []
    engine = Engine(config(tiny_models), notify=notes.append)
    engine.load()
    assert engine.loaded and not engine.compiled
    assert set(engine.fallbacks) == {"qwen", "dllm"}
    for role, reason in engine.fallbacks.items():
        assert reason.startswith(f"{role}: capturing") and "injected" in reason and "compile off" in reason
    assert sorted(notes) == sorted(engine.fallbacks.values())  # said once each, when it happened
    same(engine.complete_batch(REQUESTS), eager)
    assert engine.graph_stats()["count"] == 0


def test_out_of_memory_at_warm_up_turns_each_models_static_path_off(tiny_models, eager, monkeypatch):
    monkeypatch.setattr(GraphSet, "_build", raising(torch.OutOfMemoryError("injected: CUDA out of memory")))
    engine = Engine(config(tiny_models))
    engine.load()
    assert engine.loaded and not engine.compiled
    assert all("out of memory" in r and "graphMemory" in r for r in engine.fallbacks.values())
    same(engine.complete_batch(REQUESTS), eager)


def test_a_capture_that_fails_during_a_request_falls_back_and_says_so(tiny_models, eager, monkeypatch):
    engine = Engine(config(tiny_models))
    engine.load()
    assert engine.compiled and engine.graph_stats()["count"] > 0
    # the requests' shapes were not met at warm-up (a 256-token context): each is captured when first met.
    # On a CPU Qwen's only graph-set pass is its decode step, one shape (the whole cache), built at warm-up:
    # dropped here so that it too is built again when first met
    engine.qwen.drop_graphs()
    monkeypatch.setattr(GraphSet, "_build", raising(CaptureError("injected: the capture raised")))
    answers = engine.complete_batch(REQUESTS)
    same(answers, eager)
    # Qwen falls back only where a decode step ran (a tiny model may stop at its first token; its prompt
    # and scoring passes take no graph set on a CPU)
    assert not engine.diffusion.static and "dllm" in engine.fallbacks
    assert set(engine.fallbacks) == {"dllm"} | ({"qwen"} if not engine.qwen.static else set())
    assert all(set(comp.notes) == set(engine.fallbacks.values()) for comp in answers)
    assert engine.graph_stats()["count"] == 0  # the dead graphs are freed
    same(engine.complete_batch(REQUESTS), eager)


def test_out_of_memory_from_a_pass_during_a_request_retries_once_eagerly(tiny_models, eager, monkeypatch):
    engine = Engine(config(tiny_models))
    engine.load()
    run, calls = GraphSet.run, []

    def once(self, key, make, inputs):
        calls.append(key)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return run(self, key, make, inputs)

    monkeypatch.setattr(GraphSet, "run", once)
    answers = engine.complete_batch(REQUESTS)
    same(answers, eager)
    assert not engine.compiled  # all graphs freed for the retry, and eager from now on
    assert all(any("out of memory" in n and "graphMemory" in n for n in comp.notes) for comp in answers)


def test_out_of_memory_on_the_eager_path_too_is_reported_with_the_fixes(tiny_models, eager, monkeypatch):
    engine = Engine(config(tiny_models))
    engine.load()

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("injected: CUDA out of memory")

    with monkeypatch.context() as m:
        m.setattr(StaticQwen2, "forward", oom)  # both of Qwen's modes run it
        with pytest.raises(OutOfMemory) as err:
            engine.complete_batch(REQUESTS)
    for fix in ("compile off", "graphMemory", "maxPrefixTokens", "dtype bfloat16"):
        assert fix in str(err.value)
    same(engine.complete_batch(REQUESTS), eager)  # and the next request is served


def talkative(engine: Engine) -> Engine:
    """Qwen's stop tokens' output rows zeroed: the random tiny model otherwise stops at its first token,
    before any cancel check."""
    engine.load()
    with torch.no_grad():
        engine.ar.model.get_output_embeddings().weight[stop_ids(engine.ar.tokenizer)] = 0
    return engine


def test_a_cancelled_request_stops_its_side_job_before_returning(tiny_models):
    """Qwen is cancelled at its first decode step while the diffusion stage (slowed to 50 ms a step) still
    runs beside it. The call must not return before the side job has stopped: the next request's prompt
    pass rewrites the KV cache that job may read."""
    engine = talkative(Engine(config(tiny_models, steps=32, dllm_lengths=(32,))))
    infill, ended = engine.diffusion.infill, []

    def slow_infill(rows, params, generator=None, cancel=None):
        def step_cancel() -> bool:
            time.sleep(0.05)
            return cancel is not None and cancel()
        try:
            return infill(rows, params, generator, step_cancel)
        finally:
            ended.append(time.perf_counter())

    engine.diffusion.infill = slow_infill
    main = threading.current_thread()
    # only Qwen hears the cancel: the side job must be stopped by the engine itself
    cancel = lambda: threading.current_thread() is main  # noqa: E731
    with pytest.raises(Cancelled):
        engine.complete_batch([FimRequest(SOURCE[:300], SOURCE[300:500])], cancel)
    returned = time.perf_counter()
    assert ended and ended[0] <= returned
    # the next request equals a clean run
    clean = talkative(Engine(config(tiny_models, steps=32, dllm_lengths=(32,))))
    for a, b in zip(engine.complete_batch(REQUESTS), clean.complete_batch(REQUESTS)):
        assert [(c.model, c.text) for c in a.candidates] == [(c.model, c.text) for c in b.candidates]


def test_a_reload_ends_the_side_stage(tiny_models):
    engine = Engine(config(tiny_models))
    engine.load()
    engine.complete_batch(REQUESTS[1:])
    side = [t for t in threading.enumerate() if t.name.startswith("fim-dllm")]
    assert len(side) == 1
    stage = engine._side
    engine.load()  # its warm-up runs the side stage again: a new one
    assert not side[0].is_alive() and engine._side is not stage
    engine.complete_batch(REQUESTS[1:])
    assert len([t for t in threading.enumerate() if t.name.startswith("fim-dllm")]) == 1
