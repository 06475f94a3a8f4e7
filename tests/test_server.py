"""The real server as a subprocess over stdio, driven by pytest-lsp's client, on tiny checkpoints."""
from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from fim_lsp.server.context import extract
from fim_lsp.server.logs import log_file
from fim_lsp.server.postprocess import postprocess
from server_client import Session, delta, start_server

URI = "file:///work/example.py"
DOC = "def add(a, b):\n    return a + b\n\n\ndef mean(values):\n    total = \n"
LINE, COL = 5, 12  # after "total = "

# One server for this module (each start imports torch and loads models: seconds on a 2-core box);
# every test uses its own documents and compares stats before/after, and restores what it configures.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s(forced_lines: Path):
    async with start_server(forced_lines) as session:
        yield session


async def _winner_check(s: Session) -> dict:
    s.open(URI, DOC)
    items = await s.inline(URI, LINE, COL)
    shown = await s.command("fimLsp.showCandidates")
    assert shown is not None and shown["uri"] == URI and shown["position"] == {"line": LINE, "character": COL}
    ppl = {c["model"]: c["perplexity"] for c in shown["candidates"]}
    assert set(ppl) == {"qwen", "dllm"}
    assert ppl[shown["winner"]] == min(ppl.values())  # the ensemble keeps the lowest perplexity
    winner_text = next(c["text"] for c in shown["candidates"] if c["model"] == shown["winner"])
    assert shown["completion"] == winner_text
    expected = postprocess(winner_text, extract(DOC, LINE, COL), single_line=False)
    assert expected is not None and expected.text.startswith("x=1\n")
    assert len(items) == 1 and items[0].insert_text == expected.text
    return shown


async def test_initialize_advertises_features_and_loads_in_background(s: Session) -> None:
    result = s.init.capabilities
    assert result.inline_completion_provider is not None
    assert result.hover_provider and result.completion_provider is not None
    assert {"fimLsp.showCandidates", "fimLsp.stats", "fimLsp.accepted"} <= set(
        result.execute_command_provider.commands)
    assert result.position_encoding in (None, types.PositionEncodingKind.Utf16)
    assert [st["state"] for st in s.statuses[:2]] == ["loading", "ready"]
    assert s.statuses[1]["models"] == ["qwen", "dllm"]
    (reports,) = s.client.progress_reports.values()
    assert isinstance(reports[0], types.WorkDoneProgressBegin) and isinstance(reports[-1], types.WorkDoneProgressEnd)
    assert any("models ready" in m.message for m in s.client.log_messages)
    assert "models ready" in log_file().read_text(encoding="utf-8")


async def test_inline_completion_is_the_winner_and_hover_lists_both(s: Session) -> None:
    start = await s.stats()
    shown = await _winner_check(s)
    assert s.statuses[-1]["latencyMs"] is not None  # a status after each completion served
    invoked = await s.inline(URI, LINE, COL, invoked=True)  # same context: from the cache
    texts = [i.insert_text for i in invoked]
    # qwen writes 8 tokens, diffusion 4: two distinct texts, the winner first
    assert len(texts) == len(set(texts)) == len(shown["candidates"]) == 2
    assert texts[0] == shown["inserted"]
    hover = await s.client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=LINE, character=2)))
    assert hover is not None and hover.contents.kind == types.MarkupKind.Markdown
    md = hover.contents.value
    assert f"chosen: {shown['winner']}" in md and "timings" in md
    assert "**model passes:** eager (no CUDA graphs)" in md  # compile auto: off on a CPU
    for c in shown["candidates"]:
        assert f"{c['model']}: perplexity {c['perplexity']:.3f}" in md
    other = await s.client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=0, character=0)))
    assert other is None
    cmd = invoked[0].command  # the client runs the item's command when the user accepts it
    assert cmd is not None and cmd.command == "fimLsp.accepted"
    await s.command(cmd.command, *cmd.arguments)
    comp = await s.client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=LINE, character=COL)))
    assert comp.is_incomplete and len(comp.items) == 1
    stats = await s.stats()
    assert stats["wins"].get(shown["winner"], 0) == start["wins"].get(shown["winner"], 0) + 1
    assert stats["acceptances"] == {shown["winner"]: 1}
    assert comp.items[0].documentation.value.count(comp.items[0].text_edit.new_text) == 1
    assert stats["latencyMs"]["p50"] is not None and delta(stats, start, "modelRuns") == 1
    assert stats["graphs"]["static"] == {"qwen": False, "dllm": False} and stats["graphs"]["count"] == 0


