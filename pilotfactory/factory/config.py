"""factory.conf and queues.conf, read the way AutoPyFactory reads them.

APF semantics kept: ``[DEFAULT]`` inheritance and ``%(key)s`` interpolation, ``queueConf`` as a
comma list of files (a later file wins per key), ``queueDirConf``'s ``*.conf`` read in name
order into the same parser (one ``[DEFAULT]`` for all, a later file wins per key),
case-sensitive keys, legacy plugin names. Values are parsed once into a typed ``QueueConfig``;
every problem names file, section and key. A broken section disables that queue only.

Hostile input is bounded (``inifile``): a file that cannot be read as INI text stops the load
(``ConfigError``); within one file a section or key written twice, a value with a control
character, a single-line value continued on an indented line, and a queue name that could not
safely be a path, a ClassAd string, a tag or an environment entry are errors of their section.
"""

from __future__ import annotations

import configparser
import contextlib
import difflib
import glob
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pilotfactory.factory.inifile import (
    DEFAULT_SECTION,
    MAX_FILE_BYTES,
    Duplicate,
    IniParser,
    IniScan,
    ValueTooLargeError,
    read_text,
    scan,
)
from pilotfactory.factory.inifile import ConfigError as ConfigError
from pilotfactory.factory.params import (
    DURATION_MAX,
    Param,
    ParamValueError,
    control_character,
    defaults,
    shown,
)
from pilotfactory.factory.planner import PLANNER_PARAMS, PlannerSettings
from pilotfactory.factory.plugin import Plugin
from pilotfactory.factory.registry import (
    KINDS,
    PluginLoadError,
    Registry,
    UnknownPlugin,
    default_registry,
)
from pilotfactory.factory.text import printable

MAX_QUEUE_FILES_BYTES = 4 * MAX_FILE_BYTES
"""Every queues.conf of one load together (queueConf files and queueDirConf's *.conf)."""
MAX_KEYS_READ = 250_000
"""Keys the queue sections read in all, each its own plus every [DEFAULT] one: beyond this a
load would take minutes (a factory of 1000 queues and 100 [DEFAULT] keys reads 100,000)."""
MAX_HINTS = 2000
"""Distinct unknown keys one load looks for a did-you-mean of (difflib is slow)."""


@dataclass(frozen=True)
class ConfigProblem:
    severity: str  # "error" disables the queue (or the factory for [Factory]); "warning" does not
    file: str
    section: str
    key: str | None
    message: str

    def __str__(self) -> str:
        """One line, whatever the file held (escaped, bounded)."""
        where = f"{printable(self.file)}: [{printable(self.section, 160)}]"
        if self.key:
            where += f" {printable(self.key, 160)}"
        return f"{where}: {self.severity}: {printable(self.message, 1000)}"


NAME_MAX = 128
_NAME = re.compile(r"[A-Za-z0-9_.@+:-]+")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a queue (or a factory), or None when it can.

    A queue name becomes a directory under baseLogDir, a ClassAd string, a cloud tag and an
    environment entry (``FACTORYQUEUE=<name>`` in a space-separated list), so only letters,
    digits and ``_ - . @ + :`` pass; not a leading ``.`` nor ``..`` (hidden files, parent
    directories); at most ``NAME_MAX`` characters. APF names such as
    ``ANALY_BNL_SHORT-gridgk01.racf.bnl.gov`` pass.
    """
    if not name:
        return "empty"
    if len(name) > NAME_MAX:
        return f"longer than {NAME_MAX} characters"
    if not _NAME.fullmatch(name):
        bad = next(c for c in name if not _NAME.fullmatch(c))
        return f"{bad!r} is not allowed (only letters, digits and _ - . @ + :)"
    if name.startswith("."):
        return "starts with '.'"
    if ".." in name:
        return "holds '..'"
    return None


def _value_problem(text: str) -> str | None:
    """What no value may hold, whatever its key: a control character (tab excepted)."""
    c = control_character(text, newline_ok=True)
    return None if c is None else f"control character U+{ord(c):04X} in the value; refused"


def _multiline_problem(text: str) -> str:
    return (
        f"got {shown(text)}: an indented line continues the value, and only list values "
        "may span lines; write it on one line"
    )


# ---------------------------------------------------------------------------- factory.conf


def _ip_literal(value: str) -> None:
    """A bind address is an IP literal: what is loopback is then known without a lookup."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("expected an IPv4 or IPv6 address (127.0.0.1, ::1, 0.0.0.0, ::)") from None


LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
FACTORY_PARAMS: tuple[Param, ...] = (
    Param("factoryId", str, "pilotfactory", "label stamped on every worker"),
    Param("factoryAdminEmail", str, None),
    Param(
        "factory.unhealthy_after",
        float,
        1800.0,
        "under systemd, stop the watchdog pings when no queue succeeded for this long (s)",
        minimum=1.0,
        maximum=DURATION_MAX,
    ),
    Param("factoryUser", str, None, "started as root, run switches to this user (as APF does)"),
    Param("allowRoot", bool, False, "let run keep root's privileges (refused otherwise)"),
    Param(
        "lockFile",
        str,
        None,
        "one daemon per factory id: the lock (unset: /run/pilotfactory, $XDG_RUNTIME_DIR or "
        "/tmp/pilotfactory-<uid>, file <factoryId>.lock)",
    ),
    Param("factorySMTPServer", str, None),
    Param("baseLogDir", str, "/var/log/pilotfactory"),
    Param("baseLogDirUrl", str, None),
    Param("queueConf", list, None, "comma list of queues.conf files; later ones win per key"),
    Param("queueDirConf", str, None, "a directory of *.conf, read after queueConf in name order"),
    Param("factory.sleep", float, 30.0, "main loop tick", minimum=0.0, maximum=DURATION_MAX),
    Param(
        "factory.refresh_timeout",
        float,
        30.0,
        "status sources not answered within this (s) fail their own queues closed for the "
        "cycle; the other queues go on without them (0: refresh inline, one after another)",
        minimum=0.0,
        maximum=3600.0,
    ),
    Param("cycles", int, None, "stop after this many cycles", minimum=1),
    Param("abort_no_queues", bool, False),
    Param("maxperfactory.maximum", int, None, minimum=0),
    Param("enablequeues", bool, True),
    Param("condor_backend", str, "bindings", choices=("bindings", "cli")),
    Param(
        "metrics_port", int, None, "serve Prometheus metrics on this port", minimum=1, maximum=65535
    ),
    Param(
        "metrics_address",
        str,
        "127.0.0.1",
        "the address metrics_port is bound to (IPv4 or IPv6, e.g. ::1; 0.0.0.0 or :: for all)",
        validate=_ip_literal,
    ),
    Param("statusFile", str, None, "the daemon writes its recent decisions here (JSON)"),
    Param(
        "stateFile",
        str,
        None,
        "what queues must not forget across a restart (back-off, breaker, confirmations)",
    ),
    Param(
        "factory.queueLogDir",
        str,
        None,
        "run writes each queue's log records also to <dir>/<queue>.log (unset: stderr only; "
        "not baseLogDir, which holds the pilots' batch logs)",
    ),
    Param(
        "factory.logMaxBytes",
        int,
        LOG_MAX_BYTES,
        "rotate a queue's log file at this size (0: never; for logrotate, the file is "
        "reopened when moved away)",
        minimum=0,
    ),
    Param(
        "factory.logBackups",
        int,
        LOG_BACKUPS,
        "rotated files kept per queue (<queue>.log.1 ...)",
        minimum=1,
        maximum=1000,
    ),
    Param("versionTag", str, None),
    Param("monitorURL", str, None),
    Param("proxyConf", str, None),
    Param("monitorConf", str, None),
    Param("mappingsConf", str, None),
    Param("cleanlogs.keepdays", int, None, minimum=0),
)
# Status-plugin settings that APF reads from [Factory] (they become plugin defaults).
_FACTORY_PLUGIN_PREFIXES = tuple(f"{k}." for k in KINDS)


