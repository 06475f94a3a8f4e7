"""Every setting's type and bounds (fim_lsp/engine/rules.py): each numeric bound is tested at both of
its edges, and the values issue 18 found accepted and then breaking every completion are refused by
name while the good keys of the same message apply."""
from __future__ import annotations

import dataclasses
import math

import pytest

from fim_lsp.engine.config import ENGINE_RULES, EngineConfig, camel
from fim_lsp.engine.rules import FLOAT, INT, INTS, Rule
from fim_lsp.context.settings import CONTEXT_RULES, ContextSettings
from fim_lsp.server.settings import SERVER_RULES, ServerSettings, apply_settings

RULES = {**{camel(k): r for k, r in ENGINE_RULES.items()}, **{camel(k): r for k, r in SERVER_RULES.items()},
         **{camel(k): r for k, r in CONTEXT_RULES.items()}}
NUMERIC = {key: rule for key, rule in RULES.items() if rule.kind in (INT, FLOAT, INTS)}


def test_every_field_has_a_rule_and_every_numeric_rule_two_bounds() -> None:
    assert set(ENGINE_RULES) == {f.name for f in dataclasses.fields(EngineConfig)}
    assert set(SERVER_RULES) == {f.name for f in dataclasses.fields(ServerSettings)}
    assert set(CONTEXT_RULES) == {f.name for f in dataclasses.fields(ContextSettings)}
    for key, rule in NUMERIC.items():
        assert rule.low is not None and rule.high is not None, key
    EngineConfig().validate()
    ServerSettings().validate()
    ContextSettings().validate()


def edges(rule: Rule) -> tuple[list[float], list[float]]:
    """(values just inside the bounds, values just outside)."""
    if rule.kind in (INT, INTS):
        return [rule.low, rule.high], [rule.low - 1, rule.high + 1]
    inside_low = math.nextafter(rule.low, math.inf) if rule.low_open else rule.low
    inside_high = math.nextafter(rule.high, -math.inf) if rule.high_open else rule.high
    outside_low = rule.low if rule.low_open else math.nextafter(rule.low, -math.inf)
    outside_high = rule.high if rule.high_open else math.nextafter(rule.high, math.inf)
    return [inside_low, inside_high], [outside_low, outside_high]


def as_value(rule: Rule, x: float):
    if rule.kind == INTS:
        return [int(x)]
    return int(x) if rule.kind == INT else x


@pytest.mark.parametrize("key", sorted(NUMERIC))
def test_each_bound_at_both_edges_through_apply_settings(key: str) -> None:
    rule = NUMERIC[key]
    inside, outside = edges(rule)
    for x in inside:
        up = apply_settings({key: as_value(rule, x)}, ServerSettings(), EngineConfig())
        assert up.errors == [], (key, x)
        got = dataclasses.asdict(up.server) | dataclasses.asdict(up.engine) | dataclasses.asdict(up.context)
        want = as_value(rule, x)
        assert got[_snake(key)] == (tuple(want) if rule.kind == INTS else want)
    for x in outside:
        up = apply_settings({key: as_value(rule, x), "enabled": False}, ServerSettings(), EngineConfig())
        (error,) = up.errors
        assert error.startswith(f"fimLsp.{key}: must be"), error
        assert up.server.enabled is False  # the good key of the same message applies
        assert dataclasses.asdict(up.server) | dataclasses.asdict(up.engine) | dataclasses.asdict(up.context) == \
            dataclasses.asdict(ServerSettings(enabled=False)) | dataclasses.asdict(EngineConfig()) | \
            dataclasses.asdict(ContextSettings())


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


# The values: accepted before, and then every completion failed or was silently reinterpreted.
BAD = [
    ("maxNewTokens", 1.5), ("topK", 1.5), ("dllmLength", 2.5), ("seed", 1.5), ("seed", 18446744073709551616),
    ("temperature", float("inf")), ("temperature", float("nan")), ("dllmStepsPerToken", float("inf")), ("steps", 1e30),
    ("waitForModelsMs", 10**40), ("prefixLines", float("inf")), ("prefixLines", float("nan")),
    ("dllmLengths", "816"), ("dllmLengths", [1.9, 2.2]), ("dllmLengths", []), ("dllmLengths", [8] * 17),
    ("dllmThreshold", True), ("temperature", False), ("steps", True), ("enabled", 1), ("logLevel", 3),
    ("models", "all"), ("device", "meta"), ("arModel", 5), ("maxSuffixTokens", "256"),
    ("projectContext", "false"), ("contextExclude", "*.md"), ("contextExclude", ["a", 3]),
    ("contextExclude", ["x"] * 257), ("contextTotalTokens", float("inf")), ("dllmContextTokens", 2048),
]


@pytest.mark.parametrize(("key", "value"), BAD, ids=[f"{k}={v!r}"[:40] for k, v in BAD])
def test_bad_values_are_refused_by_name(key: str, value) -> None:
    up = apply_settings({"steps": 5, key: value, "enabled": False} if key not in ("steps", "enabled")
                        else {key: value, "cacheSize": 7}, ServerSettings(), EngineConfig())
    (error,) = up.errors
    assert error.startswith(f"fimLsp.{key}: "), error
    assert len(error) < 200  # a 40-digit number is shown cut, not whole
    if key not in ("steps", "enabled"):
        assert up.engine.steps == 5 and up.server.enabled is False
    else:
        assert up.server.cache_size == 7


def test_integral_numbers_are_integers_and_lists_become_tuples() -> None:
    up = apply_settings({"steps": 8.0, "dllmLengths": [4, 8.0], "seed": None, "logLevel": "DEBUG"},
                        ServerSettings(), EngineConfig())
    assert up.errors == []
    assert up.engine.steps == 8 and isinstance(up.engine.steps, int)
    assert up.engine.dllm_lengths == (4, 8) and up.engine.seed is None and up.server.log_level == "debug"


def test_the_cli_refuses_values_past_the_bounds_too() -> None:
    with pytest.raises(ValueError, match="steps must be an integer in"):
        EngineConfig(steps=100_001).validate()
    with pytest.raises(ValueError, match="temperature"):
        EngineConfig().replace(temperature=math.inf)


def test_graph_memory_takes_auto_or_megabytes_and_names_itself_otherwise() -> None:
    rule = ENGINE_RULES["graph_memory"]
    assert rule.check("graphMemory", "auto") == "auto" and rule.check("graphMemory", " AUTO ") == "auto"
    assert rule.check("graphMemory", 0) == 0 and rule.check("graphMemory", 10_000_000) == 10_000_000
    for bad in ("big", -1, 10_000_001, 1.5, True, None, float("inf")):
        with pytest.raises(ValueError, match="graphMemory must be auto or an integer"):
            rule.check("graphMemory", bad)
