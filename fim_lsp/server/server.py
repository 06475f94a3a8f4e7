"""The language server: state on one LanguageServer instance, thin feature handlers.

Every handler is wrapped so that a bad request gets a valid empty answer and is logged; the server
itself never goes down over one request."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from ..context import ContextSettings, IndexProgress
from ..engine.config import EngineConfig
from ..engine.ensemble import MODEL_FIELDS, Engine
from ..engine.requests import ProjectContext, PromptBudget
from .cache import CompletionCache
from .loader import ModelLoader
from .logs import LspLogHandler, quiet_progress_bars, set_level, setup_logging
from .project import Project
from .protocol import FimProtocol
from .service import CompletionService, Document
from .settings import ServerSettings, apply_settings
from .stats import Stats
from .worker import ModelWorker

log = logging.getLogger("fim_lsp.server")
VERSION = "0.1.0"
CMD_SHOW, CMD_STATS, CMD_ACCEPTED = "fimLsp.showCandidates", "fimLsp.stats", "fimLsp.accepted"
CMD_PROMPT = "fimLsp.showPrompt"
CLOSE_TIMEOUT_S = 10.0  # a model loop stops within one step; only a load in progress takes longer
T = TypeVar("T")


class FimLanguageServer(LanguageServer):
    protocol: FimProtocol

    def __init__(self, config: EngineConfig, settings: ServerSettings, log_level: str = "info") -> None:
        super().__init__("fim-lsp", VERSION, text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
                         protocol_cls=FimProtocol)
        self.settings = settings
        self.context_settings = ContextSettings()
        self.project = Project(self.context_settings)
        self._texts: dict[str, str] = {}  # each open document's last text seen (the same string pygls holds)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.engine = Engine(config, notify=self._engine_notice)
        self.cache = CompletionCache(settings.cache_size)
        self.stats = Stats()
        self.worker = ModelWorker()
        self.loader = ModelLoader(self.engine, self.worker, self.notify, forget=lambda: self.service.forget())
        self.service = CompletionService(self.engine, self.cache, self.stats, self.worker,
                                         self.loader.wait_ready, self.loader.served, self.project_context)
        self.log_handler: LspLogHandler = setup_logging(log_level, self)
        quiet_progress_bars()
        self.exit_code = 0  # 1 when the client sends `exit` without `shutdown` first (LSP rule)
        self._reported: set[str] = set()

    def _engine_notice(self, message: str) -> None:
        """The engine's own messages (a model that did not load, a fallback to the eager path), from
        the model thread. During a load the loader shows them with its outcome; later, shown at once."""
        log.warning("%s", message)
        loop = self.worker.loop
        if loop is not None and self.loader.state == "ready":
            try:
                loop.call_soon_threadsafe(self.report_once, f"fim-lsp: {message}")
            except RuntimeError:
                pass  # the event loop is closed: the server is exiting

    def notify(self, method: str, params: Any) -> None:
        try:
            self.protocol.notify(method, params)
        except Exception:  # noqa: BLE001 - a closed pipe must not take a request down with it
            log.debug("could not send %s", method, exc_info=True)

    def show_message(self, message: str, kind: types.MessageType = types.MessageType.Info) -> None:
        self.notify(types.WINDOW_SHOW_MESSAGE, types.ShowMessageParams(type=kind, message=message))

    def report_once(self, message: str) -> None:
        """A failure the user must hear about, once per distinct message (the log has every one)."""
        if message not in self._reported:
            self._reported.add(message)
            self.show_message(message, types.MessageType.Error)

    def document(self, uri: str) -> Document | None:
        doc = self.workspace.text_documents.get(uri)
        if doc is None:
            return None
        return Document(doc.source, str(self.workspace.position_encoding or "utf-16"))

    def apply_settings(self, raw: Any, source: str) -> EngineConfig | None:
        """Take new settings; returns the new engine config when it differs from the current one."""
        update = apply_settings(raw, self.settings, self.engine.config, self.context_settings)
        for error in update.errors:
            log.warning("%s: %s (keeping the old value)", source, error)
            self.show_message(f"fim-lsp: bad setting {error}; keeping the old value", types.MessageType.Error)
        if update.unknown:
            log.info("%s: ignoring unknown keys %s", source, ", ".join(update.unknown))
        old = self.settings
        self.settings = update.server
        if update.server.cache_size != old.cache_size:
            self.cache.resize(update.server.cache_size)
        if update.server.log_level != old.log_level:
            set_level(update.server.log_level)
        if any(getattr(old, f.name) != getattr(update.server, f.name)
               for f in dataclasses.fields(ServerSettings) if f.name in ("prefix_lines", "suffix_lines",
                                                                       "max_prefix_tokens", "max_suffix_tokens",
                                                                       "multiline")):
            self.cache.clear()
        if update.context != self.context_settings:
            self.context_settings = update.context
            self.cache.clear()  # a cached answer was made with the old context
            if self.project.configure(update.context) and self.initialized:
                self.start_indexing()
        return update.engine if update.engine != self.engine.config else None

    # -- the workspace -------------------------------------------------------------------------

    initialized = False  # set when the client sends `initialized`: the index starts then

    def workspace_roots(self) -> list[Path]:
        """The workspace folders as local paths (the root URI when the client sent no folders)."""
        ws = self.workspace
        uris = [f.uri for f in ws.folders.values()] or ([ws.root_uri] if ws.root_uri else [])
        paths = [to_fs_path(u) for u in uris]
        return [Path(p) for p in paths if p]

    def update_roots(self) -> None:
        if self.project.set_roots(self.workspace_roots()):
            self.cache.clear()
            if self.initialized:
                self.start_indexing()

    def start_indexing(self) -> None:
        """Build the definition index in the background, shown with `$/progress` where the client has it."""
        task = asyncio.get_running_loop().create_task(self._index_with_progress())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _index_with_progress(self) -> None:
        index = self.project.index
        if index is None or not (self.context_settings.project_context and self.context_settings.context_definitions):
            return
        roots = ", ".join(r.name for r in self.project.roots)
        token = await self.begin_progress("fim-lsp: indexing definitions", roots, "index")
        loop = asyncio.get_running_loop()

        def report(p: IndexProgress) -> None:  # on the index's thread
            loop.call_soon_threadsafe(self._index_progress, token, p)

        if not self.project.start_index(report) and token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="nothing to index"))

    def _index_progress(self, token: str | None, p: IndexProgress) -> None:
        stopped = f"; stopped at {p.stopped_by}" if p.stopped_by else ""
        message = f"{p.files_done}/{p.files_total} files, {p.definitions} definitions{stopped}"
        if p.finished:
            log.info("index: %s", message)
            self.cache.clear()  # answers made while it built lack definitions it holds now
        if token is None:
            return
        if p.finished:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
        else:
            pct = int(100 * p.files_done / p.files_total) if p.files_total else 0
            self.work_done_progress.report(token, types.WorkDoneProgressReport(message=message, percentage=pct))

    def document_path(self, uri: str) -> Path | None:
        """The local file behind a document; None for an untitled buffer or another scheme."""
        if not uri.startswith("file:"):
            return None
        path = to_fs_path(uri)
        return Path(path) if path else None

    def open_documents(self) -> dict[Path, str]:
        out = {}
        for uri, doc in list(self.workspace.text_documents.items()):
            path = self.document_path(uri)
            if path is not None:
                out[path] = doc.source
        return out

    def document_opened(self, uri: str) -> None:
        doc = self.workspace.text_documents.get(uri)
        if doc is not None:
            self._texts[uri] = doc.source

    def document_changed(self, uri: str, changes: list[Any]) -> None:
        """Record the edited ranges (pygls has already applied `changes`)."""
        doc = self.workspace.text_documents.get(uri)
        old = self._texts.get(uri)
        if doc is None:
            return
        self._texts[uri] = doc.source
        path = self.document_path(uri)
        if path is None:
            return
        for change in changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                self.project.edited(path, change.range.start.line, change.range.end.line, change.text)
            elif old is not None:
                self.project.edited_whole(path, old, change.text)
                old = change.text
        self._context_moved(uri)

    def document_closed(self, uri: str) -> None:
        self._texts.pop(uri, None)
        path = self.document_path(uri)
        if path is not None:
            self.project.closed(path)
            self._context_moved(uri)

    def file_changed(self, uri: str, deleted: bool = False) -> None:
        path = self.document_path(uri)
        if path is not None:
            self.project.changed_on_disk(path, deleted)
            self._context_moved(uri)

    def _context_moved(self, uri: str) -> None:
        """`uri` was edited, closed, saved or changed on disk: what the other documents' completions saw
        of it is out of date, so their cached answers go (a completion in a file that calls a function
        just written elsewhere must see it). The document's own answers stay, for typing through."""
        if self.context_settings.project_context:
            self.cache.drop_others(uri)

    async def project_context(self, uri: str, text: str, line: int,
                              settings: ServerSettings) -> tuple[ProjectContext | None, PromptBudget]:
        """A request's project context, gathered off the event loop within its deadline, and its budget."""
        budget = self.context_settings.budget(settings.max_prefix_tokens, settings.max_suffix_tokens)
        path = self.document_path(uri)
        if path is None or not self.context_settings.project_context:
            return None, budget
        window = (max(0, line - settings.prefix_lines), line + settings.suffix_lines + 1)
        docs = self.open_documents()
        try:
            context = await self.project.gather_off_loop(path, text, line, window, docs)
        except Exception:  # noqa: BLE001 - a context bug must not cost the completion: local window alone
            log.exception("gathering project context failed; this completion sees the local window alone")
            return None, budget
        return context, budget

    async def begin_progress(self, title: str, message: str, kind: str) -> str | None:
        """A `$/progress` token, begun; None when the client has no work-done progress."""
        window = self.client_capabilities.window
        if not (window and window.work_done_progress):
            return None
        token = f"fim-lsp-{kind}-{uuid.uuid4().hex[:8]}"
        try:
            await self.work_done_progress.create_async(token)
            self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, message=message,
                                                                             cancellable=False))
        except Exception:  # noqa: BLE001 - progress is decoration; the work goes on without it
            log.debug("work done progress unavailable", exc_info=True)
            return None
        return token

    async def load_models(self, new: EngineConfig | None = None) -> None:
        """Load on the worker, with `$/progress` when the client supports it."""
        token = await self.begin_progress("fim-lsp: loading models", self.loader.describe(new or self.engine.config),
                                          "load")

        def report(message: str) -> None:
            if token is not None:
                self.work_done_progress.report(token, types.WorkDoneProgressReport(message=message))

        outcome = await self.loader.load(new, report)
        if token is not None:  # every begun progress ends, or the editor shows a spinner forever
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=outcome))

    def close(self) -> int:
        """After serving ends (exit, or stdin closed): stop the model thread before the interpreter
        exits, so no torch loop is torn down mid-step. Returns the process exit code."""
        self.project.close()
        if not self.worker.close(CLOSE_TIMEOUT_S):
            log.warning("the model thread did not stop in %.0f s; exiting without waiting", CLOSE_TIMEOUT_S)
            logging.shutdown()
            os._exit(self.exit_code)  # skips the interpreter teardown that would abort under torch
        return self.exit_code


def guarded(default: Callable[[], T]) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Catch everything a handler raises: log it, count it, answer `default()`."""
    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def inner(ls: FimLanguageServer, *args: Any) -> T:
            try:
                return await fn(ls, *args)
            except asyncio.CancelledError:
                return default()
            except Exception as err:  # noqa: BLE001 - one bad request must not break the session
                ls.stats.errors += 1
                log.exception("%s failed", fn.__name__)
                ls.report_once(f"fim-lsp: {fn.__name__} failed: {err}")  # never fail silently
                return default()
        return inner
    return wrap


async def reconfigure_engine(ls: FimLanguageServer, new: EngineConfig) -> None:
    if any(getattr(new, f) != getattr(ls.engine.config, f) for f in MODEL_FIELDS) or not ls.engine.loaded:
        await ls.load_models(new)
        return
    ls.worker.cancel_completions()  # they run with the old settings; the new ones apply at once
    await ls.worker.submit(lambda _cancel: ls.engine.reconfigure(new)).future
    ls.service.forget()
    log.info("engine settings changed; models kept")