@dataclass(frozen=True)
class FactoryConfig:
    factory_id: str
    base_log_dir: str
    queue_conf: tuple[str, ...]
    queue_dir_conf: str | None
    sleep: float
    cycles: int | None
    abort_no_queues: bool
    maxperfactory: int | None
    condor_backend: str
    metrics_port: int | None
    raw: Mapping[str, str]
    plugin_defaults: Mapping[str, str]
    """``<kind>.<plugin>.<param>`` keys from [Factory], defaults under the queues' own."""
    source: str = "<defaults>"
    status_file: str | None = None
    state_file: str | None = None
    refresh_timeout: float = 30.0
    factory_user: str | None = None
    unhealthy_after: float = 1800.0
    allow_root: bool = False
    lock_file: str | None = None
    metrics_address: str = "127.0.0.1"
    queue_log_dir: str | None = None
    log_max_bytes: int = LOG_MAX_BYTES
    log_backups: int = LOG_BACKUPS


def default_factory_config(queue_conf: Iterable[str] = ()) -> FactoryConfig:
    d = defaults(FACTORY_PARAMS)
    return FactoryConfig(
        factory_id=d["factoryId"],
        base_log_dir=d["baseLogDir"],
        queue_conf=tuple(queue_conf),
        queue_dir_conf=None,
        sleep=d["factory.sleep"],
        cycles=None,
        abort_no_queues=False,
        maxperfactory=None,
        condor_backend="bindings",
        metrics_port=None,
        raw={},
        plugin_defaults={},
    )


Duplicates = Mapping[tuple[str, str], tuple[str, Duplicate]]
"""``(section, key)`` -> (file, where it is written twice); key ``""``: the header."""


def _parse(
    files: Sequence[tuple[str, str]], max_reads: int | None = None
) -> tuple[IniParser, list[IniScan]]:
    """Scan every file on its own (syntax, duplicates), then read them in order into one
    parser, so a later file wins per key and one ``[DEFAULT]`` applies to all. With
    ``max_reads``, files whose sections would read more keys than that (each its own and every
    ``[DEFAULT]`` one) are refused before configparser spends time on them."""
    scans: list[IniScan] = []
    left = max_reads
    for name, text in files:
        scans.append(scan(text, name, left))
        if left is not None:
            left -= len(scans[-1].lines)
    if max_reads is not None:
        _check_size(scans, max_reads)
    parser = IniParser()
    for name, text in files:
        try:
            parser.read_string(text, source=name)
        except configparser.Error as exc:  # scan() refuses what configparser would: a guard
            raise ConfigError(f"{name}: not a valid INI file: {exc}") from None
    return parser, scans


def _check_size(scans: Sequence[IniScan], max_reads: int) -> None:
    sections = {s for sc in scans for s, k in sc.lines if not k and s != DEFAULT_SECTION}
    inherited = {k for sc in scans for s, k in sc.lines if k and s == DEFAULT_SECTION}
    own = {w for sc in scans for w in sc.lines if w[1] and w[0] != DEFAULT_SECTION}
    reads = len(sections) * len(inherited) + len(own)
    if reads > max_reads:
        raise ConfigError(
            f"{', '.join(sc.file for sc in scans)}: {len(sections)} sections, "
            f"{len(inherited)} [DEFAULT] keys, {len(own)} keys of their own: {reads} keys to "
            f"read, more than {max_reads}; refused"
        )


def _provenance(scans: Iterable[IniScan]) -> dict[tuple[str, str], str]:
    """Which file last set each (section, key): for error messages after merging."""
    return {where: sc.file for sc in scans for where in sc.lines}


def _duplicates(scans: Iterable[IniScan]) -> Duplicates:
    out: dict[tuple[str, str], tuple[str, Duplicate]] = {}
    for sc in scans:
        for d in sc.duplicates:
            out.setdefault((d.section, d.key), (sc.file, d))
    return out


