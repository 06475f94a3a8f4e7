"""Which requests run, across documents (issue 18 items 14 and 10): the latest request wins whatever
its document, a request for the same context still joins the one in flight, typing through never takes
another document's completion, and a lone surrogate in a document does not break its completions.

The real server over stdio, on forced checkpoints that write "x=1\\nx=1..." whatever the context."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from server_client import Session, delta, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s(forced_lines: Path):
    async with start_server(forced_lines) as session:
        yield session


async def test_the_latest_request_wins_across_documents(s: Session) -> None:
    docs = [f"file:///work/queue_{i}.py" for i in range(50)]
    for i, uri in enumerate(docs):
        s.open(uri, f"value_{i} = compute({i}, \n")
    fresh = "file:///work/queue_fresh.py"
    s.open(fresh, "answer = compute(\n")
    s.configure(steps=16)
    start = await s.stats()
    # 100 requests over 50 documents, then one in a document none of them touched, all sent at once.
    burst = [asyncio.ensure_future(s.inline(docs[i % 50], 0, 18 + i // 50, invoked=True)) for i in range(100)]
    last = asyncio.ensure_future(s.inline(fresh, 0, 17, invoked=True))
    results = await asyncio.gather(*burst)
    items = await last
    stats = await s.stats()
    shown = await s.command("fimLsp.showCandidates")
    s.configure(steps=4)
    d = {k: delta(stats, start, k) for k in ("superseded", "modelRuns", "completedLoops", "interruptedLoops")}
    print(f"\n100 requests over 50 documents, then a fresh one: {d}")
    assert all(r == [] for r in results)
    assert items and items[0].insert_text.startswith("x=1")
    assert d["completedLoops"] == 1 and d["superseded"] == 100  # only the fresh document's ran to the end
    assert d["modelRuns"] - d["interruptedLoops"] == 1
    assert shown["uri"] == fresh


async def test_a_request_for_the_same_context_joins_instead_of_superseding(s: Session) -> None:
    uri = "file:///work/queue_join.py"
    s.open(uri, "total = compute(\n")
    s.configure(debounceMs=200)  # both wait, then the first would be "not the latest"
    start = await s.stats()
    try:
        inline, comp = await asyncio.gather(s.inline(uri, 0, 16), s.client.text_document_completion_async(
            types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri),
                                   position=types.Position(line=0, character=16))))
    finally:
        s.configure(debounceMs=0)
    stats = await s.stats()
    assert inline and [i.insert_text for i in inline] == [c.text_edit.new_text for c in comp.items]
    assert delta(stats, start, "modelRuns") == 1 and delta(stats, start, "superseded") == 0


async def test_typing_through_never_takes_another_documents_completion(s: Session) -> None:
    first, other = "file:///work/queue_first.py", "file:///work/queue_other.py"
    s.open(first, "import ")
    (item,) = await s.inline(first, 0, 7)
    typed = item.insert_text[:2]
    # Another document whose prefix is exactly the first one's plus characters of its completion, and
    # whose suffix is the same (empty): only the document differs.
    s.open(other, "import " + typed)
    before = await s.stats()
    await s.inline(other, 0, 7 + len(typed))
    after = await s.stats()
    assert delta(after, before, "modelRuns") == 1 and delta(after, before, "typedThrough") == 0
    assert (await s.command("fimLsp.showCandidates"))["fromCache"] is False
    # The same typing in the first document is typing through: no model runs.
    s.replace(first, "import " + typed)
    (rest,) = await s.inline(first, 0, 7 + len(typed))
    again = await s.stats()
    assert rest.insert_text == item.insert_text[len(typed):]
    assert delta(again, after, "modelRuns") == 0 and delta(again, after, "typedThrough") == 1


LONE = "s = '\ud800' + "  # a lone high surrogate: JSON "\ud800", legal in a UTF-16 editor buffer


async def check_lone_surrogate(s: Session, column: int) -> None:
    uri = "file:///work/surrogate.py"
    s.open(uri, "x = 1\n" + LONE + "\n")
    before = await s.stats()
    items = await s.inline(uri, 1, column, invoked=True)
    stats = await s.stats()
    assert items and items[0].insert_text.startswith("x=1"), items
    assert all(i.range.start == types.Position(line=1, character=column) for i in items)
    assert stats["errors"] == before["errors"] == 0 and delta(stats, before, "completedLoops") == 1
    assert not [m for m in s.client.messages if m.type == types.MessageType.Error]


async def test_a_lone_surrogate_in_the_document_does_not_break_its_completions(s: Session) -> None:
    await check_lone_surrogate(s, len(LONE))  # UTF-16 columns: the surrogate is one unit


async def test_a_lone_surrogate_with_utf8_columns(forced_lines: Path) -> None:
    from server_client import capabilities

    async with start_server(forced_lines, caps=capabilities(encodings=["utf-8"])) as s:
        assert s.init.capabilities.position_encoding == types.PositionEncodingKind.Utf8
        await check_lone_surrogate(s, len(LONE.encode("utf-8", "surrogatepass")))
