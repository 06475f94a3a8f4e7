"""A server lifecycle that needs its own process: a model that fails to load, requests before ready."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from lsprotocol import types

from server_client import capabilities, start_server

URI = "file:///work/example.py"


async def test_failed_load_says_why_once_and_serves_what_loaded(tiny_models: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    caps = capabilities(encodings=["utf-8", "utf-16"])
    # From the command line: an editor setting naming a missing model is refused before any load.
    async with start_server(tiny_models, {"waitForModelsMs": 100}, cli=["--dllm-model", str(missing)],
                            caps=caps, wait=False) as s:
        assert s.init.capabilities.position_encoding == types.PositionEncodingKind.Utf8
        line = "naïve = '€' + "
        s.open(URI, line + "\n")
        t = time.perf_counter()
        early = await s.inline(URI, 0, len(line.encode()))
        assert early == [] and time.perf_counter() - t < 5  # waited a bounded time, then empty
        status = await s.wait_state("ready", "failed")
        assert status["state"] == "ready" and status["models"] == ["qwen"]
        errors = [m for m in s.client.messages if "dllm" in m.message]
        assert len(errors) == 1 and str(missing) in errors[0].message
        assert (await s.stats())["notReady"] == 1
        for item in await s.inline(URI, 0, len(line.encode()), invoked=True):
            assert item.range.start.character == len(line.encode())  # utf-8 columns
        shown = await s.command("fimLsp.showCandidates")
        assert [c["model"] for c in shown["candidates"]] == ["qwen"]
        await asyncio.sleep(0.3)
        assert len([m for m in s.client.messages if "dllm" in m.message]) == 1  # said once


async def test_no_model_loads_the_server_says_why_and_answers_empty(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    async with start_server(missing, {"waitForModelsMs": 30000}) as s:
        status = await s.wait_state("ready", "failed")
        assert status["state"] == "failed" and str(missing / "ar") in status["message"]
        assert len(s.client.messages) == 1 and s.client.messages[0].type == types.MessageType.Error
        s.open(URI, "x = ")
        t = time.perf_counter()
        assert await s.inline(URI, 0, 4) == []
        assert time.perf_counter() - t < 5  # a finished (failed) load does not make requests wait
        stats = await s.stats()
        assert stats["state"] == "failed" and stats["models"] == [] and stats["errors"] == 0
