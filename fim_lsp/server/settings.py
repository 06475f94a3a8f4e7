"""Server settings: the editor's `fimLsp` section split into server keys and engine keys.

Each key is applied on its own, so one bad value is reported (naming the key) and skipped while the
good keys in the same message still take effect."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..engine.config import EngineConfig, camel, config_from_settings, snake

LOG_LEVELS = ("error", "warning", "info", "debug")


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
        checks: list[tuple[str, bool, str]] = [
            ("prefixLines", self.prefix_lines >= 0, ">= 0"),
            ("suffixLines", self.suffix_lines >= 0, ">= 0"),
            ("maxPrefixTokens", self.max_prefix_tokens >= 0, ">= 0 (0 = no token budget)"),
            ("maxSuffixTokens", self.max_suffix_tokens >= 0, ">= 0 (0 = no token budget)"),
            ("debounceMs", 0 <= self.debounce_ms <= 60000, "between 0 and 60000"),
            ("waitForModelsMs", self.wait_for_models_ms >= 0, ">= 0"),
            ("cacheSize", self.cache_size >= 0, ">= 0 (0 disables the cache)"),
            ("logLevel", self.log_level in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"),
            ("multiline", self.multiline in ("auto", "always", "never"), "auto, always or never"),
        ]
        for key, ok, want in checks:
            if not ok:
                raise ValueError(f"{key} must be {want}")


SERVER_KEYS = {camel(f.name): f for f in dataclasses.fields(ServerSettings)}
ENGINE_KEYS = {camel(f.name) for f in dataclasses.fields(EngineConfig)}


@dataclass
class SettingsUpdate:
    server: ServerSettings
    engine: EngineConfig
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


def _server_value(key: str, value: Any, current: Any) -> Any:
    want = type(current)
    if want is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if want is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value.lower() if key == "logLevel" else value


def apply_settings(raw: Any, server: ServerSettings, engine: EngineConfig) -> SettingsUpdate:
    """New settings from `raw`; rejected keys keep their old value and are listed in `errors`."""
    values = unwrap(raw)
    update = SettingsUpdate(server=server, engine=engine)
    for key, value in values.items():
        if key in SERVER_KEYS:
            name = SERVER_KEYS[key].name
            try:
                candidate = dataclasses.replace(update.server, **{name: _server_value(
                    key, value, getattr(update.server, name))})
                candidate.validate()
            except (ValueError, TypeError) as err:
                update.errors.append(f"fimLsp.{key}: {err}")
                continue
            update.server = candidate
        elif key in ENGINE_KEYS:
            try:
                update.engine = config_from_settings({key: value}, update.engine)
            except (ValueError, TypeError) as err:
                update.errors.append(f"fimLsp.{key}: {err}")
        else:
            update.unknown.append(key)
    return update


def all_defaults() -> dict[str, Any]:
    """Every key with its default for the server (its CLI defaults), camelCase, as the README documents them."""
    from ..engine.config import config_from_args
    from .main import build_parser

    engine = config_from_args(build_parser().parse_args([]))
    out = {camel(f.name): getattr(engine, f.name) for f in dataclasses.fields(EngineConfig)}
    out.update({camel(f.name): getattr(ServerSettings(), f.name) for f in dataclasses.fields(ServerSettings)})
    return out


__all__ = ["ServerSettings", "SettingsUpdate", "apply_settings", "unwrap", "all_defaults", "snake"]
