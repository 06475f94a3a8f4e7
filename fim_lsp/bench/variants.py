"""The configurations one bench run compares: the server's own configuration (and Qwen alone in it), and
the oracle variants: the exact path, the editor profile, each speed option the editor profile turns on
(alone, over the exact path), and Qwen alone.

The options are not listed here: they are whatever fields the engine's editor profile changes, so an
option the engine gains later is measured without touching the bench."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fim_lsp.engine.config import EngineConfig, effective

# Options whose engine default is already on. The exact path is the seed's: a separate full scoring pass.
OFF_VALUES: dict[str, Any] = {"score_reuse": False}
# Fields that say how the options are chosen rather than being options themselves.
NOT_OPTIONS = ("profile",)
# Each variant's ensemble ratio is over the Qwen-alone variant run in the same configuration.
DENOMINATOR = {"server": "server-qwen-alone", "server-before": "server-qwen-alone"}
QWEN_ALONE_KINDS = ("qwen-alone", "server-qwen-alone")


@dataclass
class Variant:
    name: str
    kind: str  # "exact", "editor", "option", "qwen-alone", "server", "server-qwen-alone", "server-before"
    config: EngineConfig
    changes: dict[str, Any] = field(default_factory=dict)  # fields that differ from the exact path


def denominator(kind: str) -> str:
    """The name of the Qwen-alone variant a variant of this kind is compared with."""
    return DENOMINATOR.get(kind, "qwen-alone")


def exact_config(base: EngineConfig, device_type: str = "cpu") -> EngineConfig:
    return effective(base.replace(profile="exact", **OFF_VALUES), device_type)


def editor_config(base: EngineConfig, device_type: str = "cpu") -> EngineConfig:
    return effective(base.replace(profile="editor"), device_type)


def option_changes(exact: EngineConfig, editor: EngineConfig) -> dict[str, Any]:
    """Each field the editor profile sets differently from the exact path, with the editor's value."""
    names = {f.name for f in dataclasses.fields(EngineConfig)} - set(NOT_OPTIONS)
    return {f: getattr(editor, f) for f in sorted(names) if getattr(editor, f) != getattr(exact, f)}


def build_variants(base: EngineConfig, server: EngineConfig | None = None, only: list[str] | None = None,
                   device_type: str = "cpu") -> tuple[list[Variant], list[str]]:
    """(variants, notes). `server` is the server's own configuration (see server_variant.server_config);
    the engine applies its profile, as it does for the server. `only` keeps the named variants and the
    Qwen alone each of them is compared with; without "exact" in it, the ratios over the exact path and
    the agreement are not measured."""
    notes: list[str] = []
    exact = exact_config(base, device_type)
    editor = editor_config(base, device_type)
    changes = option_changes(exact, editor)
    out = [Variant("qwen-alone", "qwen-alone", exact.replace(models="qwen"), {"models": "qwen"}),
           Variant("exact", "exact", exact)]
    out += [Variant(name, "option", exact.replace(**{name: value}), {name: value}) for name, value in changes.items()]
    out.append(Variant("editor", "editor", editor, changes))
    if server is not None:
        server_changes = option_changes(exact, effective(server, device_type))
        out += [Variant("server", "server", server, server_changes),
                # the same requests without the single-line flag: what the engine computed before it
                # had one (Qwen to its budget, the multi-line hole lengths; the server cut the rest)
                Variant("server-no-line-stop", "server-before", server, server_changes),
                Variant("server-qwen-alone", "server-qwen-alone", server.replace(models="qwen"),
                        server_changes | {"models": "qwen"})]
    if only:
        unknown = set(only) - {v.name for v in out}
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(v.name for v in out)}")
        by_name = {v.name: v for v in out}
        keep = set(only) | {denominator(by_name[n].kind) for n in only if by_name[n].kind not in QWEN_ALONE_KINDS}
        out = [v for v in out if v.name in keep]
        if "exact" not in only and keep - {"server", "server-qwen-alone", "server-no-line-stop"}:
            notes.append("the exact path is not in --variants: no ratios over it, no agreement")
    return out, notes
