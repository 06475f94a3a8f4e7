"""The language server: state on one LanguageServer instance, thin feature handlers.

Every handler is wrapped so that a bad request gets a valid empty answer and is logged; the server
itself never goes down over one request."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import Any, Awaitable, Callable, TypeVar

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from ..engine.config import EngineConfig
from ..engine.ensemble import MODEL_FIELDS, Engine
from .cache import CompletionCache
from .hover import candidates_json, candidates_markdown
from .loader import ModelLoader
from .logs import LspLogHandler, set_level, setup_logging
from .protocol import FimProtocol
from .service import CompletionService, Offer, accepted_args
from .settings import ServerSettings, apply_settings
from .stats import Stats
from .worker import ModelWorker

log = logging.getLogger("fim_lsp.server")
VERSION = "0.1.0"
CMD_SHOW, CMD_STATS, CMD_ACCEPTED = "fimLsp.showCandidates", "fimLsp.stats", "fimLsp.accepted"
T = TypeVar("T")


class FimLanguageServer(LanguageServer):
    def __init__(self, config: EngineConfig, settings: ServerSettings, log_level: str = "info") -> None:
        super().__init__("fim-lsp", VERSION, text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
                         protocol_cls=FimProtocol)
        self.settings = settings
        self.engine = Engine(config, notify=lambda msg: log.warning("%s", msg))
        self.cache = CompletionCache(settings.cache_size)
        self.stats = Stats()
        self.last: Offer | None = None
        self.service = CompletionService(self)
        self.loader = ModelLoader(self)
        self.log_handler: LspLogHandler = setup_logging(log_level, self)
        self._worker: ModelWorker | None = None
        self._reported: set[str] = set()

    @property
    def worker(self) -> ModelWorker:
        # Created lazily: it needs the running event loop, which exists only once serving starts.
        if self._worker is None:
            self._worker = ModelWorker(asyncio.get_running_loop())
            self.log_handler.bind(asyncio.get_running_loop())
        return self._worker

    def show_message(self, message: str, kind: types.MessageType = types.MessageType.Info) -> None:
        try:
            self.window_show_message(types.ShowMessageParams(type=kind, message=message))
        except Exception:  # noqa: BLE001
            log.debug("could not show a message", exc_info=True)

    def report_once(self, message: str) -> None:
        """A failure the user must hear about, once per distinct message (the log has every one)."""
        if message not in self._reported:
            self._reported.add(message)
            self.show_message(message, types.MessageType.Error)

    def apply_settings(self, raw: Any, source: str) -> EngineConfig | None:
        """Take new settings; returns the new engine config when it differs from the current one."""
        update = apply_settings(raw, self.settings, self.engine.config)
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
        return update.engine if update.engine != self.engine.config else None


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
        await ls.loader.load(new)
        return
    await ls.worker.submit(lambda _cancel: ls.engine.reconfigure(new)).future
    ls.cache.clear()
    log.info("engine settings changed; models kept")