def _duplicate_problems(
    dups: Duplicates, where: Mapping[tuple[str, str], str], section: str, keys: Iterable[str]
) -> list[tuple[str, str | None, str]]:
    """(file, key, message) for what ``section`` has written twice in one file: its header, its
    own keys, and the ``[DEFAULT]`` keys it inherits. Which of the two was meant is a guess
    configparser makes silently (the last); here the section is refused instead."""
    out: list[tuple[str, str | None, str]] = []
    if (hit := dups.get((section, ""))) is not None:
        file, d = hit
        out.append((file, None, f"line {d.line}: [{section}] again (first at line {d.first})"))
    for key in keys:
        own = (section, key) in where
        hit = dups.get((section, key)) or (None if own else dups.get((DEFAULT_SECTION, key)))
        if hit is not None:
            file, d = hit
            place = "" if own else " in [DEFAULT]"
            out.append(
                (file, key, f"line {d.line}: set again{place} (first at line {d.first}); keep one")
            )
    return out


def load_factory_config(path: str) -> tuple[FactoryConfig, list[ConfigProblem]]:
    """Read factory.conf; relative queueConf paths are taken relative to its directory."""
    problems: list[ConfigProblem] = []
    parser, scans = _parse([(path, read_text(path))], MAX_KEYS_READ)
    if not parser.has_section("Factory"):
        raise ConfigError(f"{path}: no [Factory] section")
    where = _provenance(scans)
    keys = parser.options("Factory")
    for file, key, msg in _duplicate_problems(_duplicates(scans), where, "Factory", keys):
        problems.append(ConfigProblem("error", file, "Factory", key, msg))
    known = {p.name: p for p in FACTORY_PARAMS}
    hint = _Hints(known)
    values = defaults(FACTORY_PARAMS)
    plugin_defaults: dict[str, str] = {}
    raw: dict[str, str] = {}
    for key in keys:
        try:
            text = parser.get("Factory", key)
        except configparser.Error as exc:
            problems.append(ConfigProblem("error", path, "Factory", key, _interp_msg(exc)))
            continue
        if (why := _value_problem(text)) is not None:
            problems.append(ConfigProblem("error", path, "Factory", key, why))
            continue
        raw[key] = text
        if key.startswith(_FACTORY_PLUGIN_PREFIXES):
            plugin_defaults[key] = text
            continue
        param = known.get(key)
        if param is None:
            if "\n" in text.strip():
                problems.append(
                    ConfigProblem("error", path, "Factory", key, _multiline_problem(text))
                )
                continue
            problems.append(
                ConfigProblem("warning", path, "Factory", key, "unknown key" + hint(key))
            )
            continue
        try:
            values[key] = param.parse(text)
        except ParamValueError as exc:
            problems.append(ConfigProblem("error", path, "Factory", key, str(exc)))
    if (why := name_problem(values["factoryId"])) is not None:
        msg = f"factoryId {shown(values['factoryId'])}: {why}"
        problems.append(ConfigProblem("error", path, "Factory", "factoryId", msg))
        values["factoryId"] = defaults(FACTORY_PARAMS)["factoryId"]
    base = os.path.dirname(os.path.abspath(path))
    queue_conf = tuple(_resolve(p, base) for p in (values["queueConf"] or []))
    dirconf = values["queueDirConf"]
    queue_logs = values["factory.queueLogDir"]
    cfg = FactoryConfig(
        factory_id=values["factoryId"],
        base_log_dir=values["baseLogDir"],
        queue_conf=queue_conf,
        queue_dir_conf=_resolve(dirconf, base) if dirconf else None,
        sleep=values["factory.sleep"],
        cycles=values["cycles"],
        abort_no_queues=values["abort_no_queues"],
        maxperfactory=values["maxperfactory.maximum"],
        condor_backend=values["condor_backend"],
        metrics_port=values["metrics_port"],
        raw=raw,
        plugin_defaults=plugin_defaults,
        source=path,
        status_file=_resolve(values["statusFile"], base) if values["statusFile"] else None,
        state_file=_resolve(values["stateFile"], base) if values["stateFile"] else None,
        refresh_timeout=values["factory.refresh_timeout"],
        factory_user=values["factoryUser"],
        unhealthy_after=values["factory.unhealthy_after"],
        allow_root=values["allowRoot"],
        lock_file=_resolve(values["lockFile"], base) if values["lockFile"] else None,
        metrics_address=values["metrics_address"],
        queue_log_dir=_resolve(queue_logs, base) if queue_logs else None,
        log_max_bytes=values["factory.logMaxBytes"],
        log_backups=values["factory.logBackups"],
    )
    return cfg, problems


