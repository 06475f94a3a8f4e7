"""Test helper: the real server as a subprocess, driven with hand-written JSON-RPC framing over its
stdio, for what a library client hides: closing stdin mid-request, `exit` without `shutdown`, the exit
status and everything the server prints to stderr."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 180


class StdioServer:
    def __init__(self, tiny: Path, stderr: Path, options: dict[str, Any], raw_options: str | None = None,
                 cli: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        """`raw_options`: initializationOptions as JSON text, sent as written (1e400, say)."""
        args = ["--ar-model", str(tiny / "ar"), "--dllm-model", str(tiny / "dllm"), "--device", "cpu", *(cli or [])]
        self._stderr = stderr.open("wb")
        self.stderr_path = stderr
        self.proc = subprocess.Popen([sys.executable, "-m", "fim_lsp", *args], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self.messages: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._ids = itertools.count(1)
        threading.Thread(target=self._read, daemon=True).start()
        init = {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": options}
        # Generous: on a shared 2-core machine, importing torch in two servers at once takes a minute.
        if raw_options is None:
            self.init = self.request("initialize", init, timeout=STARTUP_S)
        else:
            msg_id = next(self._ids)
            self.send_bytes(json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "initialize", "params": init})
                            .replace('"initializationOptions": {}', f'"initializationOptions": {raw_options}')
                            .encode())
            self.init = self.response(msg_id, timeout=STARTUP_S)
        self.notify("initialized", {})

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = 0
            while (line := out.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if not line:
                return
            body = json.loads(out.read(length))
            with self._changed:
                self.messages.append(body)
                self._changed.notify_all()

    def send(self, message: dict[str, Any]) -> None:
        self.send_bytes(json.dumps({"jsonrpc": "2.0", **message}).encode())

    def send_bytes(self, body: bytes) -> None:
        """One framed message whose body is exactly `body`, valid JSON or not."""
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"method": method, "params": params})

    def send_request(self, method: str, params: Any = None) -> int:
        msg_id = next(self._ids)
        self.send({"id": msg_id, "method": method, "params": params})
        return msg_id

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((m for m in self.messages if match(m)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no such message (exit status {self.proc.poll()}); "
                                       f"last: {self.messages[-3:]}")
                self._changed.wait(min(left, 0.5))

    def response(self, msg_id: int, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(lambda m: m.get("id") == msg_id and "method" not in m, timeout)

    def request(self, method: str, params: Any = None, timeout: float = 60) -> dict[str, Any]:
        return self.response(self.send_request(method, params), timeout)

    def status(self, state: str) -> dict[str, Any]:
        return self.wait_for(lambda m: m.get("method") == "fimLsp/status" and m["params"]["state"] == state,
                             timeout=STARTUP_S)

    def close_stdin(self) -> None:
        self.proc.stdin.close()

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Exit status and stderr, once the process has ended on its own."""
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._stderr.close()
        return code, self.stderr_path.read_text(errors="replace")