async def test_typing_through_is_served_from_the_cache(s: Session) -> None:
    doc = "import os\n\n\ndef main():\n    path = os.path.join(\n"
    uri = "file:///work/typing.py"
    start = await s.stats()
    s.open(uri, doc)
    line, col = 4, 24
    items = await s.inline(uri, line, col)
    text = items[0].insert_text if items else ""
    assert text.startswith("x=1\n")
    k = 2
    again = await s.inline(uri, line, col)
    assert [i.insert_text for i in again] == [text]
    before = await s.stats()
    lines = doc.split("\n")
    lines[line] = lines[line][:col] + text[:k] + lines[line][col:]
    s.replace(uri, "\n".join(lines))
    typed = await s.inline(uri, line, col + k)
    assert [i.insert_text for i in typed] == [text[k:]]
    after = await s.stats()
    assert delta(after, start, "modelRuns") == delta(before, start, "modelRuns") == 1  # no model call for either
    assert delta(after, start, "cacheHits") == 2 and delta(after, start, "typedThrough") == 1


LONG_STEPS = 20_000


async def test_cancel_request_frees_the_worker_quickly(s: Session) -> None:
    uri = "file:///work/cancel.py"
    start = await s.stats()
    s.configure(steps=30)
    s.open(uri, DOC)
    t = time.perf_counter()
    await s.inline(uri, LINE, COL)
    uncancelled_30 = time.perf_counter() - t
    s.configure(steps=LONG_STEPS)  # an uncancelled request would now take ~700x longer
    s.replace(uri, DOC + "\n")
    params = s.inline_params(uri, LINE, COL)
    future = asyncio.ensure_future(s.client.protocol.send_request_async(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="long-1"))
    for _ in range(200):  # until the long loop is running on the worker
        await asyncio.sleep(0.05)
        if (await s.stats())["workerBusy"]:
            break
    await asyncio.sleep(0.5)
    t = time.perf_counter()
    s.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="long-1"))
    result = await asyncio.wait_for(future, 60)
    answered = time.perf_counter() - t
    assert result is None or not result.items
    while (await s.stats())["workerBusy"]:
        await asyncio.sleep(0.01)
    freed = time.perf_counter() - t
    s.configure(steps=30)
    s.replace(uri, DOC + "\n\n")
    t = time.perf_counter()
    await s.inline(uri, LINE, COL)
    next_request = time.perf_counter() - t
    s.configure(steps=4)
    stats = await s.stats()
    estimate = uncancelled_30 * LONG_STEPS / 30
    print(f"\ncancel: answered {answered * 1000:.0f} ms, worker free {freed * 1000:.0f} ms, next request "
          f"{next_request:.2f} s (same work uncancelled before: {uncancelled_30:.2f} s); uncancelled "
          f"steps={LONG_STEPS} would take ~{estimate:.0f} s")
    assert delta(stats, start, "cancelled") == 1 and delta(stats, start, "interruptedLoops") == 1
    assert delta(stats, start, "completedLoops") == 2
    assert freed < estimate / 20 and answered < estimate / 20
    # the next request runs at once instead of queueing behind the long loop (the machine is noisy,
    # so compare with what the long loop would have cost, not with the short run's exact time)
    assert next_request < estimate / 10


async def test_burst_of_20_only_the_last_runs_to_the_end(s: Session) -> None:
    uri = "file:///work/burst.py"
    doc = "".join(f"value_{i} = compute({i}, \n" for i in range(25))
    s.configure(steps=16)
    s.open(uri, doc)
    start = await s.stats()
    t = time.perf_counter()
    results = await asyncio.gather(*(s.inline(uri, i, 20, invoked=True) for i in range(20)))
    burst = time.perf_counter() - t
    stats = await s.stats()
    shown = await s.command("fimLsp.showCandidates")
    s.configure(steps=4)
    d = {k: delta(stats, start, k) for k in ("superseded", "modelRuns", "completedLoops", "interruptedLoops")}
    print(f"\nburst: 20 requests answered in {burst:.2f} s; {d}")
    assert all(r == [] for r in results[:19])
    assert d["superseded"] == 19 and d["completedLoops"] == 1
    assert d["modelRuns"] - d["interruptedLoops"] == 1
    assert shown["uri"] == uri and shown["position"]["line"] == 19  # the one that ran is the last one


async def test_debounce_runs_only_the_request_that_survives_the_wait(s: Session) -> None:
    uri = "file:///work/debounce.py"
    s.open(uri, DOC)
    start = await s.stats()
    s.configure(debounceMs=300)
    await asyncio.sleep(0.1)
    results = await asyncio.gather(*(s.inline(uri, LINE, COL - i) for i in range(3)))
    s.configure(debounceMs=0)
    stats = await s.stats()
    assert results[0] == [] and results[1] == []
    assert delta(stats, start, "debounced") == 2 and delta(stats, start, "modelRuns") == 1


