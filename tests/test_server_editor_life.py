"""The server under an editor's life: bad settings, reloads that fail, the typing-through cache across
documents, stale candidates, positions past the end, a completion cut inside a character.

A real server over stdio, driven by pytest-lsp's client. What it writes is forced, never left to a
random model: its Qwen is a forced checkpoint (forced.write_forced) that writes "x", "é" (as two byte
tokens), "x", ... whatever the context, so the token limit decides where the text ends."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from forced import write_forced
from server_client import FAST, Session, start_server

# Module-scoped, like test_server.py: each test restores what it configures.
pytestmark = pytest.mark.asyncio(loop_scope="module")
WHOLE = 7  # tokens: x é x é x, "xéxéx"
CUT = 5  # tokens: x é x and the first byte of "é"


@pytest.fixture(scope="module")
def cycle_model(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cycle")
    assert len(write_forced(tiny_models / "ar", out, "xé")) == 3  # "x", then the two bytes of "é" (0xC3 0xA9)
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s(tiny_models: Path, cycle_model: Path):
    options = {**FAST, "maxNewTokens": WHOLE, "temperature": 0}
    async with start_server(tiny_models, options, cli=["--ar-model", str(cycle_model), "--models", "qwen"]) as session:
        assert session.statuses[-1]["state"] == "ready" and session.statuses[-1]["models"] == ["qwen"]
        yield session


async def served_by_a_model_run(s: Session, uri: str, line: int, col: int) -> list[types.InlineCompletionItem]:
    before = await s.stats()
    items = await s.inline(uri, line, col)
    assert (await s.stats())["modelRuns"] == before["modelRuns"] + 1
    return items


def errors_since(s: Session, seen: int) -> list[str]:
    return [m.message for m in s.client.messages[seen:] if m.type == types.MessageType.Error]


async def test_bad_engine_values_are_named_and_the_old_ones_keep_serving(s: Session, tmp_path: Path) -> None:
    for key, bad in (("device", "gpu"), ("dtype", "int8"), ("arModel", str(tmp_path / "missing")),
                     ("arModel", "no such/hub id")):
        uri = f"file:///work/settings_{len(s.client.messages)}.py"
        s.open(uri, "value = ")
        seen, statuses = len(s.client.messages), len(s.statuses)
        s.configure(**{key: bad})
        items = await served_by_a_model_run(s, uri, 0, 8)
        assert [i.insert_text for i in items] == ["xéxéx"]
        (error,) = errors_since(s, seen)
        assert f"fimLsp.{key}" in error and "keeping the old value" in error
        assert "Expected one of" not in error  # torch's raw list of device types
        assert not [st for st in s.statuses[statuses:] if st["state"] != "ready"]  # nothing reloaded
    stats = await s.stats()
    assert stats["state"] == "ready" and stats["models"] == ["qwen"]


async def test_a_reload_that_fails_puts_the_previous_models_back(s: Session, tmp_path: Path) -> None:
    broken = tmp_path / "broken"  # passes the settings check (config.json is there), fails to load
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen2"}')
    uri = "file:///work/reload.py"
    s.open(uri, "total = ")
    seen, mark = len(s.client.messages), len(s.statuses)
    s.configure(arModel=str(broken))
    status = await s.wait_state("ready", "failed", since=mark)
    assert status["state"] == "ready" and status["models"] == ["qwen"] and "reload failed" in status["message"]
    (error,) = errors_since(s, seen)
    assert str(broken) in error and "previous models still serve" in error
    stats = await s.stats()
    assert stats["state"] == "ready" and stats["models"] == ["qwen"]  # what the status says is what serves
    assert [i.insert_text for i in await served_by_a_model_run(s, uri, 0, 8)] == ["xéxéx"]


async def test_typing_through_needs_the_same_document_prefix_and_suffix(s: Session) -> None:
    first, other = "file:///work/first.py", "file:///work/other.py"
    s.open(first, "import ")
    (item,) = await served_by_a_model_run(s, first, 0, 7)
    typed = item.insert_text[:3]
    # The repro: another file, 9 lines, ending in `import ` plus what was typed.
    body = "".join(f"value_{i} = {i}\n" for i in range(8)) + "import " + typed
    s.open(other, body)
    await served_by_a_model_run(s, other, 8, len("import " + typed))
    assert (await s.command("fimLsp.showCandidates"))["fromCache"] is False
    # The same file, with only the typed characters added: answered from the cache, no model run.
    s.replace(first, "import " + typed)
    before = await s.stats()
    (rest,) = await s.inline(first, 0, len("import " + typed))
    after = await s.stats()
    assert rest.insert_text == item.insert_text[3:] and after["modelRuns"] == before["modelRuns"]
    assert after["typedThrough"] == before["typedThrough"] + 1
    # The same file and prefix, but the text after the cursor changed: not the same context.
    s.replace(first, "import " + typed + "\nprint()")
    await served_by_a_model_run(s, first, 0, len("import " + typed))


async def test_a_position_past_the_end_gets_no_item(s: Session) -> None:
    uri = "file:///work/short.py"
    s.open(uri, "a = 1\nb = ")
    before = await s.stats()
    assert await s.inline(uri, 5, 0) == [] and await s.inline(uri, 2, 4) == []
    after = await s.stats()
    assert after["modelRuns"] == before["modelRuns"] and after["empty"] == before["empty"] + 2
    assert [i.insert_text for i in await s.inline(uri, 1, 99)] == ["xéxéx"]  # a long column clamps


async def test_a_completion_cut_inside_a_character_drops_the_partial_one(s: Session) -> None:
    uri = "file:///work/accents.py"
    s.open(uri, "name = '")
    s.configure(maxNewTokens=CUT)
    try:
        items = await served_by_a_model_run(s, uri, 0, 8)
        qwen = (await s.command("fimLsp.showCandidates"))["candidates"][0]
        # the budget stopped inside "é": the engine keeps whole characters (text, tokens, perplexity
        # agree), and the server would drop a trailing partial one too
        assert qwen["text"] == "xéx" and qwen["tokens"] == CUT - 1
        assert [i.insert_text for i in items] == ["xéx"]
    finally:
        s.configure(maxNewTokens=WHOLE)


async def test_candidates_from_the_previous_models_are_not_shown_after_a_change(s: Session) -> None:
    """Last: it switches the shared server to both models."""
    uri = "file:///work/hover.py"
    s.open(uri, "result = ")
    await served_by_a_model_run(s, uri, 0, 9)
    hover = types.HoverParams(text_document=types.TextDocumentIdentifier(uri=uri),
                              position=types.Position(line=0, character=3))
    assert await s.client.text_document_hover_async(hover) is not None
    assert (await s.command("fimLsp.showCandidates"))["uri"] == uri
    mark = len(s.statuses)
    s.configure(models="both")
    status = await s.wait_state("ready", "failed", since=mark)
    assert status["state"] == "ready" and status["models"] == ["qwen", "dllm"]
    assert await s.command("fimLsp.showCandidates") is None
    assert await s.client.text_document_hover_async(hover) is None
    await served_by_a_model_run(s, uri, 0, 9)  # the old answer is not served from the cache either
    shown = await s.command("fimLsp.showCandidates")
    assert {c["model"] for c in shown["candidates"]} == {"qwen", "dllm"}
