"""Whether the Hugging Face Hub can be reached, asked once before a load that would need it.

huggingface_hub retries an unreachable Hub five times per file with back-off: a server with the default
models, no weights and no network said "loading" for 96 s before "failed". One short probe decides
instead. When it fails, the load runs in offline mode: cached and local models load as usual, the others
fail at once with the fix in their message."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from ..engine.config import EngineConfig
from ..engine.loading import _cached, _is_local
from .settings import MODEL_KEYS

log = logging.getLogger("fim_lsp.server")
PROBE_TIMEOUT_S = 3.0


def uncached_hub_ids(config: EngineConfig) -> list[str]:
    """The Hub ids this config loads that are not in the local cache (loading them needs the network)."""
    names = [getattr(config, f) for f, needed_by in MODEL_KEYS if config.models in needed_by]
    return [n for n in dict.fromkeys(names) if n is not None and not _is_local(n) and not _cached(n)]


def unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub endpoint cannot be reached (one request, no retries), or None when it answers."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as err:  # noqa: BLE001 - any failure to get an answer means "unreachable"
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}".rstrip(": ")
    return None


@contextlib.contextmanager
def offline_unless_reachable(config: EngineConfig) -> Iterator[None]:
    """Within: offline mode when `config` needs the Hub and the Hub does not answer."""
    from huggingface_hub import constants

    missing = [] if constants.HF_HUB_OFFLINE else uncached_hub_ids(config)
    reason = unreachable() if missing else None
    if reason is None:
        yield
        return
    log.warning("the Hugging Face Hub cannot be reached (%s): loading from the local cache only", reason)
    saved = os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True  # huggingface_hub and transformers read this at each call
    os.environ["HF_HUB_OFFLINE"] = "1"  # and the load error's text says offline mode is on
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved
