"""pygls protocol with the LSP rules stock pygls leaves out:

- a request whose params do not match the LSP schema gets an InvalidParams error response (stock
  pygls logs the failure and never answers, which leaves the client waiting forever);
- a request after `shutdown` gets an InvalidRequest error (stock pygls drops it: the same wait);
- after `exit` nothing is written (stdout is closed; a late answer would print a traceback), nor once
  the client has closed the connection."""
from __future__ import annotations

import logging
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest
from pygls.protocol import LanguageServerProtocol

log = logging.getLogger("fim_lsp.server")


class _Rejected:
    """Stands in for a request already answered with an error."""

    jsonrpc = "rejected"


REJECTED = _Rejected()


class FimProtocol(LanguageServerProtocol):
    closed = False  # set by the exit handler, before pygls closes stdout

    @property
    def shut_down(self) -> bool:
        return bool(self._shutdown)

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as err:
            if not ("id" in data and "method" in data):
                raise
            method = data.get("method")
            log.warning("rejected %s request %r: params do not match the protocol", method, data.get("id"))
            error = JsonRpcInvalidParams(f"invalid params for {method}") if not err.message else err
            self._send_response(data["id"], error=error.to_response_error())
            return REJECTED

    def handle_message(self, message: Any) -> None:
        if message is REJECTED:
            return
        method = getattr(message, "method", None)
        if self._shutdown and method not in (None, types.EXIT) and hasattr(message, "id"):
            error = JsonRpcInvalidRequest(f"{method} after shutdown: the server only accepts exit now")
            self._send_response(message.id, error=error.to_response_error())
            return
        super().handle_message(message)

    def _send_data(self, data: Any) -> None:
        if self.closed:
            return
        try:
            super()._send_data(data)
        except (BrokenPipeError, ConnectionError):
            # the client is gone; its end of input ends serving, and nothing more can reach it
            self.closed = True
            log.debug("the client closed the connection")
