"""Pure parts of the server: positions, context windows, post-processing, cache, settings."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from fim_lsp.engine.config import EngineConfig
from fim_lsp.engine.results import Cancelled, Candidate, Completion
from fim_lsp.server.cache import CompletionCache
from fim_lsp.server.context import UTF8, UTF16, UTF32, char_column, extract, units
from fim_lsp.server.postprocess import postprocess
from fim_lsp.server.settings import ServerSettings, all_defaults, apply_settings
from fim_lsp.server.worker import SUPERSEDED, ModelWorker


def cand(model: str, text: str, ppl: float) -> Candidate:
    return Candidate(model=model, text=text, perplexity=ppl, mean_logprob=0.0, tokens=len(text),
                     seconds=0.0, forward_passes=1)


def test_position_encodings_count_non_bmp_characters() -> None:
    line = "s = '😀é' + x"
    assert units("😀", UTF16) == 2 and units("😀", UTF8) == 4 and units("😀", UTF32) == 1
    # the cursor just after the emoji: utf-16 column 7, utf-8 column 9, utf-32 column 6
    assert char_column(line, 7, UTF16) == 6
    assert char_column(line, 9, UTF8) == 6
    assert char_column(line, 6, UTF32) == 6
    assert char_column(line, 6, UTF16) == 5  # inside the surrogate pair: rounds down
    assert char_column(line, 999, UTF16) == len(line)


def test_extract_handles_crlf_budgets_and_clamping() -> None:
    text = "".join(f"line{i}\r\n" for i in range(100)) + "last"
    ctx = extract(text, 50, 2, prefix_lines=3, suffix_lines=2)
    assert ctx.eol == "\r\n" and "\r" not in ctx.prefix + ctx.suffix
    assert ctx.prefix == "line47\nline48\nline49\nli"
    assert ctx.suffix == "ne50\nline51\nline52"
    past = extract(text, 10_000, 10_000)
    assert past.line == 100 and past.line_before == "last" and past.suffix == ""
    empty = extract("", 5, 5)
    assert empty.prefix == "" and empty.suffix == ""


def test_single_line_mode_from_the_cursor_place() -> None:
    assert extract("foo(", 0, 4).single_line is False
    assert extract("foo()", 0, 4).single_line is False  # only an auto-closed bracket follows
    assert extract("foo(\"\")", 0, 5).single_line is False
    assert extract("x = 1 + y", 0, 4).single_line is True


def test_postprocess_trims_suffix_repeats_and_covers_closers() -> None:
    # mid-line: single line, and the part that repeats the rest of the line goes
    ctx = extract("total = compute(a, b)\n", 0, 16)
    assert postprocess("a, b)\nmore", ctx, single_line=True) is None  # all of it repeats: nothing to offer
    ins = postprocess("x, a, b)", extract("total = compute(, a, b)\n", 0, 16), single_line=True)
    assert ins is not None and ins.text == "x"
    # auto-closed bracket at the end of the line: the range covers it when the completion closes it
    ctx = extract("print(\n", 0, 6)
    ctx2 = extract("print()\n", 0, 6)
    ins = postprocess("'hi')", ctx2, single_line=False)
    assert ins is not None and ins.text == "'hi')" and ins.cover == 1
    ins = postprocess("'hi'", ctx2, single_line=False)
    assert ins is not None and ins.cover == 0
    assert postprocess("'hi')   \n\n", ctx, single_line=False).text == "'hi')"
    # a completion that runs into the next existing line stops before it
    doc = "def f(x):\n    \n    return x\n"
    ins = postprocess("y = x + 1\n    return x\n", extract(doc, 1, 4), single_line=False)
    assert ins is not None and ins.text == "y = x + 1"
    # CRLF documents get CRLF insertions
    ins = postprocess("a = 1\nb = 2", extract("x\r\n\r\n", 1, 0), single_line=False)
    assert ins is not None and ins.text == "a = 1\r\nb = 2"
    assert postprocess("   \n  ", extract("x\n", 1, 0), single_line=False) is None


def test_cache_exact_and_typing_through() -> None:
    cache = CompletionCache(2)
    comp = Completion(candidates=[cand("qwen", "return a + b", 2.0), cand("dllm", "return a", 3.0)],
                      winner=None, timings={})
    comp.winner = comp.candidates[0]
    cache.put("def f(a, b):\n    ", "\n", comp)
    assert cache.get("def f(a, b):\n    ", "\n").typed == ""
    hit = cache.get("def f(a, b):\n    retu", "\n")
    assert hit is not None and hit.typed == "retu" and hit.completion.text == "rn a + b"
    assert [c.model for c in hit.completion.candidates] == ["qwen", "dllm"]
    hit = cache.get("def f(a, b):\n    return a +", "\n")
    assert hit is not None and hit.completion.text == " b" and len(hit.completion.candidates) == 1
    assert cache.get("def f(a, b):\n    x", "\n") is None  # typed something else
    assert cache.get("def f(a, b):\n    retu", "\nother") is None  # the suffix changed
    cache.put("a", "b", comp)
    cache.put("c", "d", comp)
    assert len(cache) == 2 and cache.get("def f(a, b):\n    ", "\n") is None  # evicted


def test_cache_drops_every_other_documents_answers() -> None:
    cache = CompletionCache(8)
    comp = Completion(candidates=[cand("qwen", "return a + b", 1.0)], winner=cand("qwen", "return a + b", 1.0), timings={})
    for uri in ("a", "b", "c"):
        cache.put("def f(a, b):\n    ", "\n", comp, uri=uri)
    assert cache.drop_others("b") == 2
    assert len(cache) == 1 and cache.get("def f(a, b):\n    ", "\n", uri="b") is not None
    assert cache.get("def f(a, b):\n    ", "\n", uri="a") is None


def test_settings_apply_good_keys_and_reject_bad_ones_by_name() -> None:
    up = apply_settings({"fimLsp": {"steps": 7, "prefixLines": 10, "temperature": -1, "debounceMs": "x",
                                     "models": "qwen", "bogus": 1}}, ServerSettings(), EngineConfig())
    assert up.engine.steps == 7 and up.engine.models == "qwen" and up.engine.temperature == 0.6
    assert up.server.prefix_lines == 10 and up.server.debounce_ms == 0
    assert any("temperature" in e for e in up.errors) and any("debounceMs" in e for e in up.errors)
    assert up.unknown == ["bogus"]
    flat = apply_settings({"dllmLengths": [4, 8], "enabled": False}, ServerSettings(), EngineConfig())
    assert flat.engine.dllm_lengths == (4, 8) and flat.server.enabled is False and not flat.errors
    keys = all_defaults()
    assert keys["prefixLines"] == 64 and keys["waitForModelsMs"] == 10000 and keys["arModel"]


def test_worker_latest_request_wins_across_documents_and_cancels_at_the_next_step() -> None:
    async def scenario() -> tuple[list[str], float, threading.Thread]:
        before = set(threading.enumerate())
        worker = ModelWorker(asyncio.get_running_loop())
        steps: list[str] = []

        def loop(name: str, n: int):
            def fn(cancel):
                for _ in range(n):
                    if cancel():
                        steps.append(f"{name} stopped")
                        raise Cancelled()
                    time.sleep(0.01)
                steps.append(f"{name} done")
                return name
            return fn

        first = worker.submit(loop("a", 1000), key="doc-a", supersede=True)
        (thread,) = set(threading.enumerate()) - before  # the model thread starts with the first job
        await asyncio.sleep(0.05)
        second = worker.submit(loop("b", 5), key="doc-b", supersede=True)  # another document
        t = time.perf_counter()
        with pytest.raises(Cancelled):
            await first.future
        answered = time.perf_counter() - t
        assert first.reason == SUPERSEDED
        assert await second.future == "b"
        assert thread.is_alive()
        worker.stop()
        return steps, answered, thread

    steps, answered, thread = asyncio.run(scenario())
    assert steps == ["a stopped", "b done"] and answered < 0.5
    thread.join(timeout=5)
    assert not thread.is_alive()  # stop() ends the model thread


def test_readme_section_documents_every_key_with_its_default() -> None:
    import json
    import re
    from pathlib import Path

    from fim_lsp.engine.config import ENGINE_RULES, camel
    from fim_lsp.context.settings import CONTEXT_RULES
    from fim_lsp.server.settings import SERVER_RULES

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {key: (default, accepts) for key, default, accepts
            in re.findall(r"^\| `(\w+)` \| `([^`]*)` \| ([^|]*) \|", text, flags=re.M)}
    rules = {camel(k): r for k, r in {**ENGINE_RULES, **SERVER_RULES, **CONTEXT_RULES}.items()}
    for key, default in all_defaults().items():
        assert key in rows, f"{key} is not documented"
        shown = json.loads(rows[key][0])
        want = list(default) if isinstance(default, tuple) else default
        assert shown == want, f"{key}: README says {rows[key][0]}, code says {default!r}"
        assert rows[key][1] == rules[key].describe(), f"{key}: README accepts {rows[key][1]!r}"


def test_token_budgets_cut_at_line_boundaries(tiny_models) -> None:
    from transformers import AutoTokenizer

    from fim_lsp.engine.prompt import clip_text as clip_tokens

    tok = AutoTokenizer.from_pretrained(str(tiny_models / "ar"))
    text = "".join(f"value_{i} = compute({i})\n" for i in range(200))
    prefix = clip_tokens(tok, text, 100, keep_end=True)
    suffix = clip_tokens(tok, text, 100, keep_end=False)
    assert text.endswith(prefix) and text.startswith(suffix)
    assert prefix.startswith("value_") and suffix.endswith(")")  # whole lines only
    for part in (prefix, suffix):
        assert 50 < len(tok(part, add_special_tokens=False)["input_ids"]) <= 100
    assert clip_tokens(tok, text, 0, keep_end=True) == text
