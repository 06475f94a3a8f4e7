"""pygls protocol with one fix: a request whose params do not match the LSP schema gets an
InvalidParams error response. Stock pygls logs the failure and never answers, which leaves the
client waiting forever."""
from __future__ import annotations

import logging
from typing import Any

from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol

log = logging.getLogger("fim_lsp.server")


class _Rejected:
    """Stands in for a request already answered with an error."""

    jsonrpc = "rejected"


REJECTED = _Rejected()


class FimProtocol(LanguageServerProtocol):
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
        super().handle_message(message)
