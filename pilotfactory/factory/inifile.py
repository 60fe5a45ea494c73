"""INI text read safely: the bounds configparser leaves to its caller.

configparser trusts its input. It reads a FIFO or ``/dev/zero`` until they end (never); its key
pattern backtracks quadratically on a long run of blanks (a 40 KB line takes ten seconds); its
``ParsingError`` grows its message quadratically with every bad line; and ``%(key)s``
interpolation ten levels deep expands a 1 KB "billion laughs" file to gigabytes. Here a file is
read only when it is a regular file and at most ``MAX_FILE_BYTES`` of it; one linear pass over its
lines, by configparser's own rules, finds syntax errors (before configparser sees the text) and
duplicate sections and keys; the parser's key pattern is linear; and interpolation is bounded per
value and per load.
"""

from __future__ import annotations

import configparser
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MAX_FILE_BYTES = 4 * 1024 * 1024
"""A config file larger than this is refused (real queues.conf files are well under 1 MB)."""
MAX_VALUE_CHARS = 64 * 1024
"""A value, raw or interpolated, longer than this is refused: it is bound for a submit
description or a VM's HTCondor config."""
MAX_SUBSTITUTIONS = 1000
"""``%(key)s`` substitutions one value may take (real values take a handful)."""
MAX_EXPANSION_CHARS = 64 * 1024 * 1024
MAX_EXPANSION_SUBSTITUTIONS = 1_000_000
"""Every interpolated value of one load together: beyond these, the load stops."""

DEFAULT_SECTION = "DEFAULT"


class ConfigError(Exception):
    """A configuration problem that stops loading (a file that cannot be read at all)."""


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_text(path: str, limit: int = MAX_FILE_BYTES) -> str:
    """A config file's text: a regular file of at most ``limit`` bytes, UTF-8, with no NUL byte.

    The file is opened non-blocking and judged by ``fstat`` of what was opened, so a FIFO cannot
    block the open and ``/dev/zero`` is never read; at most ``limit + 1`` bytes are read even if
    the file grows meanwhile. A leading UTF-8 byte-order mark (what Windows editors write) is
    accepted silently. Line ends are normalized as text-mode ``open`` does.
    """
    if path.startswith("file://"):
        path = path[len("file://") :]
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the path
        raise ConfigError(f"{path}: cannot read: not a valid path") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise ConfigError(f"{path}: {kind}, not a config file; refused")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise ConfigError(f"{path}: larger than {limit // 1024} KiB; refused")
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, bad = data.count(b"\n", 0, exc.start) + 1, data[exc.start]
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{bad:02x}); refused"
        ) from None
    if (nul := text.find("\0")) >= 0:
        line = text.count("\n", 0, nul) + 1
        raise ConfigError(f"{path}: line {line}: a NUL byte: binary, not INI text; refused")
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------- the line scan

_SECTION = configparser.ConfigParser.SECTCRE
_OPTION = re.compile(r"(?P<option>[^=:]*)(?P<vi>[=:])\s*(?P<value>.*)$")
"""configparser's key pattern made linear: everything before the first delimiter is the key
(configparser strips its trailing blanks either way)."""
_NONSPACE = re.compile(r"\S")
_KEYCRE = re.compile(r"%\(([^)]+)\)s")
"""configparser's ``%(key)s``."""


class Duplicate(NamedTuple):
    section: str
    key: str
    """``""`` for a section header written twice."""
    line: int
    first: int


@dataclass
class IniScan:
    """What one file declares: the line of each section header and key (first occurrence), and
    what it declares twice (configparser's strict mode would refuse; its default keeps the last
    one silently)."""

    file: str
    lines: dict[tuple[str, str], int] = field(default_factory=dict)
    """``(section, key)`` -> line; ``(section, "")`` for the header."""
    duplicates: list[Duplicate] = field(default_factory=list)


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def scan(text: str, file: str, max_entries: int | None = None) -> IniScan:
    """One linear pass with configparser's rules (default options: ``#``/``;`` whole-line
    comments, blank lines kept in values, a line indented deeper than its key continues the
    value). A line configparser would refuse raises ``ConfigError`` naming it, so configparser
    only ever reads text it accepts; so does a file of more than ``max_entries`` sections and
    keys."""
    out = IniScan(file)
    section: str | None = None
    key = ""
    indent = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        value = line.strip()
        if not value or value.startswith(("#", ";")):
            continue
        m = _NONSPACE.search(line)
        level = m.start() if m else 0
        if section is not None and key and level > indent:
            continue  # a continuation line
        indent = level
        if header := _SECTION.match(value):
            section, key = header.group("header"), ""
        elif section is None:
            raise ConfigError(
                f"{file}: line {lineno}: not INI: {_shown(value)} comes before any [section]"
            )
        else:
            opt = _OPTION.match(value)
            if opt is None or not opt.group("option"):
                what = "a key = value line" if opt is None else "a key before the '='"
                raise ConfigError(f"{file}: line {lineno}: not INI: {_shown(value)} is not {what}")
            key = opt.group("option").rstrip()
        where = (section, key)
        if where in out.lines:
            if where != (DEFAULT_SECTION, ""):  # [DEFAULT] may come back (configparser)
                out.duplicates.append(Duplicate(section, key, lineno, out.lines[where]))
            continue
        out.lines[where] = lineno
        if max_entries is not None and len(out.lines) > max_entries:
            raise ConfigError(
                f"{file}: line {lineno}: more than {max_entries} sections and keys; refused"
            )
    return out


