"""Server settings: the editor's `fimLsp` section split into server keys and engine keys.

Each key is applied on its own, so one bad value is reported (naming the key) and skipped while the
good keys in the same message still take effect."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..context.settings import CONTEXT_RULES, ContextSettings
from ..engine.config import EngineConfig, camel, config_from_settings, snake
from ..engine.rules import BOOL, CHOICE, INT, Rule
from ..engine.loading import ModelLoadError, _cached, _explain, _is_local, resolve_device, resolve_dtype

LOG_LEVELS = ("error", "warning", "info", "debug")
# Where the server's engine defaults differ from the dataclass's: typing needs the fast path; the eval
# and the one-shot CLI keep the exact reference path. The CLI parser and the settings table read this.
SERVER_ENGINE_DEFAULTS: dict[str, Any] = {"profile": "editor"}
# Each model key, and the `models` values that load it.
MODEL_KEYS = (("ar_model", ("both", "qwen")), ("dllm_model", ("both", "dllm")),
              ("scorer_model", ("both", "qwen", "dllm")))


@dataclass
class ServerSettings:
    enabled: bool = True
    prefix_lines: int = 64
    suffix_lines: int = 16
    max_prefix_tokens: int = 1024  # 0 = no token budget, lines only
    max_suffix_tokens: int = 256
    debounce_ms: int = 0
    wait_for_models_ms: int = 10000
    cache_size: int = 256
    log_level: str = "info"
    multiline: str = "auto"  # auto: single-line when code follows the cursor; "always" / "never"

    def validate(self) -> None:
        """Raise ValueError naming the first key whose value its Rule refuses."""
        for f in dataclasses.fields(self):
            SERVER_RULES[f.name].check(camel(f.name), getattr(self, f.name))


# Every server key's type and bounds (see fim_lsp/engine/rules.py for how a value is checked).
SERVER_RULES: dict[str, Rule] = {
    "enabled": Rule(BOOL),
    "prefix_lines": Rule(INT, 0, 100_000),
    "suffix_lines": Rule(INT, 0, 100_000),
    "max_prefix_tokens": Rule(INT, 0, 32_768),  # Qwen2.5-Coder's context is 32k tokens
    "max_suffix_tokens": Rule(INT, 0, 32_768),
    "debounce_ms": Rule(INT, 0, 60_000),
    "wait_for_models_ms": Rule(INT, 0, 600_000),
    "cache_size": Rule(INT, 0, 100_000),
    "log_level": Rule(CHOICE, choices=LOG_LEVELS, fold_case=True),
    "multiline": Rule(CHOICE, choices=("auto", "always", "never")),
}


SERVER_KEYS = {camel(f.name): f for f in dataclasses.fields(ServerSettings)}
CONTEXT_KEYS = {camel(f.name): f for f in dataclasses.fields(ContextSettings)}
ENGINE_KEYS = {camel(f.name) for f in dataclasses.fields(EngineConfig)}


@dataclass
class SettingsUpdate:
    server: ServerSettings
    engine: EngineConfig
    context: ContextSettings
    errors: list[str] = field(default_factory=list)  # one readable line per rejected key
    unknown: list[str] = field(default_factory=list)


def unwrap(raw: Any) -> dict[str, Any]:
    """Accept a flat dict of keys or {"fimLsp": {...}} (initializationOptions and didChangeConfiguration)."""
    if not isinstance(raw, dict):
        return {}
    inner = raw.get("fimLsp")
    if isinstance(inner, dict):
        return inner
    if "settings" in raw and isinstance(raw["settings"], dict):
        return unwrap(raw["settings"])
    return raw


def apply_settings(raw: Any, server: ServerSettings, engine: EngineConfig,
                   context: ContextSettings = ContextSettings()) -> SettingsUpdate:
    """New settings from `raw`; rejected keys keep their old value and are listed in `errors`."""
    values = unwrap(raw)
    update = SettingsUpdate(server=server, engine=engine, context=context)
    for key, value in values.items():
        if key in CONTEXT_KEYS:
            name = CONTEXT_KEYS[key].name
            try:
                update.context = dataclasses.replace(update.context, **{name: CONTEXT_RULES[name].check(key, value)})
            except ValueError as err:
                update.errors.append(_error(key, err))
        elif key in SERVER_KEYS:
            name = SERVER_KEYS[key].name
            try:
                candidate = dataclasses.replace(update.server, **{name: SERVER_RULES[name].check(key, value)})
            except ValueError as err:
                update.errors.append(_error(key, err))
                continue
            update.server = candidate
        elif key in ENGINE_KEYS:
            try:
                candidate_engine = config_from_settings({key: value}, update.engine)
                check_engine(candidate_engine, update.engine)
            except Exception as err:  # noqa: BLE001 - whatever a check raises, it is this key's fault
                update.errors.append(_error(key, err))
                continue
            update.engine = candidate_engine
        else:
            update.unknown.append(key)
    return update


def _error(key: str, err: Exception) -> str:
    text = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
    return f"fimLsp.{key}: {text.removeprefix(key + ' ')}"


def check_engine(new: EngineConfig, old: EngineConfig | None = None) -> None:
    """What EngineConfig.validate cannot see: that the device and dtype exist here and that each model
    to load resolves. Only what changes from `old` is checked (a model also when `models` starts to
    need it), so an unchanged key never blocks another. Raises ValueError naming the key."""
    def changed(name: str) -> bool:
        return old is None or getattr(new, name) != getattr(old, name)

    new.validate()
    if changed("device") or changed("dtype"):
        check_device(new)
    for name, needed_by in MODEL_KEYS:
        value = getattr(new, name)
        newly_needed = old is None or old.models not in needed_by
        if value is not None and new.models in needed_by and (changed(name) or newly_needed):
            try:
                resolve_model(value, name.split("_")[0])
            except ModelLoadError as err:
                raise ValueError(str(err)) from None


def check_device(config: EngineConfig) -> None:
    """Raise ValueError unless `device` names a device this torch can use, with a usable `dtype`."""
    want = "use auto, cpu, cuda, cuda:N or mps"
    try:
        device = resolve_device(config.device)
    except RuntimeError:
        raise ValueError(f"device {config.device!r} is not a torch device; {want}") from None
    # torch knows more device types (meta, xla, ...): models "load" on meta and then every request fails
    usable = {"cpu": lambda: True, "cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type not in usable:
        raise ValueError(f"device {config.device!r} cannot run the models; {want}")
    if not usable[device.type]():
        raise ValueError(f"device {config.device!r}: this machine's torch cannot use {device.type}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {config.device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    resolve_dtype(config.dtype, device)


def resolve_model(name: str, role: str) -> None:
    """Raise ModelLoadError unless `name` can be loaded: a local directory holding config.json, or a
    well-formed Hub id that is in the cache when offline (online, an uncached id downloads at load)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if _is_local(name):
        if not (Path(name).expanduser() / "config.json").is_file():
            raise ModelLoadError(_explain(name, role, FileNotFoundError("no config.json there")))
        return
    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise ModelLoadError(_explain(name, role, err)) from None
    if constants.HF_HUB_OFFLINE and not _cached(name):
        raise ModelLoadError(_explain(name, role, FileNotFoundError("not in the cache")))


def as_keys(server: ServerSettings, engine: EngineConfig, context: ContextSettings = ContextSettings()) -> dict[str, Any]:
    """Every key with its value, camelCase, as the editor writes them (lists for tuples)."""
    out = {camel(f.name): getattr(engine, f.name) for f in dataclasses.fields(EngineConfig)}
    out.update({camel(f.name): getattr(server, f.name) for f in dataclasses.fields(ServerSettings)})
    out.update({camel(f.name): getattr(context, f.name) for f in dataclasses.fields(ContextSettings)})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def all_defaults() -> dict[str, Any]:
    """Every key with its default for the server, as the README documents them."""
    return as_keys(ServerSettings(), dataclasses.replace(EngineConfig(), **SERVER_ENGINE_DEFAULTS), ContextSettings())


__all__ = ["ServerSettings", "SettingsUpdate", "apply_settings", "check_engine", "unwrap", "all_defaults", "as_keys", "snake"]
