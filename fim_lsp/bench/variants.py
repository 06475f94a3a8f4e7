"""The configurations one bench run compares: the exact path, the editor profile, each speed option the
editor profile turns on (alone, over the exact path), and Qwen alone.

The options are not listed here: they are whatever fields the engine's editor profile changes, so an
option the engine gains later is measured without touching the bench."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fim_lsp.engine import config as engine_config
from fim_lsp.engine.config import EngineConfig

# Options whose engine default is already on. The exact path is the seed's: a separate full scoring pass.
OFF_VALUES: dict[str, Any] = {"score_reuse": False}
# Fields that say how the options are chosen rather than being options themselves.
NOT_OPTIONS = ("profile",)


@dataclass
class Variant:
    name: str
    kind: str  # "exact", "editor", "option", "qwen-alone"
    config: EngineConfig
    changes: dict[str, Any] = field(default_factory=dict)  # fields that differ from the exact path


def _fields() -> set[str]:
    return {f.name for f in dataclasses.fields(EngineConfig)}


def effective(config: EngineConfig) -> EngineConfig:
    """The config with its profile applied, by whichever name the engine gives that function."""
    for name in ("effective", "apply_profile"):
        fn = getattr(engine_config, name, None)
        if callable(fn):
            return fn(config)
    return config


def exact_config(base: EngineConfig) -> EngineConfig:
    changes = {k: v for k, v in OFF_VALUES.items() if k in _fields()}
    if "profile" in _fields():
        changes["profile"] = "exact"
    return effective(base.replace(**changes))


def editor_config(base: EngineConfig) -> EngineConfig | None:
    """None when the engine has no editor profile."""
    profiles = getattr(engine_config, "PROFILES", None)
    if "profile" not in _fields() or (profiles is not None and "editor" not in profiles):
        return None
    return effective(base.replace(profile="editor"))


def option_changes(exact: EngineConfig, editor: EngineConfig) -> dict[str, Any]:
    """Each field the editor profile sets differently from the exact path, with the editor's value."""
    return {f: getattr(editor, f) for f in sorted(_fields() - set(NOT_OPTIONS))
            if getattr(editor, f) != getattr(exact, f)}


def build_variants(base: EngineConfig, only: list[str] | None = None) -> tuple[list[Variant], list[str]]:
    """(variants in run order, notes). `only` keeps the named ones and Qwen alone (the ensemble ratio is
    over it); without "exact" in it, the ratios over the exact path and the agreement are not measured."""
    notes: list[str] = []
    exact = exact_config(base)
    out = [Variant("qwen-alone", "qwen-alone", exact.replace(models="qwen"), {"models": "qwen"}),
           Variant("exact", "exact", exact)]
    editor = editor_config(base)
    if editor is None:
        notes.append("this engine has no editor profile: only the exact path and Qwen alone are measured")
        return out, notes
    changes = option_changes(exact, editor)
    for name, value in changes.items():
        out.append(Variant(name, "option", exact.replace(**{name: value}), {name: value}))
    out.append(Variant("editor", "editor", editor, changes))
    if only:
        unknown = set(only) - {v.name for v in out}
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(v.name for v in out)}")
        out = [v for v in out if v.name in only or v.kind == "qwen-alone"]
        if "exact" not in only:
            notes.append("the exact path is not in --variants: no ratios over it, no agreement")
    return out, notes
