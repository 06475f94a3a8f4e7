"""Bytes in, messages out: LSP framing on stdio (or a socket, see tcp.py), with what pygls's own loop
leaves out.

- Input that is not a JSON-RPC message (invalid UTF-8, nesting too deep to parse, a number with
  thousands of digits, a header line without end) gets a -32700 parse error, or a -32600 when it is JSON
  but no message, with a null id (no id can be read from it), and the server reads on.
- stdin is read by a daemon thread with os.read, not by a thread-pool worker on sys.stdin: Ctrl-C then
  stops the server at once (a pool worker blocked in readline kept the interpreter waiting for the next
  input, and a second Ctrl-C aborted it mid-read: "Fatal Python error: _enter_buffered_busy").
- SIGINT and SIGTERM end serving; the caller then stops the model thread and exits with 128 + signal.
  A second signal exits at once.
- sys.stdout is pointed at stderr while serving: a stray print() from any library would corrupt the
  LSP stream."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable

from pygls.io_ import StdoutWriter
from pygls.protocol import JsonRPCProtocol

log = logging.getLogger("fim_lsp.server")
PARSE_ERROR, INVALID_REQUEST = -32700, -32600
HEADER_LIMIT = 1 << 20  # bytes in one header line
MAX_BODY = 256 << 20  # a 20M-character document, JSON-escaped, fits
READ_CHUNK = 1 << 20


class BadInput(Exception):
    """Bytes that are no message; answered with a parse error, then reading goes on."""


async def read_body(reader: asyncio.StreamReader, max_body: int = MAX_BODY) -> bytes | None:
    """One message's body; None at the end of input. Header names are case-insensitive (RFC 7230)
    and headers other than Content-Length are skipped."""
    length: int | None = None
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # longer than HEADER_LIMIT: the stream reader has dropped it
            raise BadInput("header line too long") from None
        if not line:
            return None
        if not line.strip():
            if length is not None:
                break
            continue  # a stray blank line between messages
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            text = value.strip()
            length = int(text) if text.isdigit() and len(text) <= 12 else None
            if length is None:
                raise BadInput("unreadable Content-Length")
    if length > max_body:
        await _skip(reader, length)
        raise BadInput(f"message of {length} bytes is over the {max_body}-byte limit")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None


async def _skip(reader: asyncio.StreamReader, n: int) -> None:
    while n > 0:
        chunk = await reader.read(min(n, READ_CHUNK))
        if not chunk:
            return
        n -= len(chunk)


def reply_error(protocol: JsonRPCProtocol, msg_id: Any, code: int, message: str) -> None:
    protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})


def decode(protocol: JsonRPCProtocol, body: bytes) -> dict[str, Any] | None:
    """The JSON object of one message, or None after answering why it is none. The reason names the
    kind of fault only: a message may hold a user's code, which never goes to the log."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = type(err).__name__ if not isinstance(err, json.JSONDecodeError) else f"invalid JSON at byte {err.pos}"
        if isinstance(err, RecursionError):
            reason = "nested too deeply"
        elif "integer string conversion" in str(err):
            reason = "a number with too many digits"
        log.warning("unreadable message (%s); answered with a parse error", reason)
        reply_error(protocol, None, PARSE_ERROR, f"Parse error: {reason}")
        return None
    if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
        msg_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), (int, str)) else None
        log.warning("a message that is no JSON-RPC 2.0 object; answered with an invalid-request error")
        reply_error(protocol, msg_id, INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message object")
        return None
    return data


def dispatch(protocol: JsonRPCProtocol, data: dict[str, Any]) -> bool:
    """Hand one message to pygls. False once the client said `exit` (pygls raises SystemExit)."""
    try:
        protocol.handle_message(protocol.structure_message(data))
    except SystemExit:
        return False
    except Exception:  # noqa: BLE001 - e.g. a notification whose params do not fit the protocol
        log.warning("could not handle %s", data.get("method") or "a response", exc_info=True)
    return True


async def serve_messages(reader: asyncio.StreamReader, protocol: JsonRPCProtocol,
                         max_body: int = MAX_BODY) -> None:
    """Read and dispatch until the input ends or the client says `exit`."""
    while True:
        try:
            body = await read_body(reader, max_body)
        except BadInput as err:
            log.warning("unreadable input (%s); answered with a parse error", err)
            reply_error(protocol, None, PARSE_ERROR, f"Parse error: {err}")
            continue
        if body is None:
            return
        data = decode(protocol, body)
        if data is not None and not dispatch(protocol, data):
            return


class Signals:
    """SIGINT/SIGTERM while serving: the first ends serving (`stop`), a second exits at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
        self.loop, self.stop = loop, stop
        self.received: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # Windows' event loops: Python's default handling
                pass

    def _on_signal(self, sig: int) -> None:
        if self.received is not None:
            os._exit(128 + sig)
        self.received = sig
        log.info("%s: stopping", signal.Signals(sig).name)
        self.stop()

    @staticmethod
    def hard_exit_after(code: int) -> None:
        """Once the event loop is gone, a signal while the model thread winds down exits at once
        instead of raising KeyboardInterrupt into the join."""
        def now(sig: int, _frame: Any) -> None:
            os._exit(code or 128 + sig)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, now)


def _feed_stdin(fd: int, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
    """Daemon thread: blocking reads on the raw descriptor (no buffered-reader lock to hold at exit)."""
    try:
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except OSError:
                chunk = b""
            if not chunk:
                loop.call_soon_threadsafe(reader.feed_eof)
                return
            loop.call_soon_threadsafe(reader.feed_data, chunk)
    except RuntimeError:
        return  # the event loop is closed: the server is exiting


async def _serve_stdio(protocol: JsonRPCProtocol) -> int | None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=HEADER_LIMIT, loop=loop)
    threading.Thread(target=_feed_stdin, args=(sys.stdin.fileno(), reader, loop), name="fim-lsp-stdin",
                     daemon=True).start()
    serving = asyncio.ensure_future(serve_messages(reader, protocol))
    signals = Signals(loop, serving.cancel)
    try:
        await serving
    except asyncio.CancelledError:
        pass
    return signals.received


def serve_stdio(protocol: JsonRPCProtocol) -> int | None:
    """Serve on stdin/stdout until the input ends, `exit`, or a signal; returns the signal if one
    ended it."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr
    protocol.set_writer(StdoutWriter(out))
    received = asyncio.run(_serve_stdio(protocol))
    Signals.hard_exit_after(128 + received if received else 0)
    return received
