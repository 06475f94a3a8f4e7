"""Model loading in the background, with `fimLsp/status` and one message per failure.

The loader gets the engine, the worker and callbacks, never the server. A reload that fails, or that
loses a model the previous settings served, puts the previous models back, so a bad setting never
leaves the editor without completions. A load cancels the completions ahead of it on the model thread
rather than wait for them, and while it runs the status says "loading", never "ready"."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from lsprotocol import types

from ..engine.config import EngineConfig
from ..engine.ensemble import Engine
from ..engine.loading import ModelLoadError
from ..engine.results import CancelCheck
from .hub import offline_unless_reachable
from .worker import ModelWorker

log = logging.getLogger("fim_lsp.server")
STATUS = "fimLsp/status"
Notify = Callable[[str, Any], None]  # (method, params): a notification to the client


class ModelLoader:
    def __init__(self, engine: Engine, worker: ModelWorker, notify: Notify, forget: Callable[[], None]) -> None:
        self.engine, self.worker, self.notify = engine, worker, notify
        self.forget = forget  # drops answers and candidates made by the models that are going away
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
        if state != "ready" or not message.startswith("served"):
            self.state, self.message = state, message
        self.notify(STATUS, {"state": state, "message": message, "models": self.engine.available,
                             "latencyMs": latency_ms})

    def served(self, latency_ms: float, from_cache: bool) -> None:
        if self.state != "ready":
            return  # an answer from the cache during a load does not make the models ready
        self.send_status("ready", "served" + (" from cache" if from_cache else ""), latency_ms)

    def _show(self, message: str, kind: types.MessageType) -> None:
        self.notify(types.WINDOW_SHOW_MESSAGE, types.ShowMessageParams(type=kind, message=f"fim-lsp: {message}"))

    async def load(self, new_config: EngineConfig | None = None,
                   report: Callable[[str], None] | None = None) -> str:
        """Load (or reload after a config change) on the worker; the event loop stays free. `report`
        gets progress lines on the event loop. Returns a one-line outcome for the progress end."""
        self._generation += 1
        generation = self._generation
        self._ready.clear()
        names = self.describe(new_config or self.engine.config)
        self.send_status("loading", f"loading {names}")
        log.info("loading %s", names)
        loop = asyncio.get_running_loop()
        engine = self.engine
        previous = engine.config if new_config is not None and engine.available else None
        served_before = set(engine.available)

        def progress(message: str) -> None:  # runs on the worker thread: hand over to the event loop
            if report is not None:
                loop.call_soon_threadsafe(report, message)

        def messages() -> list[str]:  # models that did not load; static paths that fell back to eager
            return [*engine.load_errors.values(), *engine.fallbacks.values()]

        def work(_cancel: CancelCheck) -> tuple[list[str], str | None]:
            try:
                with offline_unless_reachable(new_config or engine.config):
                    if new_config is None or engine.reconfigure(new_config) or not engine.loaded:
                        engine.load(on_progress=progress)
                wanted = {"both": {"qwen", "dllm"}}.get(engine.config.models, {engine.config.models})
                lost = [engine.load_errors.get(role, f"the {name} model did not load")
                        for role, name in (("ar", "qwen"), ("dllm", "dllm"))
                        if name in served_before & wanted and name not in engine.available]
                if previous is not None and lost:
                    raise ModelLoadError("; ".join(lost))
                return messages(), None
            except Exception as err:  # noqa: BLE001 - reported below, with the old models back
                if previous is None:
                    raise
                log.warning("reload failed (%s); loading the previous models again", err)
                engine.reconfigure(previous)
                with offline_unless_reachable(previous):
                    engine.load(on_progress=progress)
                return messages(), _describe_error(err)

        self.worker.cancel_completions()  # a completion for the old settings must not hold the load up

        failure = kept = None
        errors: list[str] = []
        try:
            errors, kept = await self.worker.submit(work).future
        except Exception as err:  # noqa: BLE001 - e.g. out of memory, a broken checkpoint
            failure = _describe_error(err)
            if not isinstance(err, ModelLoadError):
                log.exception("model loading failed")
        if generation != self._generation:
            return "superseded"  # a newer configuration started another load; it reports for itself
        self.forget()  # answers from other models or settings are stale
        if kept is not None:
            self._show(f"the new settings failed to load, so the previous models still serve: {kept}",
                       types.MessageType.Error)
        for reason in ([failure] if failure else errors):
            self._show(reason, types.MessageType.Error if failure else types.MessageType.Warning)
        self._ready.set()
        if failure:
            log.error("no model loaded: %s", failure)
            self.send_status("failed", failure)
            return "failed"
        log.info("models ready: %s", ", ".join(engine.available))
        self.send_status("ready", "models loaded" if kept is None else f"reload failed, kept {self.describe(engine.config)}")
        return "loaded " + ", ".join(engine.available)

    @staticmethod
    def describe(cfg: EngineConfig) -> str:
        parts = []
        if cfg.models in ("both", "qwen"):
            parts.append(f"qwen={cfg.ar_model}")
        if cfg.models in ("both", "dllm"):
            parts.append(f"dllm={cfg.dllm_model}")
        return ", ".join(parts) + f" on {cfg.device}"


def _describe_error(err: BaseException) -> str:
    return str(err) if isinstance(err, ModelLoadError) else f"{type(err).__name__}: {err}"