def _resolve(path: str, base: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://") :]
    return path if os.path.isabs(path) else os.path.join(base, path)


def _interp_msg(exc: configparser.Error) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, ValueTooLargeError):
        return text
    hint = " (write %% for a literal %)" if "'%'" in text else ""
    return f"interpolation failed: {text}{hint}"


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ---------------------------------------------------------------------------- queues.conf

QUEUE_PARAMS: tuple[Param, ...] = (
    Param("enabled", bool, True),
    Param("wmsqueue", str, None, "PanDA site, or the MATCH_APF_QUEUE label for Condor WMS"),
    Param("wmsstatusplugin", str, None),
    Param("batchstatusplugin", str, None),
    Param("batchsubmitplugin", str, None),
    Param("schedplugin", list, None),
    Param(
        "apfqueue.sleep",
        float,
        360.0,
        "seconds between this queue's cycles",
        minimum=0.0,
        maximum=DURATION_MAX,
    ),
    Param("executable", str, None),
    Param("executable.arguments", str, None),
    Param("monitorsection", str, None),
    Param("batchqueue", str, None),
    Param("cloud", str, None),
    Param("vo", str, None),
    Param("cleanlogs.keepdays", int, None, minimum=0),
    Param("override", bool, None),
    Param("autofill", bool, None),
    # Planner and safety rails (pilotfactory's own; declared with the planner).
    *PLANNER_PARAMS,
)
_QUEUE_KEYS = tuple(p.name for p in QUEUE_PARAMS)
_PLUGIN_SELECTORS = {
    "wmsstatus": "wmsstatusplugin",
    "batchstatus": "batchstatusplugin",
    "batchsubmit": "batchsubmitplugin",
}


@dataclass(frozen=True)
class PluginSpec:
    kind: str
    name: str
    cls: type[Plugin]
    params: Mapping[str, Any]


@dataclass(frozen=True)
class QueueConfig:
    name: str
    wmsqueue: str
    wmsstatus: PluginSpec
    batchstatus: PluginSpec
    batchsubmit: PluginSpec
    sched: tuple[PluginSpec, ...]
    sleep: float
    planner: PlannerSettings
    generic: Mapping[str, str]
    source: str
    enabled: bool = True


@dataclass
class QueuesResult:
    queues: list[QueueConfig] = field(default_factory=list)
    problems: list[ConfigProblem] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[ConfigProblem]:
        return [p for p in self.problems if p.severity == "error"]


def _read_queue_files(paths: Iterable[str], dirconf: str | None) -> list[tuple[str, str]]:
    """(file, text) of every queues.conf in reading order: queueConf's, then queueDirConf's
    ``*.conf`` in name order; all together at most ``MAX_QUEUE_FILES_BYTES``."""
    names = list(paths)
    if dirconf:
        if not os.path.isdir(dirconf):
            raise ConfigError(f"{dirconf}: queueDirConf is not a directory")
        names += sorted(glob.glob(os.path.join(glob.escape(dirconf), "*.conf")))
    files: list[tuple[str, str]] = []
    total = 0
    for name in names:
        text = read_text(name)
        total += len(text)
        if total > MAX_QUEUE_FILES_BYTES:
            raise ConfigError(
                f"{name}: the queue files reach {MAX_QUEUE_FILES_BYTES >> 20} MiB in all; refused"
            )
        files.append((name, text))
    return files


def load_queues(
    paths: Iterable[str],
    dirconf: str | None = None,
    factory: FactoryConfig | None = None,
    registry: Registry | None = None,
) -> QueuesResult:
    """Read and validate every queue; errors disable only their own queue."""
    registry = registry or default_registry()
    factory = factory or default_factory_config()
    result = QueuesResult()
    paths = list(paths)
    if not paths and not dirconf:
        raise ConfigError("no queues.conf given (queueConf / queueDirConf / -q)")
    parser, scans = _parse(_read_queue_files(paths, dirconf), MAX_KEYS_READ)
    load = _Load(_provenance(scans), _duplicates(scans))
    for section in parser.sections():
        qcfg, problems, enabled = _load_queue(parser, section, load, factory, registry)
        result.problems.extend(problems)
        if not enabled:
            result.disabled.append(section)
        elif qcfg is None:
            result.broken.append(section)
        else:
            result.queues.append(qcfg)
    return result


class _Hints:
    """Did-you-mean for unknown keys, once per key; none past ``MAX_HINTS`` distinct keys
    (difflib takes ~70 us a key; a hostile file has 10**5 keys)."""

    def __init__(self, candidates: Iterable[str]) -> None:
        self.candidates = tuple(candidates)
        self.seen: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        if key not in self.seen:
            if len(self.seen) >= MAX_HINTS:
                return ""
            self.seen[key] = _did_you_mean(key, self.candidates)
        return self.seen[key]


@dataclass
class _Load:
    """What every queue section of one load shares."""

    where: Mapping[tuple[str, str], str]
    """The file that last set each (section, key)."""
    dups: Duplicates
    queue_key_hint: _Hints = field(default_factory=lambda: _Hints(_QUEUE_KEYS))


