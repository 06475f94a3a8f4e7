"""Logging: a file under the platformdirs user log dir, stderr, and `window/logMessage`.

stdout is the LSP channel, so nothing here may ever write to it."""
from __future__ import annotations

import asyncio
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from concurrent_log_handler import ConcurrentRotatingFileHandler
from lsprotocol import types

LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
LSP_TYPES = {logging.ERROR: types.MessageType.Error, logging.WARNING: types.MessageType.Warning,
             logging.INFO: types.MessageType.Info, logging.DEBUG: types.MessageType.Log}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file() -> Path:
    from platformdirs import user_log_dir

    return Path(user_log_dir("fim-lsp", appauthor=False)) / "fim-lsp.log"


class LspLogHandler(logging.Handler):
    """Forwards `fim_lsp.*` records to the client. Records from the worker thread hop onto the event
    loop, because the protocol's writer is not thread-safe."""

    def __init__(self, ls: Any) -> None:
        super().__init__()
        self.ls = ls
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.loop_thread = loop, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if self.loop is None or self.ls.protocol.writer is None:
            return
        kind = LSP_TYPES.get(record.levelno, types.MessageType.Log)
        params = types.LogMessageParams(type=kind, message=self.format(record))
        try:
            if threading.get_ident() == self.loop_thread:
                self.ls.window_log_message(params)
            elif not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.ls.window_log_message, params)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            pass


class SharedLogFile(ConcurrentRotatingFileHandler):
    """The log file, shared by every server of this user: a lock file serialises the writers and the
    rotation, and a writer whose file was rotated by another process reopens the new one (with the
    stdlib's RotatingFileHandler one server kept writing into `.log.1`). A write that fails (disk full)
    is said once on stderr, not with a traceback per record."""

    failed = False  # the last write failed, and stderr has said so
    _ok = True

    def handleError(self, record: logging.LogRecord) -> None:
        self._ok = False
        if not self.failed:
            self.failed = True
            print(f"fim-lsp: cannot write the log file {self.baseFilename} ({sys.exc_info()[1]}); "
                  f"warnings still go to stderr", file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self._ok = True
        super().emit(record)  # calls handleError when the write fails
        if self._ok:
            self.failed = False  # writing works again: a later failure is news


def setup_logging(level: str, ls: Any) -> LspLogHandler:
    logger = logging.getLogger("fim_lsp")
    logger.setLevel(LEVELS.get(level, logging.INFO))
    logger.propagate = False
    fmt = logging.Formatter(FORMAT)
    try:
        path = log_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = SharedLogFile(path, maxBytes=5_000_000, backupCount=2, encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    except OSError as err:  # a read-only home must not stop the server
        print(f"fim-lsp: cannot write the log file: {err}", file=sys.stderr)
    err_handler = logging.StreamHandler(sys.stderr)
    err_handler.setFormatter(fmt)
    err_handler.setLevel(logging.WARNING)
    logger.addHandler(err_handler)
    lsp = LspLogHandler(ls)
    lsp.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(lsp)
    # pygls logs every message at debug; keep it to warnings so the file stays readable.
    logging.getLogger("pygls").setLevel(logging.WARNING)
    return lsp


def set_level(level: str) -> None:
    logging.getLogger("fim_lsp").setLevel(LEVELS.get(level, logging.INFO))


def quiet_progress_bars() -> None:
    """No tqdm bars on stderr: editors log a server's stderr as errors (Neovim's lsp.log has an [ERROR]
    line per bar), and the server reports loading through $/progress and fimLsp/status instead."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()
