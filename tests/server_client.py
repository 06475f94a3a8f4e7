"""Test helper: start the real server as a subprocess over stdio and drive it with pytest-lsp's client."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

from lsprotocol import types
from pytest_lsp.client import LanguageClient, make_test_lsp_client

ROOT = Path(__file__).resolve().parents[1]
# Small loops keep the ordinary tests fast on a 2-core CPU.
FAST = {"profile": "exact", "steps": 4, "maxNewTokens": 8, "dllmLengths": [4]}  # exact: tests count steps


def capabilities(inline: bool = True, progress: bool = True,
                 encodings: list[str] | None = None) -> types.ClientCapabilities:
    """Inline completion is declared by hand: pytest-lsp's bundled client snapshots predate it."""
    return types.ClientCapabilities(
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities() if inline else None,
            hover=types.HoverClientCapabilities(content_format=[types.MarkupKind.Markdown]),
            completion=types.CompletionClientCapabilities(completion_item=types.ClientCompletionItemOptions(
                documentation_format=[types.MarkupKind.Markdown]))),
        window=types.WindowClientCapabilities(work_done_progress=progress),
        general=types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None)


def delta(after: dict[str, Any], before: dict[str, Any], key: str) -> int:
    """How much a `fimLsp.stats` counter grew."""
    return after[key] - before[key]


class Session:
    def __init__(self, client: LanguageClient) -> None:
        self.client = client
        self.statuses: list[dict[str, Any]] = []
        self.versions: dict[str, int] = {}
        self.init: types.InitializeResult | None = None
        self.registrations: list[types.Registration] = []  # client/registerCapability, as received

    async def wait_state(self, *states: str, timeout: float = 60, since: int = 0) -> dict[str, Any]:
        """The latest load's status once its state is in `states` (statuses from index `since` on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in reversed(self.statuses[since:]):
                if status["state"] in ("ready", "failed") and status["message"] in ("served", "served from cache"):
                    continue
                if status["state"] in states:
                    return status
                break
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no status in {states}; got {self.statuses[-3:]}")

    def open(self, uri: str, text: str) -> None:
        self.versions[uri] = 1
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))

    def replace(self, uri: str, text: str) -> None:
        self.versions[uri] += 1
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))

    def inline_params(self, uri: str, line: int, character: int, invoked: bool = False) -> types.InlineCompletionParams:
        kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
        return types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=kind))

    async def inline(self, uri: str, line: int, character: int, invoked: bool = False) -> list[types.InlineCompletionItem]:
        result = await self.client.text_document_inline_completion_async(self.inline_params(uri, line, character, invoked))
        if result is None:
            return []
        return list(result.items if isinstance(result, types.InlineCompletionList) else result)

    async def raw_request(self, method: str, params: Any) -> Any:
        """Send params exactly as given (e.g. malformed), bypassing the client's typed serializer."""
        msg_id = f"raw-{time.monotonic_ns()}"
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.client.protocol._request_futures[msg_id] = future
        self.client.protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return await asyncio.wrap_future(future)

    async def command(self, name: str, *arguments: Any) -> Any:
        return await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=name, arguments=list(arguments)))

    async def stats(self) -> dict[str, Any]:
        return await self.command("fimLsp.stats")

    def configure(self, **settings: Any) -> None:
        self.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"fimLsp": settings}))


@contextlib.asynccontextmanager
async def start_server(tiny: Path, options: dict[str, Any] | None = None, cli: list[str] | None = None,
                       caps: types.ClientCapabilities | None = None, wait: bool = True,
                       launcher: list[str] | None = None, folders: list[Path] | None = None,
                       root: Path | None = None) -> AsyncIterator[Session]:
    """launcher: what python runs instead of `-m fim_lsp` (tests/faulty_server.py), its arguments after;
    folders: the workspace folders the client opens; root: the rootUri it sends (older clients send
    that alone)."""
    client = make_test_lsp_client()
    session = Session(client)

    @client.feature("fimLsp/status")
    def on_status(params: Any) -> None:
        session.statuses.append(params if isinstance(params, dict) else params._asdict())

    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def on_register(params: types.RegistrationParams) -> None:
        session.registrations.extend(params.registrations)

    args = ["--ar-model", str(tiny / "ar"), "--dllm-model", str(tiny / "dllm"), "--device", "cpu", *(cli or [])]
    await client.start_io(sys.executable, *(launcher or ["-m", "fim_lsp"]), *args, cwd=str(ROOT))
    try:
        session.init = await client.initialize_session(types.InitializeParams(
            capabilities=caps or capabilities(), initialization_options={**FAST, **(options or {})},
            workspace_folders=[types.WorkspaceFolder(uri=f.as_uri(), name=f.name) for f in folders or []] or None,
            root_uri=root.as_uri() if root is not None else None))
        if wait:
            await session.wait_state("ready", "failed")
        yield session
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), 10)
        with contextlib.suppress(Exception):
            await client.stop()