# ---------------------------------------------------------------------------- the parser


class ExpansionBudgetError(ConfigError):
    """Interpolation over every value of a load went past its budget: the load stops."""


class ValueTooLargeError(configparser.InterpolationError):
    """One value is too long, raw or expanded, or takes too many substitutions."""


@dataclass
class _Used:
    chars: int = 0
    substitutions: int = 0


class BoundedInterpolation(configparser.BasicInterpolation):
    """``%(key)s`` as configparser's ``BasicInterpolation`` (same syntax, same errors, depth 10),
    bounded: a value expands to at most ``MAX_VALUE_CHARS`` through at most
    ``MAX_SUBSTITUTIONS`` substitutions (ten keys that each name the one before ten times are
    10**10 of them), and one load's values together stay within ``MAX_EXPANSION_CHARS`` and
    ``MAX_EXPANSION_SUBSTITUTIONS``."""

    def __init__(self) -> None:
        self.total = _Used()

    def before_get(self, parser: Any, section: str, option: str, value: str, defaults: Any) -> str:
        if len(value) > MAX_VALUE_CHARS:
            raise ValueTooLargeError(
                option, section, f"longer than {MAX_VALUE_CHARS // 1024} KiB; refused"
            )
        if "%" not in value:
            return value
        out: list[str] = []
        self._expand(parser, section, option, value, defaults, out, _Used(), 1)
        return "".join(out)

    def _count(self, used: _Used, section: str, option: str, chars: int, subs: int) -> None:
        used.chars += chars
        used.substitutions += subs
        self.total.chars += chars
        self.total.substitutions += subs
        if used.chars > MAX_VALUE_CHARS:
            raise ValueTooLargeError(
                option, section, f"expands to more than {MAX_VALUE_CHARS // 1024} KiB; refused"
            )
        if used.substitutions > MAX_SUBSTITUTIONS:
            raise ValueTooLargeError(
                option, section, f"takes more than {MAX_SUBSTITUTIONS} %(key)s substitutions"
            )
        if (
            self.total.chars > MAX_EXPANSION_CHARS
            or self.total.substitutions > MAX_EXPANSION_SUBSTITUTIONS
        ):
            raise ExpansionBudgetError(
                f"%(key)s references expand to more than {MAX_EXPANSION_CHARS >> 20} MiB or "
                f"{MAX_EXPANSION_SUBSTITUTIONS} substitutions in all (stopped at [{section}] "
                f"{option}); refused"
            )

    def _expand(
        self,
        parser: Any,
        section: str,
        option: str,
        rest: str,
        values: Mapping[str, str],
        out: list[str],
        used: _Used,
        depth: int,
    ) -> None:
        """configparser's ``_interpolate_some``, walking by index (its slicing is quadratic on a
        long run of ``%%``) and counting what it adds."""
        if depth > configparser.MAX_INTERPOLATION_DEPTH:
            raw = parser.get(section, option, raw=True, fallback=rest)
            raise configparser.InterpolationDepthError(option, section, raw)
        i, n = 0, len(rest)
        while i < n:
            p = rest.find("%", i)
            if p < 0:
                p = n
            if p > i:
                self._count(used, section, option, p - i, 0)
                out.append(rest[i:p])
            if p == n:
                return
            c = rest[p + 1 : p + 2]
            if c == "%":
                self._count(used, section, option, 1, 0)
                out.append("%")
                i = p + 2
            elif c == "(":
                m = _KEYCRE.match(rest, p)
                if m is None:
                    raise configparser.InterpolationSyntaxError(
                        option, section, f"bad interpolation variable reference {rest[p:]!r}"
                    )
                var = parser.optionxform(m.group(1))
                i = m.end()
                self._count(used, section, option, 0, 1)
                try:
                    v = values[var]
                except KeyError:
                    raw = parser.get(section, option, raw=True, fallback=rest)
                    raise configparser.InterpolationMissingOptionError(
                        option, section, raw, var
                    ) from None
                if "%" in v:
                    self._expand(parser, section, option, v, values, out, used, depth + 1)
                else:
                    self._count(used, section, option, len(v), 0)
                    out.append(v)
            else:
                raise configparser.InterpolationSyntaxError(
                    option, section, f"'%' must be followed by '%' or '(', found: {rest[p:]!r}"
                )


class IniParser(configparser.ConfigParser):
    """APF's reading: case-sensitive keys, ``[DEFAULT]``, bounded ``%(key)s``, not strict (a later
    file wins per key; duplicates within one file are found by ``scan``), and a linear key
    pattern."""

    OPTCRE = _OPTION

    def __init__(self) -> None:
        super().__init__(
            interpolation=BoundedInterpolation(), strict=False, default_section=DEFAULT_SECTION
        )

    def optionxform(self, optionstr: str) -> str:
        return optionstr
