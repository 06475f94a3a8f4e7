"""`--tcp`: the server on a loopback socket, for debugging, that only the holder of a secret may use.

The server reads project text and hands it back (hover, fimLsp.showCandidates), so a port any local
user could reach would let them read your files. Hence:
- the host must be a loopback address (a name must resolve to loopback addresses only);
- the secret is read from a file that only its owner can read (mode 0600, a regular file, not a
  link); when the file does not exist the server creates it with a fresh random secret;
- the first message on a connection must be `initialize` with `initializationOptions.fimLspSecret`
  equal to that secret (compared in constant time). Anything else gets an error and the connection is
  closed, before any handler runs; the secret is removed from the options before the server sees them;
- one client at a time: a connection made while a session runs is closed at once. When the session
  ends (the client leaves or sends `exit`), the server ends, as it does on stdio."""
from __future__ import annotations

import asyncio
import hmac
import json
import ipaddress
import logging
import os
import secrets
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from pygls.protocol import JsonRPCProtocol

from .transport import (HEADER_LIMIT, INVALID_REQUEST, BadInput, Signals, decode, dispatch, read_body,
                        serve_messages)

log = logging.getLogger("fim_lsp.server")
SECRET_KEY = "fimLspSecret"  # in initializationOptions
AUTH_TIMEOUT_S = 10.0
AUTH_MAX_BODY = 1 << 20  # an initialize message is small; a stranger gets no more than this read


def default_secret_file() -> Path:
    from platformdirs import user_state_dir

    return Path(user_state_dir("fim-lsp", appauthor=False)) / "tcp-secret"


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def read_secret(path: Path) -> str:
    """The secret in `path`, created (0600, random) when the file does not exist. ValueError when the
    file is not a regular file owned by this user that only this user can read."""
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass  # another server made it meanwhile: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise ValueError(f"cannot read the secret file {path}: {err.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ValueError(f"the secret file {path} must be a regular file that you own and only you can "
                             f"read (mode {oct(stat.S_IMODE(st.st_mode))}; fix: chmod 600 {path})")
        secret = f.read(4096).strip()
    if len(secret) < 16:
        raise ValueError(f"the secret in {path} is shorter than 16 characters")
    return secret


def authenticate(data: dict[str, Any], secret: str) -> bool:
    """True when `data` is an initialize request that carries the secret; the secret is taken out."""
    params = data.get("params")
    options = params.get("initializationOptions") if isinstance(params, dict) else None
    given = options.pop(SECRET_KEY, None) if isinstance(options, dict) else None
    return (data.get("method") == "initialize" and isinstance(given, str)
            and hmac.compare_digest(given.encode(), secret.encode()))


class TcpServer:
    def __init__(self, protocol: JsonRPCProtocol, secret: str) -> None:
        self.protocol, self.secret = protocol, secret
        self.session = False
        self.done: asyncio.Future[None] | None = None
        self.writers: set[asyncio.StreamWriter] = set()  # open connections, closed when serving ends

    async def on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await self._connection(reader, writer)
        except (asyncio.CancelledError, ConnectionError):
            pass  # serving ended (a signal) while this connection was open, or the client reset it
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self.session:
            log.warning("refused a second connection from %s: one client at a time", peer)
            return
        first = await self._first_message(reader, writer)
        if first is None or self.session:
            log.warning("refused a connection from %s: its first message was no initialize with the secret", peer)
            return
        self.session = True
        log.info("client at %s authenticated", peer)
        self.protocol.set_writer(writer)  # a StreamWriter has the write() and close() pygls calls
        try:
            if dispatch(self.protocol, first):
                await serve_messages(reader, self.protocol)
        finally:
            if self.done is not None and not self.done.done():
                self.done.set_result(None)

    async def _first_message(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any] | None:
        refusal = f"fim-lsp --tcp: the first message must be initialize with initializationOptions.{SECRET_KEY}"
        sink = _Sink(writer)
        try:
            body = await asyncio.wait_for(read_body(reader, AUTH_MAX_BODY), AUTH_TIMEOUT_S)
        except (BadInput, asyncio.TimeoutError, ConnectionError):
            body = None
        data = decode(sink, body) if body else None  # type: ignore[arg-type] - it only sends
        if data is not None and authenticate(data, self.secret):
            return data
        if body is None or data is not None:  # else decode has answered already
            msg_id = data.get("id") if data is not None and isinstance(data.get("id"), (int, str)) else None
            sink._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": INVALID_REQUEST, "message": refusal}})
        return None


class _Sink:
    """Writes a JSON-RPC message to one connection that is not (yet) the session's."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def _send_data(self, data: Any) -> None:
        body = json.dumps(data).encode()
        try:
            self.writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        except (ConnectionError, RuntimeError):
            pass


async def _serve(protocol: JsonRPCProtocol, host: str, port: int, secret: str, secret_file: Path) -> int | None:
    tcp = TcpServer(protocol, secret)
    loop = asyncio.get_running_loop()
    tcp.done = loop.create_future()
    server = await asyncio.start_server(tcp.on_connection, host, port, limit=HEADER_LIMIT)
    signals = Signals(loop, lambda: tcp.done.done() or tcp.done.set_result(None))
    where = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
    # stderr, not only the log: whoever started a debugging session needs the port and the file
    print(f"fim-lsp: listening on {where}; send initializationOptions.{SECRET_KEY} from {secret_file}",
          file=sys.stderr, flush=True)
    async with server:
        await tcp.done
        for writer in list(tcp.writers):  # newer Pythons wait for open connections when the server closes
            writer.close()
    return signals.received


def serve_tcp(protocol: JsonRPCProtocol, host: str, port: int, secret_file: Path) -> int | None:
    """Serve one authenticated client on a loopback socket; returns the signal if one ended it.
    ValueError (before anything listens) for a host that is not loopback or a bad secret file."""
    if not is_loopback(host):
        raise ValueError(f"--tcp binds loopback addresses only (127.0.0.1, ::1, localhost), not {host!r}")
    secret = read_secret(secret_file)
    received = asyncio.run(_serve(protocol, host, port, secret, secret_file))
    Signals.hard_exit_after(128 + received if received else 0)
    return received
