"""The building block of the config schema: one documented, typed key with its default."""
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "dict"}


@dataclass(frozen=True)
class Field:
    """A config key. `type` is one of int, float, bool, str, list, dict.

    `None` is accepted when the default is `None` or `nullable=True`; an int is accepted for a float
    (YAML writes 1e-4 as a float but 2 as an int); `choices` restricts the value; `required` keys must be
    set (to something other than None) by the time the config is used. `bounds` is the interval a number (or each
    element of a list) must lie in, written as in mathematics: "[0, 1]", "(0, 1]", "[1, inf)".
    """
    type: type
    default: Any = None
    doc: str = ""
    choices: Optional[Sequence[Any]] = None
    nullable: bool = False
    required: bool = False
    items: Optional[type] = field(default=None)  # element type of a list, checked when given
    bounds: Optional[str] = None

    def __post_init__(self):
        if self.bounds is not None:
            _parse_bounds(self.bounds)  # a malformed interval fails when the schema is imported

    def type_name(self) -> str:
        name = _TYPE_NAMES.get(self.type, getattr(self.type, "__name__", str(self.type)))
        if self.items is not None:
            name += f"[{_TYPE_NAMES.get(self.items, self.items.__name__)}]"
        if self.default is None or self.nullable:
            name += " or null"
        return name

    def check(self, value: Any) -> Optional[str]:
        """Returns None when `value` fits, else a short reason."""
        if value is None:
            return None if (self.default is None or self.nullable) else f"expected {self.type_name()}, got null"
        if not _is_type(value, self.type):
            return f"expected {self.type_name()}, got {type(value).__name__} {value!r}"
        if self.items is not None:
            bad = [v for v in value if not _is_type(v, self.items)]
            if bad:
                return f"expected {self.type_name()}, got an element {bad[0]!r}"
        if self.choices is not None and value not in self.choices:
            return f"expected one of {list(self.choices)}, got {value!r}"
        if self.bounds is not None:
            outside = [v for v in (value if isinstance(value, list) else [value]) if not _within(v, self.bounds)]
            if outside:
                what = "every element in" if isinstance(value, list) else "a value in"
                return f"expected {what} {self.bounds}, got {outside[0]!r}"
        return None


def _parse_bounds(text: str):
    """Parses an interval: "(0, 1]" -> (0.0, 1.0, True, False), i.e. low, high, low open, high open."""
    parts = text[1:-1].split(",")
    if text[:1] not in ("(", "[") or text[-1:] not in (")", "]") or len(parts) != 2:
        raise ValueError(f"bounds {text!r}: not an interval like '[0, 1]' or '(0, inf)'")
    return float(parts[0]), float(parts[1]), text[0] == "(", text[-1] == ")"


def _within(value: Any, bounds: str) -> bool:
    low, high, low_open, high_open = _parse_bounds(bounds)  # NaN compares False: outside
    return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)


def _is_type(value: Any, typ: type) -> bool:
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)
