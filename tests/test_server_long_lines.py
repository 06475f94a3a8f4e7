"""A 4 MB line (issue 18 item 9): the token budget is applied to a bounded window of text, so a request
at the end of a 4 MB line costs about what one at the end of a 4 KB line does, the server's memory stays
flat over many such requests, and a small document is served promptly while the big one is in flight.

The real server over stdio (tests/stdio_rpc.py). Prints, from one run, the ratios 4 MB : 4 KB of the
request time and of the server's RSS:

    python -m pytest -q -s tests/test_server_long_lines.py

The asserted bounds are loose (4x where the unbounded tokenizer measured 50-100x): the machine is shared."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from transformers import AutoTokenizer

from fim_lsp.engine.prompt import CHARS_PER_TOKEN, clip_text
from stdio_rpc import StdioServer

FAST = {"profile": "exact", "steps": 4, "maxNewTokens": 8, "dllmLengths": [4]}
PIECE = "x = compute(a, b) + 1; "
REQUESTS = 12


def line_of(chars: int) -> str:
    return (PIECE * (chars // len(PIECE) + 1))[:chars]


def rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def complete(server: StdioServer, uri: str, column: int) -> float:
    t = time.perf_counter()
    answer = server.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": 0, "character": column},
        "context": {"triggerKind": 1}}, timeout=300)
    assert "result" in answer, answer
    return time.perf_counter() - t


def series(server: StdioServer, uri: str, chars: int) -> tuple[float, float]:
    """Median seconds of REQUESTS completions near the end of the line (each at its own column, so none
    comes from the cache), and the RSS after them."""
    times = [complete(server, uri, chars - i) for i in range(REQUESTS)]
    return statistics.median(times), rss_mb(server.proc.pid)


def test_a_4mb_line_costs_about_what_a_4kb_line_does(tiny_models: Path, tmp_path: Path) -> None:
    server = StdioServer(tiny_models, tmp_path / "stderr.txt", FAST)
    server.status("ready")
    small, big = "file:///work/small.py", "file:///work/big.py"
    for uri, chars in ((small, 4_000), (big, 4_000_000)):
        server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": line_of(chars) + "\n"}})
    complete(server, small, 10)  # first request: warm-up
    t_small, rss_small = series(server, small, 4_000)
    t_big, rss_big = series(server, big, 4_000_000)
    # In flight: the big document's request, and at once a small one (which supersedes it).
    server.send_request("textDocument/inlineCompletion", {
        "textDocument": {"uri": big}, "position": {"line": 0, "character": 3_000_000},
        "context": {"triggerKind": 1}})
    behind = complete(server, small, 3_000)
    stats = server.request("workspace/executeCommand", {"command": "fimLsp.stats", "arguments": []})["result"]
    print(f"\nrequest at the end of the line, median of {REQUESTS}: 4 KB {t_small * 1000:.0f} ms, "
          f"4 MB {t_big * 1000:.0f} ms, ratio {t_big / t_small:.2f}")
    print(f"server RSS after them: 4 KB {rss_small:.0f} MB, 4 MB {rss_big:.0f} MB, ratio {rss_big / rss_small:.2f}")
    print(f"the 4 KB request sent while a 4 MB one was in flight: {behind * 1000:.0f} ms, "
          f"{behind / t_small:.2f}x the 4 KB median")
    assert stats["errors"] == 0
    assert t_big / t_small < 4 and behind / t_small < 4
    assert rss_big / rss_small < 1.25  # the document itself is 4 MB of ~400 MB
    server.request("shutdown")
    server.notify("exit")
    assert server.finish()[0] == 0


def test_clip_text_tokenizes_a_bounded_window(tiny_models: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_models / "ar"))
    seen: list[int] = []

    def counting(text: str, **kw):
        seen.append(len(text))
        return tok(text, **kw)

    text = line_of(4_000_000)
    for keep_end in (True, False):
        seen.clear()
        clipped = clip_text(counting, text, 100, keep_end=keep_end)
        assert (text.endswith if keep_end else text.startswith)(clipped)
        assert 90 <= len(tok(clipped, add_special_tokens=False)["input_ids"]) <= 100
        assert seen and max(seen) <= 100 * CHARS_PER_TOKEN
    # A text whose tokens are long (spaces): the window stays bounded (less text than the budget could hold).
    spaces = " " * 1_000_000 + "x"
    seen.clear()
    clipped = clip_text(counting, spaces, 100, keep_end=True)
    assert spaces.endswith(clipped) and max(seen) <= 100 * CHARS_PER_TOKEN
    # Normal code: the window gives the same cut as tokenizing everything did.
    code = "".join(f"value_{i} = compute({i})\n" for i in range(2000))
    full = tok(code, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    cut = full[len(full) - 300][0]
    start = cut if code[cut - 1] == "\n" else code.find("\n", cut) + 1
    assert clip_text(tok, code, 300, keep_end=True) == code[start:]
