"""Typed plugin parameters.

Every plugin declares its parameters once (name, type, default); the config loader parses the
raw INI strings into these types, so plugins never see a string they must parse themselves and
every bad value is reported with its file, section and key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ParamValueError(ValueError):
    """A raw value that does not fit its declared type; the message says what was expected."""


@dataclass(frozen=True)
class Param:
    """One declared plugin parameter.

    ``type`` is one of ``int``, ``float``, ``bool``, ``str``, ``list`` (comma list of strings) or
    ``dict`` (``k1=v1, k2=v2`` with ``\\,`` escaping a comma, plus ``<name>.<key> = value`` keys).
    A ``default`` of ``None`` means "unset", which plugins distinguish from 0.
    """

    name: str
    type: type = str
    default: Any = None
    doc: str = ""
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    required: bool = False
    """The plugin cannot work without it: ``check`` refuses a queue that leaves it unset."""
    validate: Callable[[Any], object] | None = None
    """Further checks of a parsed value; a ``ValueError`` it raises is the config error."""
    secret: bool = False
    """The value names a file holding a secret (a key, token, password, proxy): ``check``
    refuses it unless only its owner can read it, before ``run`` ever opens it."""

    def of(self, params: Mapping[str, Any]) -> Any:
        """This parameter's value in ``params``, or its declared default when unset (``None``);
        so a default is written once, here, and 0 stays 0."""
        value = params.get(self.name)
        return self.default if value is None else value

    @property
    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        names = {
            int: "an integer",
            float: "a number",
            bool: "a boolean (true/false)",
            str: "a string",
            list: "a comma-separated list",
            dict: "k1=v1, k2=v2 pairs",
        }
        text = names.get(self.type, self.type.__name__)
        if self.minimum is not None:
            text += f" >= {self.minimum:g}"
        return text

    def parse(self, raw: str) -> Any:
        """Parse one raw INI string; raise ParamValueError naming what was expected."""
        value = raw.strip()
        try:
            parsed: Any
            if self.type is bool:
                low = value.lower()
                if low in _TRUE:
                    parsed = True
                elif low in _FALSE:
                    parsed = False
                else:
                    raise ValueError(value)
            elif self.type is int:
                parsed = int(value)
            elif self.type is float:
                parsed = float(value)
                if not math.isfinite(parsed):  # nan passes every minimum; inf never comes due
                    raise ValueError(value)
            elif self.type is list:
                parsed = [v.strip() for v in value.split(",") if v.strip()]
            elif self.type is dict:
                parsed = parse_pairs(value)
            else:
                parsed = value
        except ValueError:
            raise ParamValueError(f"got {raw!r}, expected {self.expected}") from None
        if self.choices and parsed not in self.choices:
            raise ParamValueError(f"got {raw!r}, expected {self.expected}")
        too_small = self.minimum is not None and isinstance(parsed, int | float)
        if too_small and parsed < self.minimum:
            raise ParamValueError(f"got {raw!r}, expected {self.expected}")
        if self.validate is not None:
            try:
                self.validate(parsed)
            except ValueError as exc:
                raise ParamValueError(f"got {raw!r}: {exc}") from None
        return parsed


def parse_pairs(text: str) -> dict[str, str]:
    """Parse APF's ``k1=v1, k2=v2`` (``\\,`` escapes a comma) into a dict."""
    out: dict[str, str] = {}
    if not text.strip():
        return out
    parts = re.split(r"(?<!\\),", text)
    for part in parts:
        part = part.replace("\\,", ",").strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(part)
        key, _, val = part.partition("=")
        key = key.strip()
        if not key:
            raise ValueError(part)
        out[key] = val.strip()
    return out


def defaults(params: tuple[Param, ...]) -> dict[str, Any]:
    """The parameter mapping a plugin gets when its config sets nothing."""
    return {p.name: (dict(p.default) if isinstance(p.default, dict) else p.default) for p in params}


def merged(params: tuple[Param, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    out = defaults(params)
    out.update(values)
    return out