@dataclass
class _Section:
    """One queue section being loaded: where its keys came from, and what is wrong with it."""

    name: str
    load: _Load
    problems: list[ConfigProblem] = field(default_factory=list)

    @property
    def where(self) -> Mapping[tuple[str, str], str]:
        return self.load.where

    def origin(self, key: str) -> str:
        """The file that set ``key`` for this section, else the section's own file."""
        w, name = self.where, self.name
        return (
            w.get((name, key))
            or w.get((DEFAULT_SECTION, key))
            or w.get((name, ""))
            or "<queues.conf>"
        )

    def problem(self, severity: str, key: str | None, msg: str, file: str | None = None) -> None:
        file = file or (self.origin(key) if key else self.origin(""))
        self.problems.append(ConfigProblem(severity, file, self.name, key, msg))

    @property
    def broken(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


@dataclass
class _Classified:
    generic: dict[str, Any]
    """Typed queue settings (QUEUE_PARAMS), defaults filled in."""
    generic_raw: dict[str, str]
    """Every non-plugin key as written (site wrappers read unknown ones)."""
    plugin_keys: dict[str, str]


def _read_section(parser: configparser.ConfigParser, sec: _Section) -> dict[str, str]:
    """Step 1, read: every key, interpolated; an interpolation error, a control character or a
    key written twice in one file is that key's problem."""
    keys = parser.options(sec.name)
    for file, key, msg in _duplicate_problems(sec.load.dups, sec.where, sec.name, keys):
        sec.problem("error", key, msg, file)
    values: dict[str, str] = {}
    for key in keys:
        try:
            text = parser.get(sec.name, key)
        except configparser.Error as exc:
            sec.problem("error", key, _interp_msg(exc))
            continue
        if (why := _value_problem(text)) is not None:
            sec.problem("error", key, why)
            continue
        values[key] = text
    return values


def _classify(values: Mapping[str, str], sec: _Section) -> _Classified:
    """Step 2, classify: plugin keys apart, queue settings parsed, unknown keys kept."""
    generic_params = {p.name: p for p in QUEUE_PARAMS}
    out = _Classified(defaults(QUEUE_PARAMS), {}, {})
    for key, text in values.items():
        if key.startswith(_FACTORY_PLUGIN_PREFIXES) and key not in generic_params:
            out.plugin_keys[key] = text
            continue
        out.generic_raw[key] = text
        param = generic_params.get(key)
        if param is None:
            if "\n" in text.strip():  # site wrappers read unknown keys: one line each
                sec.problem("error", key, _multiline_problem(text))
            elif hint := sec.load.queue_key_hint(key):
                sec.problem("warning", key, "unknown key" + hint)
            continue
        try:
            out.generic[key] = param.parse(text)
        except ParamValueError as exc:
            sec.problem("error", key, str(exc))
    return out


def _validate_plugins(
    c: _Classified, sec: _Section, factory: FactoryConfig, registry: Registry
) -> tuple[dict[str, PluginSpec | None], list[PluginSpec]]:
    """Step 3, validate: each selected plugin found and its parameters parsed; keys for a
    plugin the queue does not use are reported."""
    specs: dict[str, PluginSpec | None] = {}
    for kind, selector in _PLUGIN_SELECTORS.items():
        name = c.generic.get(selector)
        if not name:
            sec.problem("error", selector, f"missing: every queue needs a {kind} plugin")
            specs[kind] = None
            continue
        specs[kind] = _plugin_spec(kind, name, selector, c.plugin_keys, factory, registry, sec)
    sched: list[PluginSpec] = []
    names = c.generic.get("schedplugin")
    if not names:
        sec.problem("error", "schedplugin", "missing: every queue needs a scheduler chain")
    for name in names or ():
        spec = _plugin_spec("sched", name, "schedplugin", c.plugin_keys, factory, registry, sec)
        if spec is not None:
            sched.append(spec)
    used = {ns for spec in [*specs.values(), *sched] if spec for ns in spec.cls.namespaces()}
    # a plugin whose parameters were refused still owns its keys (no second, wrong complaint)
    named = [(kind, c.generic.get(sel)) for kind, sel in _PLUGIN_SELECTORS.items()]
    named += [("sched", name) for name in names or ()]
    for kind, name in named:
        if name:
            with contextlib.suppress(UnknownPlugin, PluginLoadError):
                used.update(registry.get(kind, name).namespaces())
    for key in c.plugin_keys:
        # A key for a plugin this queue does not use: harmless in [DEFAULT], odd in a queue.
        if not any(key.startswith(ns) for ns in used) and (sec.name, key) in sec.where:
            sec.problem("warning", key, "set for a plugin this queue does not use; ignored")
    wmsqueue = c.generic.get("wmsqueue")
    if wmsqueue and (why := name_problem(wmsqueue)) is not None:
        sec.problem("error", "wmsqueue", f"got {shown(wmsqueue)}: {why}")
    return specs, sched


def _assemble(
    c: _Classified, sec: _Section, specs: Mapping[str, PluginSpec | None], sched: list[PluginSpec]
) -> QueueConfig:
    """Step 4, assemble: the typed queue (only called when nothing is broken)."""
    wms, batch, submit = specs["wmsstatus"], specs["batchstatus"], specs["batchsubmit"]
    assert wms is not None and batch is not None and submit is not None
    return QueueConfig(
        name=sec.name,
        wmsqueue=c.generic["wmsqueue"] or sec.name,
        wmsstatus=wms,
        batchstatus=batch,
        batchsubmit=submit,
        sched=tuple(sched),
        sleep=c.generic["apfqueue.sleep"],
        planner=PlannerSettings.from_values(c.generic),
        generic=c.generic_raw,
        source=sec.origin(""),
    )


def _load_queue(
    parser: configparser.ConfigParser,
    section: str,
    load: _Load,
    factory: FactoryConfig,
    registry: Registry,
) -> tuple[QueueConfig | None, list[ConfigProblem], bool]:
    """(queue or None if broken, problems, enabled): name, read, classify, validate, assemble."""
    sec = _Section(section, load)
    if (why := name_problem(section)) is not None:
        sec.problem("error", None, f"queue name {shown(section)}: {why}")
        return None, sec.problems, True
    classified = _classify(_read_section(parser, sec), sec)
    if not classified.generic["enabled"]:
        return None, sec.problems, False
    specs, sched = _validate_plugins(classified, sec, factory, registry)
    if sec.broken:
        return None, sec.problems, True
    return _assemble(classified, sec, specs, sched), sec.problems, True


def _param_index(cls: type[Plugin]) -> dict[str, Param]:
    """A plugin's parameters by name and by every alias."""
    by_name: dict[str, Param] = {}
    for p in cls.PARAMS:
        by_name[p.name] = p
        for alias in p.aliases:
            by_name[alias] = p
    return by_name


def _layers(
    kind: str, cls: type[Plugin], factory: FactoryConfig, plugin_keys: Mapping[str, str]
) -> list[tuple[str, str, bool]]:
    """(key, text, from [Factory]) in the order they apply: [Factory] family defaults, then
    the plugin's own [Factory] keys, then the queue's keys, so the most specific wins."""
    layers = [(k, v, True) for k, v in factory.plugin_defaults.items()]
    layers += [(k, v, False) for k, v in plugin_keys.items()]
    if cls.FAMILY:
        fam = f"{kind}.{cls.FAMILY.lower()}."
        layers.sort(key=lambda item: not (item[2] and item[0].startswith(fam)))
    return layers


def _find_param(by_name: Mapping[str, Param], rest: str) -> tuple[Param | None, str | None]:
    """The parameter a key names, and the sub-key for ``<dict param>.<subkey> = value``."""
    if (param := by_name.get(rest)) is not None:
        return param, None
    for pname, p in by_name.items():
        if p.type is dict and rest.startswith(pname + "."):
            return p, rest[len(pname) + 1 :]
    return None, None


def _unknown_param(kind: str, cls: type[Plugin], rest: str, text: str) -> str:
    known = sorted({p.name for p in cls.PARAMS})
    hint = _did_you_mean(rest, known)
    if any(p.name == rest for p in QUEUE_PARAMS):
        hint = f" (it is a queue setting: write {rest} = {text.strip()})"
    return (
        f"unknown parameter {rest!r} for {kind} plugin {cls.NAME}{hint}; "
        f"known: {', '.join(known) or 'none'}"
    )


def _set_param(params: dict[str, Any], param: Param, sub: str | None, text: str) -> None:
    """Dict parameters merge (whole value or one sub-key); others replace."""
    if sub is not None:
        if "\n" in text.strip():
            raise ParamValueError(_multiline_problem(text))
        params[param.name] = {**(params.get(param.name) or {}), sub: text.strip()}
    elif param.type is dict:
        params[param.name] = {**(params.get(param.name) or {}), **param.parse(text)}
    else:
        params[param.name] = param.parse(text)


def _plugin_spec(
    kind: str,
    name: str,
    selector: str,
    plugin_keys: Mapping[str, str],
    factory: FactoryConfig,
    registry: Registry,
    sec: _Section,
) -> PluginSpec | None:
    """One plugin of a queue: its class, and its parameters from every layer that sets them."""
    try:
        cls = registry.get(kind, name)
    except (UnknownPlugin, PluginLoadError) as exc:
        sec.problem("error", selector, str(exc))
        return None
    params = defaults(cls.PARAMS)
    by_name = _param_index(cls)
    ok = True
    for key, text, from_factory in _layers(kind, cls, factory, plugin_keys):
        spaces = cls.factory_namespaces() if from_factory else cls.namespaces()
        ns = next((n for n in spaces if key.startswith(n)), None)
        if ns is None:
            continue
        rest = key[len(ns) :]
        param, sub = _find_param(by_name, rest)
        if param is None:
            if not from_factory:  # [Factory] may carry settings for other plugin versions
                sec.problem("error", key, _unknown_param(kind, cls, rest, text))
                ok = False
            continue
        try:
            _set_param(params, param, sub, text)
        except ParamValueError as exc:
            sec.problem("error", key, str(exc))
            ok = False
    for p in cls.PARAMS:
        if p.required and (params.get(p.name) is None or str(params[p.name]).strip() == ""):
            key = f"{cls.namespaces()[0]}{p.name}"
            what = f" ({p.doc})" if p.doc else ""
            sec.problem("error", key, f"missing: {kind} plugin {cls.NAME} needs it{what}")
            ok = False
    return PluginSpec(kind=kind, name=cls.NAME, cls=cls, params=params) if ok else None
