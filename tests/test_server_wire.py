"""The server's transport, as a terminal user and a stranger on the same machine meet it: input that is
no JSON-RPC message (issue 18 item 12), Ctrl-C (item 11) and `--tcp` (issue 16 part 2: loopback only,
and nothing is served before the client proves it holds the secret).

The real server as a subprocess, spoken to over its stdio with hand-written framing (tests/stdio_rpc.py)
and over a real TCP socket."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stdio_rpc import ROOT, StdioServer
from test_server_exit import busy_server

FAST = {"profile": "exact", "steps": 4, "maxNewTokens": 8, "dllmLengths": [4]}
CRASH_SIGNS = ("Traceback", "Fatal Python error", "Logging error")
URI = "file:///work/wire.py"


def stats(server: StdioServer) -> dict[str, Any]:
    return server.request("workspace/executeCommand", {"command": "fimLsp.stats", "arguments": []})["result"]


def errors_with_null_id(server: StdioServer) -> list[dict[str, Any]]:
    return [m for m in server.messages if "error" in m and m.get("id") is None]


def test_unparseable_input_gets_a_parse_error_and_the_server_goes_on(tiny_models: Path, tmp_path: Path) -> None:
    server = StdioServer(tiny_models, tmp_path / "stderr.txt", FAST)
    server.status("ready")
    bad = [
        (b'{"jsonrpc": "2.0", "id": 1, "method": "textDocument/hover", "params": "\xff\xfe"}', -32700),  # not UTF-8
        (b"[" * 200_000 + b"]" * 200_000, -32700),  # nested deeper than any parser recurses
        (b'{"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand", "params": {"command": '
         b'"fimLsp.stats", "arguments": [' + b"7" * 5001 + b"]}}", -32700),  # past Python's digit limit
        (b'{"jsonrpc": "2.0", "id": 3, "method": ', -32700),  # cut short
        (b"[1, 2]", -32600),  # JSON, but no message object
    ]
    for i, (body, code) in enumerate(bad, start=1):
        server.send_bytes(body)
        server.wait_for(lambda m, n=i: len(errors_with_null_id(server)) >= n, timeout=30)
        assert errors_with_null_id(server)[-1]["error"]["code"] == code, body[:60]
    # A header line that never ends (no newline within the limit) is dropped too.
    server.proc.stdin.write(b"X" * (2 << 20) + b"\r\n")
    server.proc.stdin.flush()
    server.wait_for(lambda m: len(errors_with_null_id(server)) > len(bad), timeout=30)
    # ...and the server serves on: a real completion, with no error counted.
    server.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1,
                                                            "text": "def f(x):\n    return "}})
    answer = server.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": URI}, "position": {"line": 1, "character": 11}, "context": {"triggerKind": 1}})
    assert "result" in answer and stats(server)["errors"] == 0
    assert stats(server)["completedLoops"] == 1
    server.request("shutdown")
    server.notify("exit")
    code, err = server.finish()
    assert code == 0
    assert not [s for s in CRASH_SIGNS if s in err], err
    assert err.count("answered with a parse error") == 5  # said in the log, never with the text


@pytest.mark.parametrize("mid_completion", [False, True], ids=["idle", "mid-completion"])
def test_ctrl_c_stops_the_server_with_stdin_still_open(tiny_models: Path, tmp_path: Path,
                                                       mid_completion: bool) -> None:
    if mid_completion:
        server = busy_server(tiny_models, tmp_path / "stderr.txt")
    else:
        server = StdioServer(tiny_models, tmp_path / "stderr.txt", FAST)
        server.status("ready")
    t = time.perf_counter()
    server.proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends; stdin stays open
    code, err = server.finish(timeout=30)
    print(f"\nSIGINT ({'mid-completion' if mid_completion else 'idle'}): exited in {time.perf_counter() - t:.1f} s")
    assert code == 128 + signal.SIGINT
    assert not [s for s in CRASH_SIGNS if s in err], err


def test_a_second_ctrl_c_exits_at_once_without_aborting(tiny_models: Path, tmp_path: Path) -> None:
    server = busy_server(tiny_models, tmp_path / "stderr.txt")
    server.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    server.proc.send_signal(signal.SIGINT)
    code, err = server.finish(timeout=30)
    assert code == 128 + signal.SIGINT  # not 134 (SIGABRT: "Fatal Python error")
    assert not [s for s in CRASH_SIGNS if s in err], err


# --- --tcp ----------------------------------------------------------------------------------------

class Connection:
    """A plain socket client with LSP framing."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:  # closed with our message unread: a reset, not a FIN
            return b""

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None once the server has closed the connection."""
        while b"\r\n\r\n" not in self.buf:
            chunk = self._recv()
            if not chunk:
                return None
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))
        while len(self.buf) < length:
            chunk = self._recv()
            if not chunk:
                return None
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return json.loads(body)

    def response(self, msg_id: int) -> dict[str, Any] | None:
        while (msg := self.receive()) is not None:
            if msg.get("id") == msg_id and "method" not in msg:
                return msg
        return None

    def closed_by_server(self) -> bool:
        while self.receive() is not None:
            pass
        return True


def initialize(conn: Connection, options: dict[str, Any]) -> dict[str, Any] | None:
    conn.send({"id": 1, "method": "initialize", "params": {"processId": None, "rootUri": None, "capabilities": {},
                                                          "initializationOptions": options}})
    return conn.response(1)


def start_tcp(tiny: Path, secret_file: Path, stderr: Path, host: str = "127.0.0.1") -> tuple[subprocess.Popen, int]:
    args = ["--ar-model", str(tiny / "ar"), "--dllm-model", str(tiny / "dllm"), "--device", "cpu",
            "--tcp", f"{host}:0", "--tcp-secret-file", str(secret_file)]
    err = stderr.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "fim_lsp", *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", stderr.read_text(errors="replace"))
        if m:
            return proc, int(m.group(1))
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no port announced (exit {proc.poll()}): {stderr.read_text(errors='replace')}")


def test_tcp_serves_only_a_client_that_sends_the_secret(tiny_models: Path, tmp_path: Path) -> None:
    secret_file = tmp_path / "state" / "tcp-secret"  # missing: the server creates it, 0600
    proc, port = start_tcp(tiny_models, secret_file, tmp_path / "stderr.txt")
    try:
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) >= 32

        # No secret, a wrong one, a request before initialize: refused, connection closed, nothing served.
        for options in ({"fimLsp": FAST}, {"fimLspSecret": secret[:-1] + "?", "fimLsp": FAST},
                        {"fimLspSecret": 12345}):
            conn = Connection(port)
            answer = initialize(conn, options)
            assert answer is not None and answer["error"]["code"] == -32600, answer
            assert "fimLspSecret" in answer["error"]["message"] and "result" not in answer
            assert conn.closed_by_server()
        conn = Connection(port)
        conn.send({"id": 7, "method": "workspace/executeCommand",
                   "params": {"command": "fimLsp.stats", "arguments": []}})
        answer = conn.response(7)
        assert answer is not None and "error" in answer and "result" not in answer
        assert conn.closed_by_server()
        conn = Connection(port)
        conn.sock.sendall(b"Content-Length: 5\r\n\r\n\xff\xff\xff\xff\xff")  # not even JSON
        answer = conn.response(None)
        assert answer is not None and answer["error"]["code"] == -32700
        assert conn.closed_by_server()

        # The right secret: served. The secret never reaches the settings (no "unknown key" for it).
        client = Connection(port)
        answer = initialize(client, {"fimLspSecret": secret, "fimLsp": FAST})
        assert answer is not None and "result" in answer, answer
        assert "inlineCompletionProvider" in answer["result"]["capabilities"]
        client.send({"method": "initialized", "params": {}})
        # While that session runs, another connection is closed at once, secret or not.
        other = Connection(port)
        other.send({"id": 1, "method": "initialize", "params": {"processId": None, "capabilities": {},
                                                              "initializationOptions": {"fimLspSecret": secret}}})
        assert other.response(1) is None
        client.send({"id": 2, "method": "workspace/executeCommand",
                     "params": {"command": "fimLsp.stats", "arguments": []}})
        reply = client.response(2)
        assert reply is not None and reply["result"]["settings"]["steps"] == FAST["steps"]
        client.send({"id": 3, "method": "shutdown"})
        assert client.response(3) == {"jsonrpc": "2.0", "id": 3, "result": None}
        client.send({"method": "exit"})
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert secret not in log and "unknown keys" not in log
    assert not [s for s in CRASH_SIGNS if s in log], log


def test_tcp_refuses_other_hosts_and_a_secret_file_others_can_read(tiny_models: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "fim_lsp", "--ar-model", str(tiny_models / "ar"),
            "--dllm-model", str(tiny_models / "dllm"), "--device", "cpu"]
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 40)
    os.chmod(secret_file, 0o600)
    for host in ("0.0.0.0", "example.invalid", "[::]"):
        run = subprocess.run([*base, "--tcp", f"{host}:0", "--tcp-secret-file", str(secret_file)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert run.returncode == 2 and "loopback" in run.stderr, (host, run.stderr)
    os.chmod(secret_file, 0o644)
    run = subprocess.run([*base, "--tcp", "127.0.0.1:0", "--tcp-secret-file", str(secret_file)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 2 and "chmod 600" in run.stderr, run.stderr
    link = tmp_path / "link"
    os.chmod(secret_file, 0o600)
    link.symlink_to(secret_file)
    run = subprocess.run([*base, "--tcp", "127.0.0.1:0", "--tcp-secret-file", str(link)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 2 and "secret file" in run.stderr, run.stderr


def test_tcp_stops_on_ctrl_c(tiny_models: Path, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    proc, port = start_tcp(tiny_models, secret_file, tmp_path / "stderr.txt")
    try:
        client = Connection(port)
        assert "result" in initialize(client, {"fimLspSecret": secret_file.read_text().strip(), "fimLsp": FAST})
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert not [s for s in CRASH_SIGNS if s in err], err
