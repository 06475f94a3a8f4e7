"""Typed, bounded setting values: one Rule per key, checked where a value enters (editor settings,
the CLI, a config built in code).

Editor settings arrive as JSON, where 1e400 is infinity, 2.5 can land in an integer key and a string
can land in a list key. A value is taken only when it has the key's type and lies within its bounds;
anything else is refused with a message that names the key, so one bad key never takes the others of
the same message down with it. A new setting gets its Rule beside its field; a test checks that every
field has one."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

INT, FLOAT, BOOL, STR, CHOICE, INTS, STRS = "int", "float", "bool", "str", "choice", "ints", "strs"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Rule:
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low bound itself is refused: (0, 1]
    high_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    max_items: int = 16  # INTS, STRS: the longest list taken
    fold_case: bool = False  # CHOICE: "INFO" means "info"
    auto: bool = False  # the string "auto" is taken too (a value derived at load time)

    def describe(self) -> str:
        if self.kind == BOOL:
            text = "true or false"
        elif self.kind == STR:
            text = "a string"
        elif self.kind == STRS:
            text = f"a list of at most {self.max_items} strings"
        elif self.kind == CHOICE:
            text = "one of " + ", ".join(self.choices)
        else:
            noun = {INT: "an integer", FLOAT: "a number", INTS: f"a list of 1 to {self.max_items} integers"}[self.kind]
            text = f"{noun} {self._range()}".rstrip()
        text = ("auto or " + text) if self.auto else text
        return text + (" or null" if self.nullable else "")

    def _range(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else repr(x)

        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {num(self.low)}"
        return ""

    def check(self, key: str, value: Any) -> Any:
        """The value as the config holds it (an integral 3.0 becomes 3, a list a tuple), or
        ValueError naming `key`."""
        if value is None and self.nullable:
            return None
        try:
            taken = self._take(value)
        except (TypeError, ValueError, OverflowError):
            taken = None
        if taken is None:
            raise ValueError(f"{key} must be {self.describe()}, got {_show(value)}")
        return taken

    def _take(self, value: Any) -> Any:
        """The typed value, or None when it does not fit."""
        if self.auto and isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if self.kind == BOOL:
            return value if isinstance(value, bool) else None
        if self.kind == STR:
            return value if isinstance(value, str) else None
        if self.kind == CHOICE:
            if not isinstance(value, str):
                return None
            value = value.lower() if self.fold_case else value
            return value if value in self.choices else None
        if self.kind == STRS:
            ok = isinstance(value, (list, tuple)) and len(value) <= self.max_items
            return tuple(value) if ok and all(isinstance(v, str) for v in value) else None
        if self.kind == INTS:
            if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= self.max_items:
                return None
            items = [self._number(v, integer=True) for v in value]
            return None if any(v is None for v in items) else tuple(items)
        return self._number(value, integer=self.kind == INT)

    def _number(self, value: Any, integer: bool) -> float | int | None:
        # bool is an int to Python, never to a user; JSON has one number type, so an integral 3.0
        # is the integer 3, while 1.5, infinity and NaN are not integers.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if integer:
            if isinstance(value, float) and not value.is_integer():
                return None
            value = int(value)
        else:
            value = float(value)  # OverflowError for a 400-digit int: refused by check()
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return None
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return None
        return value


def check_all(values: dict[str, Any], rules: dict[str, Rule], key_of: Any = str) -> None:
    """Raise ValueError for the first value its rule refuses; `key_of` turns a field name into the
    key the user wrote (camelCase for editor settings)."""
    for name, value in values.items():
        rules[name].check(key_of(name), value)