async def test_inline_and_completion_for_one_context_share_one_model_run(s: Session) -> None:
    uri = "file:///work/shared.py"
    s.open(uri, DOC)
    start = await s.stats()
    inline, comp = await asyncio.gather(s.inline(uri, LINE, COL), s.client.text_document_completion_async(
        types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri),
                               position=types.Position(line=LINE, character=COL))))
    stats = await s.stats()
    assert delta(stats, start, "modelRuns") == 1 and delta(stats, start, "joined") == 1
    assert delta(stats, start, "superseded") == 0
    assert [i.insert_text for i in inline] == [c.text_edit.new_text for c in comp.items]


async def test_bad_requests_get_valid_answers_and_the_server_keeps_going(s: Session) -> None:
    start = await s.stats()
    assert await s.inline("file:///nowhere.py", 0, 0) == []
    assert await s.client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri="file:///nowhere.py"),
        position=types.Position(line=0, character=0))) is None
    uri = "file:///work/bad.py"
    s.open(uri, DOC)
    assert isinstance(await s.inline(uri, 999, 999), list)  # past the end: clamps
    emoji = "s = '😀😀'; t = "
    s.open("file:///emoji.py", emoji + "\n")
    col16 = len(emoji.encode("utf-16-le")) // 2
    items = await s.inline("file:///emoji.py", 0, col16, invoked=True)
    assert items
    for item in items:
        assert item.range.start == types.Position(line=0, character=col16)
    crlf = "def f(x):\r\n    y = \r\n    return y\r\n"
    s.open("file:///crlf.py", crlf)
    items = await s.inline("file:///crlf.py", 1, 8, invoked=True)
    assert items and items[0].insert_text.count("\r\n") >= 1  # qwen's 8 tokens: "x=1\r\nx=1"
    for item in items:  # every line break is the document's CRLF
        assert item.insert_text.count("\n") == item.insert_text.count("\r\n")
    s.open("file:///empty.py", "")
    assert isinstance(await s.inline("file:///empty.py", 0, 0), list)
    big = "x = 1\n" * 180_000  # ~1 MB
    s.open("file:///big.py", big)
    t = time.perf_counter()
    assert isinstance(await s.inline("file:///big.py", 90_000, 5), list)
    big_seconds = time.perf_counter() - t
    with pytest.raises(JsonRpcException):  # malformed params: a JSON-RPC error, not a crash
        await s.raw_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, {"textDocument": 5, "position": "x"})
    seen = len(s.client.messages)
    s.configure(temperature="hot", steps=-3, prefixLines=12)
    for _ in range(100):
        if len(s.client.messages) >= seen + 2:
            break
        await asyncio.sleep(0.05)
    shown = " | ".join(m.message for m in s.client.messages[seen:])
    assert "temperature" in shown and "steps" in shown
    before = await s.stats()
    s.replace(uri, DOC.replace("total = ", "count = "))
    await s.inline(uri, LINE, COL)
    after = await s.stats()
    s.configure(prefixLines=64)
    assert delta(after, before, "completedLoops") == 1 and delta(after, start, "errors") == 0
    good = await s.command("fimLsp.showCandidates")
    assert good["uri"] == uri and all(math.isfinite(c["perplexity"]) for c in good["candidates"])
    assert good["candidates"][-1]["forward_passes"] == 4  # steps stayed at the old, good value
    assert big_seconds < 30


async def test_configuration_change_takes_effect_without_restart(s: Session) -> None:
    """Last in this module: it switches the shared server to one model."""
    uri = "file:///work/config.py"
    s.open(uri, DOC)
    start = await s.stats()
    await s.inline(uri, LINE, COL)
    assert {c["model"] for c in (await s.command("fimLsp.showCandidates"))["candidates"]} == {"qwen", "dllm"}
    mark = len(s.statuses)
    s.configure(models="qwen", maxNewTokens=3)
    status = await s.wait_state("ready", "failed", since=mark)
    assert status["state"] == "ready" and status["models"] == ["qwen"]
    await s.inline(uri, LINE, COL)  # same context as before: the reload emptied the cache
    shown = await s.command("fimLsp.showCandidates")
    assert [c["model"] for c in shown["candidates"]] == ["qwen"] and shown["candidates"][0]["tokens"] <= 3
    s.configure(enabled=False)
    s.replace(uri, DOC + "\n")
    assert await s.inline(uri, LINE, COL) == []
    assert delta(await s.stats(), start, "modelRuns") == 2
