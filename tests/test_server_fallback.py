"""The real server over stdio with the static path on (compile on, CPU) and a CUDA failure injected
(tests/faulty_server.py: a capture that raises; out of memory in a request's pass). The server keeps
serving on the eager path and says so: window/showMessage, fimLsp.stats and the hover."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lsprotocol import types

from forced import write_forced_pair
from server_client import start_server

ROOT = Path(__file__).resolve().parents[1]
URI = "file:///work/fallback.py"
DOC = "def add(a, b):\n    return a + b\n\n\ndef mean(values):\n    total = \n"
LINE, COL = 5, 12
OPTIONS = {"compile": "on", "overlap": "on", "temperature": 0.0}


@pytest.fixture(scope="module")
def forced(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints that write "x=1\\nx=1..." whatever the document, so a completion is always offered."""
    return write_forced_pair(tiny_models, tmp_path_factory.mktemp("forced-lines"), rule="lines")


def launcher(fault: str) -> list[str]:
    return [str(ROOT / "tests" / "faulty_server.py"), fault, "--"]


async def served_with_hover(s) -> tuple[list, str]:
    s.open(URI, DOC)
    items = await s.inline(URI, LINE, COL, invoked=True)
    hover = await s.client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=LINE, character=0)))
    return items, hover.contents.value


async def messages(s, needle: str, timeout: float = 30) -> list[str]:
    for _ in range(int(timeout / 0.1)):
        found = [m.message for m in s.client.messages if needle in m.message]
        if found:
            return found
        await asyncio.sleep(0.1)
    return []


@pytest.mark.asyncio
async def test_a_capture_that_raises_at_load_leaves_a_server_that_serves_eagerly(forced: Path) -> None:
    async with start_server(forced, OPTIONS, launcher=launcher("capture")) as s:
        assert s.statuses[-1]["state"] == "ready"
        shown = await messages(s, "capturing its passes as CUDA graphs failed")
        assert len(shown) == 2 and all("compile off" in m for m in shown)  # qwen's and dllm's, once each
        items, md = await served_with_hover(s)
        assert items, "no completion served"
        stats = await s.stats()
        assert stats["graphs"]["static"] == {"qwen": False, "dllm": False}
        assert set(stats["graphs"]["fallbacks"]) == {"qwen", "dllm"} and stats["graphs"]["count"] == 0
        assert "model passes:** eager" in md and "capturing its passes as CUDA graphs failed" in md


@pytest.mark.asyncio
async def test_out_of_memory_in_a_request_is_retried_eagerly_and_said(forced: Path) -> None:
    async with start_server(forced, OPTIONS, launcher=launcher("oom-request")) as s:
        before = await s.stats()
        assert before["graphs"]["static"] == {"qwen": True, "dllm": True} and before["graphs"]["count"] > 0
        items, md = await served_with_hover(s)
        assert items, "no completion served"
        shown = await messages(s, "out of memory during a request")
        assert shown and all("graphMemory" in m for m in shown)
        stats = await s.stats()
        assert stats["graphs"]["static"] == {"qwen": False, "dllm": False} and stats["errors"] == 0
        assert "out of memory during a request" in md
