"""Typed plugin parameters.

Every plugin declares its parameters once (name, type, default); the config loader parses the
raw INI strings into these types, so plugins never see a string they must parse themselves and
every bad value is reported with its file, section and key.

What every parse refuses, whatever the parameter: a control character (only tab passes), a
value on several lines unless the type is a list or pairs (there a line break separates items
like a comma), a number that is not finite (``nan`` passes every bound, ``inf`` never comes
due), an integer beyond 64 bits (ClassAd and C integers), and digits that are not ASCII.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
INT_LIMIT = 2**63 - 1
"""No integer setting is larger (in magnitude): it would not fit a ClassAd or C integer."""
DURATION_MAX = 366 * 86400.0
"""No duration setting (sleep, timeout, delay, age) is longer than a year: a larger one is a
typo, and a huge one overflows the C timeouts it reaches."""
_MULTILINE = (list, dict)


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def control_character(text: str, newline_ok: bool = False) -> str | None:
    """The first control character (Unicode Cc: tab excepted) or line/paragraph separator in
    ``text``, or None. One in a value could end a line of a submit description or of a VM's
    HTCondor config and start another."""
    m = (_CONTROL_BUT_NEWLINE if newline_ok else _CONTROL).search(text)
    return m.group() if m else None


def shown(text: str, limit: int = 80) -> str:
    """``repr`` of a value for a message: escaped, and at most about ``limit`` characters."""
    if len(text) > limit:
        return repr(text[: limit // 2]) + f" ...[{len(text)} chars]... " + repr(text[-8:])
    return repr(text)


class ParamValueError(ValueError):
    """A raw value that does not fit its declared type; the message says what was expected."""


def _number(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


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
    maximum: float | None = None
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
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            text += f" from {_number(low)} to {_number(high)}"
        elif low is not None:
            text += f" >= {_number(low)}"
        elif high is not None:
            text += f" <= {_number(high)}"
        return text

    def parse(self, raw: str) -> Any:
        """Parse one raw INI string; raise ParamValueError naming what was expected."""
        value = raw.strip()
        if (c := control_character(value, newline_ok=self.type in _MULTILINE)) == "\n":
            raise ParamValueError(
                f"got {shown(raw)}: an indented line continues the value; "
                f"write {self.name} on one line"
            )
        if c is not None:
            raise ParamValueError(f"got {shown(raw)}: control character U+{ord(c):04X}")
        bad = ParamValueError(f"got {shown(raw)}, expected {self.expected}")
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
                parsed = int(value) if value.isascii() else None
                if parsed is None or abs(parsed) > INT_LIMIT:
                    raise ValueError(value)
            elif self.type is float:
                parsed = float(value) if value.isascii() else math.nan
                if not math.isfinite(parsed):  # nan passes every bound; inf never comes due
                    raise ValueError(value)
            elif self.type is list:
                parsed = [v.strip() for v in re.split(r"[,\n]", value) if v.strip()]
            elif self.type is dict:
                parsed = parse_pairs(value)
            else:
                parsed = value
        except ValueError:
            raise bad from None
        if self.choices and parsed not in self.choices:
            raise bad
        if isinstance(parsed, int | float) and not isinstance(parsed, bool):
            if self.minimum is not None and parsed < self.minimum:
                raise bad
            if self.maximum is not None and parsed > self.maximum:
                raise bad
        if self.validate is not None:
            try:
                self.validate(parsed)
            except ValueError as exc:
                raise ParamValueError(f"got {shown(raw)}: {exc}") from None
        return parsed


def parse_pairs(text: str) -> dict[str, str]:
    """Parse APF's ``k1=v1, k2=v2`` (``\\,`` escapes a comma; a line break separates pairs
    too) into a dict."""
    out: dict[str, str] = {}
    if not text.strip():
        return out
    parts = re.split(r"(?<!\\),|\n", text)
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
