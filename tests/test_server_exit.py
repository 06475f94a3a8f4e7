"""How the server process ends: stdin closed mid-completion (the editor quit), `exit` with and without
`shutdown`, requests after `shutdown`. Hand-written JSON-RPC over the real server's stdio, so the test
sees the exit status and every byte of stderr."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stdio_rpc import StdioServer

TRIALS = 10
URI = "file:///work/busy.py"
# p2 keeps positions masked until the last of its steps: this diffusion loop runs for minutes on any
# context, so it is still running when stdin closes, whatever the random model writes.
BUSY = {"profile": "exact", "maxNewTokens": 8, "steps": 100_000, "dllmLengths": [32]}
CRASH_SIGNS = ("terminate called", "Traceback", "I/O operation on closed file", "Fatal Python error")


def busy_server(tiny: Path, stderr: Path) -> StdioServer:
    """A server whose model thread is inside a completion's model loop."""
    server = StdioServer(tiny, stderr, BUSY)
    server.status("ready")
    server.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1,
                                                            "text": "def f(x):\n    return "}})
    server.send_request("textDocument/inlineCompletion", {
        "textDocument": {"uri": URI}, "position": {"line": 1, "character": 11}, "context": {"triggerKind": 2}})
    while not stats(server)["workerBusy"]:
        time.sleep(0.05)
    return server


def stats(server: StdioServer) -> dict[str, Any]:
    return server.request("workspace/executeCommand", {"command": "fimLsp.stats", "arguments": []})["result"]


def eof_trial(tiny: Path, stderr: Path) -> tuple[int, str]:
    server = busy_server(tiny, stderr)
    server.close_stdin()
    return server.finish()


def test_stdin_closed_mid_completion_exits_0_every_time(tiny_models: Path, tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:  # two at a time: each start imports torch
        results = list(pool.map(lambda i: eof_trial(tiny_models, tmp_path / f"stderr-{i}.txt"), range(TRIALS)))
    codes = [code for code, _ in results]
    assert codes == [0] * TRIALS, f"exit statuses {codes}"
    for _, err in results:
        assert not [sign for sign in CRASH_SIGNS if sign in err], err


def test_exit_without_shutdown_mid_completion_is_status_1_and_quiet(tiny_models: Path, tmp_path: Path) -> None:
    server = busy_server(tiny_models, tmp_path / "stderr.txt")
    server.notify("exit")
    code, err = server.finish()
    assert code == 1
    assert not [sign for sign in CRASH_SIGNS if sign in err], err


def test_after_shutdown_requests_get_invalid_request_and_exit_is_0(tiny_models: Path, tmp_path: Path) -> None:
    server = busy_server(tiny_models, tmp_path / "stderr.txt")
    assert server.request("shutdown")["result"] is None
    for method, params in (("workspace/executeCommand", {"command": "fimLsp.stats", "arguments": []}),
                           ("textDocument/hover", {"textDocument": {"uri": URI},
                                                   "position": {"line": 0, "character": 0}})):
        answer = server.request(method, params, timeout=10)
        assert answer["error"]["code"] == -32600 and "shutdown" in answer["error"]["message"]  # InvalidRequest
    server.notify("exit")
    code, err = server.finish()
    assert code == 0
    assert not [sign for sign in CRASH_SIGNS if sign in err], err
