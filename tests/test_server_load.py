"""Reloads under an editor's feet (issue 18 items 8 and 13): a reload that loses a model the previous
settings served puts the previous models back; a reload does not wait behind a running completion; and
while models load, fimLsp/status says "loading" (never "ready") whatever is served meanwhile.

The real server over stdio, on forced checkpoints that write "x=1\\nx=1..." whatever the context."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from server_client import Session, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")
LONG_STEPS = 20_000  # a diffusion loop of minutes on any context (p2 keeps masks to its last steps)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s(forced_lines: Path):
    async with start_server(forced_lines) as session:
        yield session


async def test_a_reload_that_loses_a_model_puts_the_previous_models_back(s: Session, tmp_path: Path) -> None:
    broken = tmp_path / "only-config"  # passes the settings check (config.json is there), fails to load
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen2"}')
    start = await s.stats()
    served = start["settings"]["dllmModel"]
    seen, mark = len(s.client.messages), len(s.statuses)
    s.configure(dllmModel=str(broken))
    status = await s.wait_state("ready", "failed", since=mark)
    assert status["state"] == "ready" and status["models"] == ["qwen", "dllm"], status
    assert "reload failed" in status["message"]
    errors = [m.message for m in s.client.messages[seen:] if m.type == types.MessageType.Error]
    assert len(errors) == 1 and str(broken) in errors[0] and "previous models still serve" in errors[0]
    stats = await s.stats()
    assert stats["models"] == ["qwen", "dllm"] and stats["settings"]["dllmModel"] == served
    uri = "file:///work/load_back.py"
    s.open(uri, "total = \n")
    await s.inline(uri, 0, 8)
    shown = await s.command("fimLsp.showCandidates")
    assert {c["model"] for c in shown["candidates"]} == {"qwen", "dllm"}


async def test_a_reload_cancels_the_running_completion(s: Session) -> None:
    running, waiting = "file:///work/load_running.py", "file:///work/load_waiting.py"
    s.configure(steps=LONG_STEPS)
    s.open(running, "beta = \n")
    long = asyncio.ensure_future(s.inline(running, 0, 7))
    while not (await s.stats())["workerBusy"]:
        await asyncio.sleep(0.05)
    mark = len(s.statuses)
    t = time.perf_counter()
    s.configure(dtype=other_dtype(await s.stats()), steps=4)  # a model setting: the models reload
    assert await asyncio.wait_for(long, 60) == []  # cancelled, not finished
    answered = time.perf_counter() - t
    await s.wait_state("loading", since=mark)
    s.open(waiting, "gamma = \n")  # a new context during the load waits for the new models
    waited = asyncio.ensure_future(s.inline(waiting, 0, 8))
    status = await s.wait_state("ready", "failed", since=mark)
    reloaded = time.perf_counter() - t
    items = await asyncio.wait_for(waited, 60)
    print(f"\nreload during a {LONG_STEPS}-step completion: the completion answered in {answered:.2f} s, "
          f"models ready in {reloaded:.1f} s")
    assert status["state"] == "ready" and status["message"] == "models loaded"
    assert items and items[0].insert_text.startswith("x=1")
    assert reloaded < 60  # the uncancelled loop alone runs for minutes
    assert (await s.stats())["settings"]["steps"] == 4


async def test_the_status_says_loading_while_a_cached_answer_is_served(s: Session) -> None:
    cached = "file:///work/load_cached.py"
    s.open(cached, "alpha = \n")
    assert await s.inline(cached, 0, 8)  # now in the cache
    mark = len(s.statuses)
    s.configure(dtype=other_dtype(await s.stats()))
    await s.wait_state("loading", since=mark)
    before = await s.stats()
    from_cache = await s.inline(cached, 0, 8)  # answered during the load, no model needed
    status = await s.wait_state("ready", "failed", since=mark)
    assert from_cache and (await s.stats())["cacheHits"] == before["cacheHits"] + 1
    end = next(i for i in range(mark, len(s.statuses)) if s.statuses[i] is status)
    during = s.statuses[mark:end]
    assert during and all(st["state"] == "loading" for st in during), during
    assert status["state"] == "ready" and status["message"] == "models loaded"


def other_dtype(stats: dict) -> str:
    """A dtype that differs from the current one and means the same on a CPU: changing it reloads."""
    return "auto" if stats["settings"]["dtype"] == "float32" else "float32"
