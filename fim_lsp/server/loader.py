"""Model loading in the background, with `$/progress`, `fimLsp/status` and one message per failure."""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from ..engine.config import EngineConfig
from ..engine.loading import ModelLoadError
from ..engine.results import CancelCheck

if TYPE_CHECKING:
    from .server import FimLanguageServer

log = logging.getLogger("fim_lsp.server")
STATUS = "fimLsp/status"


class ModelLoader:
    def __init__(self, ls: "FimLanguageServer") -> None:
        self.ls = ls
        self.state = "loading"
        self.message = "waiting for initialized"
        self._ready = asyncio.Event()  # set once a load attempt has finished (ready or failed)
        self._generation = 0

    async def wait_ready(self, timeout: float) -> bool:
        """True when a load attempt finished in time (models may still be missing if it failed)."""
        if self._ready.is_set():
            return True
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def send_status(self, state: str, message: str, latency_ms: float | None = None) -> None:
        if state != "ready" or message == "models loaded":
            self.state, self.message = state, message
        try:
            self.ls.protocol.notify(STATUS, {"state": state, "message": message,
                                             "models": self.ls.engine.available, "latencyMs": latency_ms})
        except Exception:  # noqa: BLE001 - a closed pipe must not take a request down with it
            log.debug("could not send %s", STATUS, exc_info=True)

    def _progress_supported(self) -> bool:
        window = self.ls.client_capabilities.window
        return bool(window and window.work_done_progress)

    async def load(self, new_config: EngineConfig | None = None) -> None:
        """Load (or reload after a config change) on the worker; the event loop stays free."""
        self._generation += 1
        generation = self._generation
        self._ready.clear()
        names = self._describe(new_config or self.ls.engine.config)
        self.send_status("loading", f"loading {names}")
        log.info("loading %s", names)
        token: str | None = None
        if self._progress_supported():
            token = f"fim-lsp-load-{uuid.uuid4().hex[:8]}"
            try:
                await self.ls.work_done_progress.create_async(token)
                self.ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                    title="fim-lsp: loading models", message=names, cancellable=False))
            except Exception:  # noqa: BLE001 - progress is decoration; loading goes on without it
                log.debug("work done progress unavailable", exc_info=True)
                token = None

        loop = asyncio.get_running_loop()

        def report(message: str) -> None:  # runs on the worker thread: hand over to the event loop
            if token is not None:
                loop.call_soon_threadsafe(self.ls.work_done_progress.report, token,
                                          types.WorkDoneProgressReport(message=message))

        def work(_cancel: CancelCheck) -> list[str]:
            engine = self.ls.engine
            if new_config is not None and not engine.reconfigure(new_config) and engine.loaded:
                return []
            engine.load(on_progress=report)
            return list(engine.load_errors.values())

        failure: str | None = None
        errors: list[str] = []
        try:
            errors = await self.ls.worker.submit(work).future
        except ModelLoadError as err:
            failure = str(err)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory, a broken checkpoint
            failure = f"{type(err).__name__}: {err}"
            log.exception("model loading failed")
        if token is not None:  # every begun progress ends, or the editor shows a spinner forever
            done = "failed" if failure else "loaded " + ", ".join(self.ls.engine.available)
            self.ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=done))
        if generation != self._generation:
            return  # a newer configuration started another load; it reports for itself
        self.ls.cache.clear()  # answers from other models or settings are stale
        for reason in ([failure] if failure else errors):
            self.ls.show_message(f"fim-lsp: {reason}", types.MessageType.Error if failure else types.MessageType.Warning)
        if failure:
            log.error("no model loaded: %s", failure)
            self.send_status("failed", failure)
        else:
            log.info("models ready: %s", ", ".join(self.ls.engine.available))
            self.send_status("ready", "models loaded")
        self._ready.set()

    @staticmethod
    def _describe(cfg: EngineConfig) -> str:
        parts = []
        if cfg.models in ("both", "qwen"):
            parts.append(f"qwen={cfg.ar_model}")
        if cfg.models in ("both", "dllm"):
            parts.append(f"dllm={cfg.dllm_model}")
        return ", ".join(parts) + f" on {cfg.device}"

    def status_dict(self) -> dict[str, Any]:
        return {"state": self.state, "message": self.message, "models": self.ls.engine.available}
