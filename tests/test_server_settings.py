"""Settings through the real server over stdio (issue 18 items 6 and 7): every numeric bound at both
edges, the values that were accepted and then broke every completion, infinite and huge numbers in
`initialize` and `didChangeConfiguration`. A refused key is named, keeps its value, and the good keys of
the same message apply; completions go on. The settings in force are read back from `fimLsp.stats`.

The models are forced (tests/forced.py): what a completion writes never depends on random weights."""
from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from fim_lsp.context.settings import CONTEXT_RULES
from fim_lsp.engine.config import ENGINE_RULES, camel
from fim_lsp.engine.rules import INT, INTS
from fim_lsp.server.settings import SERVER_RULES
from server_client import FAST, Session, start_server
from stdio_rpc import StdioServer
from test_settings_rules import BAD, NUMERIC, edges

pytestmark = pytest.mark.asyncio(loop_scope="module")
DOC = "def mean(values):\n    total = \n"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s(forced_lines: Path):
    async with start_server(forced_lines) as session:
        yield session


async def settings(s: Session) -> dict:
    return (await s.stats())["settings"]


async def settled(s: Session, key: str, value) -> dict:
    """The settings once `key` reads `value`: an engine key takes effect on the model thread, after the
    message that set it has been answered."""
    for _ in range(400):
        now = await settings(s)
        if now[key] == value:
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} never became {value!r}: {now[key]!r}")


async def errors_after(s: Session, **values) -> list[str]:
    """Send `values` in one didChangeConfiguration; the error messages it caused. The stats request
    after it is answered after the notification was handled, so every message has arrived by then."""
    seen = len(s.client.messages)
    s.configure(**values)
    await s.stats()
    return [m.message for m in s.client.messages[seen:] if m.type == types.MessageType.Error]


def wire(rule, x: float):
    if rule.kind == INTS:
        return [int(x)]
    return int(x) if rule.kind == INT else x


async def test_every_numeric_bound_at_both_edges(s: Session) -> None:
    start = await settings(s)
    keys = sorted(NUMERIC)
    assert {camel(k) for k in {**ENGINE_RULES, **SERVER_RULES, **CONTEXT_RULES}} >= set(keys)
    try:
        for key in keys:
            rule = NUMERIC[key]
            inside, outside = edges(rule)
            for x in inside:
                assert await errors_after(s, **{key: wire(rule, x)}) == [], (key, x)
                await settled(s, key, wire(rule, x))
            held = (await settings(s))[key]
            for x in outside:
                (error,) = await errors_after(s, **{key: wire(rule, x)})
                assert f"fimLsp.{key}: must be" in error and "keeping the old value" in error, error
                assert (await settings(s))[key] == held, (key, x)
    finally:
        s.configure(**{k: start[k] for k in keys})
    await settled(s, "steps", start["steps"])
    assert {k: v for k, v in (await settings(s)).items() if k in keys} == {k: start[k] for k in keys}
    assert (await s.stats())["errors"] == 0


async def test_values_that_broke_every_completion_are_refused_and_completions_go_on(s: Session) -> None:
    uri = "file:///work/settings_bad.py"
    s.open(uri, DOC)
    start = await s.stats()
    for key, value in BAD:
        before = (await settings(s))[key]
        errors = await errors_after(s, **{key: value, "cacheSize": 100})  # a good key beside the bad one
        assert len(errors) == 1 and errors[0].startswith(f"fim-lsp: bad setting fimLsp.{key}: "), (key, errors)
        now = await settings(s)
        assert now[key] == before and now["cacheSize"] == 100, key
        s.configure(cacheSize=256)
    items = await s.inline(uri, 1, 12)
    stats = await s.stats()
    assert [i.insert_text for i in items] and items[0].insert_text.startswith("x=1")
    assert stats["completedLoops"] == start["completedLoops"] + 1 and stats["errors"] == 0
    assert stats["models"] == ["qwen", "dllm"] and stats["state"] == "ready"  # device "meta" never loaded


async def test_infinity_in_an_integer_key_names_it_and_applies_the_good_keys(s: Session) -> None:
    # The message: {"steps": 5, "prefixLines": Infinity, "enabled": false}
    errors = await errors_after(s, steps=5, prefixLines=math.inf, enabled=False)
    assert len(errors) == 1 and "fimLsp.prefixLines" in errors[0]
    now = await settled(s, "steps", 5)
    assert now["steps"] == 5 and now["enabled"] is False and now["prefixLines"] == 64
    s.configure(steps=FAST["steps"], enabled=True)
    assert (await settings(s))["enabled"] is True


def test_initialize_with_1e400_in_an_integer_key(tiny_models: Path, tmp_path: Path) -> None:
    """Written as the JSON text 1e400 (a float too large: infinity), not as a Python value."""
    server = StdioServer(tiny_models, tmp_path / "stderr.txt", {},
                         raw_options='{"fimLsp": {"prefixLines": 1e400, "steps": 5, "waitForModelsMs": '
                         + "9" * 40 + "}}")
    assert "result" in server.init, server.init  # was: -32603 with a traceback
    shown = [m["params"]["message"] for m in server.messages if m.get("method") == "window/showMessage"]
    assert any("fimLsp.prefixLines" in m for m in shown) and any("fimLsp.waitForModelsMs" in m for m in shown)
    now = server.request("workspace/executeCommand", {"command": "fimLsp.stats", "arguments": []})["result"]
    assert now["settings"]["steps"] == 5 and now["settings"]["prefixLines"] == 64
    assert now["settings"]["waitForModelsMs"] == 10000
    server.request("shutdown")
    server.notify("exit")
    code, err = server.finish()
    assert code == 0 and "Traceback" not in err
