"""factory.conf and queues.conf, read the way AutoPyFactory reads them.

APF semantics kept: ``[DEFAULT]`` inheritance and ``%(key)s`` interpolation, ``queueConf`` as a
comma list of files (a later file wins per key), ``queueDirConf`` read as one file,
case-sensitive keys, legacy plugin names. Values are parsed once into a typed ``QueueConfig``;
every problem names file, section and key. A broken section disables that queue only.
"""

from __future__ import annotations

import configparser
import difflib
import glob
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pilotfactory.factory.params import Param, ParamValueError, defaults
from pilotfactory.factory.planner import PLANNER_PARAMS, PlannerSettings
from pilotfactory.factory.plugin import Plugin
from pilotfactory.factory.registry import (
    KINDS,
    PluginLoadError,
    Registry,
    UnknownPlugin,
    default_registry,
)


class ConfigError(Exception):
    """A configuration problem that stops loading (a file that cannot be read at all)."""


@dataclass(frozen=True)
class ConfigProblem:
    severity: str  # "error" disables the queue (or the factory for [Factory]); "warning" does not
    file: str
    section: str
    key: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: [{self.section}]"
        if self.key:
            where += f" {self.key}"
        return f"{where}: {self.severity}: {self.message}"


# ---------------------------------------------------------------------------- factory.conf

FACTORY_PARAMS: tuple[Param, ...] = (
    Param("factoryId", str, "pilotfactory", "label stamped on every worker"),
    Param("factoryAdminEmail", str, None),
    Param("factoryUser", str, None),
    Param("factorySMTPServer", str, None),
    Param("baseLogDir", str, "/var/log/pilotfactory"),
    Param("baseLogDirUrl", str, None),
    Param("queueConf", list, None, "comma list of queues.conf files; later ones win per key"),
    Param("queueDirConf", str, None, "a directory of *.conf read as one file"),
    Param("factory.sleep", float, 30.0, "main loop tick", minimum=0.0),
    Param("cycles", int, None, "stop after this many cycles", minimum=1),
    Param("abort_no_queues", bool, False),
    Param("maxperfactory.maximum", int, None),
    Param("enablequeues", bool, True),
    Param("condor_backend", str, "bindings", choices=("bindings", "cli")),
    Param("metrics_port", int, None, "serve Prometheus metrics on this port"),
    Param("statusFile", str, None, "the daemon writes its recent decisions here (JSON)"),
    Param("versionTag", str, None),
    Param("monitorURL", str, None),
    Param("proxyConf", str, None),
    Param("monitorConf", str, None),
    Param("mappingsConf", str, None),
    Param("cleanlogs.keepdays", int, None),
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


def _new_parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=configparser.BasicInterpolation(), strict=False, default_section="DEFAULT"
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # APF keys are case-sensitive
    return parser


def _read_text(path: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://") :]
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_factory_config(path: str) -> tuple[FactoryConfig, list[ConfigProblem]]:
    """Read factory.conf; relative queueConf paths are taken relative to its directory."""
    problems: list[ConfigProblem] = []
    parser = _new_parser()
    try:
        parser.read_string(_read_text(path), source=path)
    except configparser.Error as exc:
        raise ConfigError(f"{path}: not a valid INI file: {exc}") from None
    if not parser.has_section("Factory"):
        raise ConfigError(f"{path}: no [Factory] section")
    known = {p.name: p for p in FACTORY_PARAMS}
    values = defaults(FACTORY_PARAMS)
    plugin_defaults: dict[str, str] = {}
    raw: dict[str, str] = {}
    for key in parser.options("Factory"):
        try:
            text = parser.get("Factory", key)
        except configparser.Error as exc:
            problems.append(ConfigProblem("error", path, "Factory", key, _interp_msg(exc)))
            continue
        raw[key] = text
        if key.startswith(_FACTORY_PLUGIN_PREFIXES):
            plugin_defaults[key] = text
            continue
        param = known.get(key)
        if param is None:
            problems.append(
                ConfigProblem(
                    "warning", path, "Factory", key, "unknown key" + _did_you_mean(key, known)
                )
            )
            continue
        try:
            values[key] = param.parse(text)
        except ParamValueError as exc:
            problems.append(ConfigProblem("error", path, "Factory", key, str(exc)))
    base = os.path.dirname(os.path.abspath(path))
    queue_conf = tuple(_resolve(p, base) for p in (values["queueConf"] or []))
    dirconf = values["queueDirConf"]
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
    )
    return cfg, problems


def _resolve(path: str, base: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://") :]
    return path if os.path.isabs(path) else os.path.join(base, path)


def _interp_msg(exc: configparser.Error) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
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
    Param("apfqueue.sleep", float, 360.0, "seconds between this queue's cycles", minimum=0.0),
    Param("executable", str, None),
    Param("executable.arguments", str, None),
    Param("monitorsection", str, None),
    Param("batchqueue", str, None),
    Param("cloud", str, None),
    Param("vo", str, None),
    Param("cleanlogs.keepdays", int, None),
    Param("override", bool, None),
    Param("autofill", bool, None),
    # Planner and safety rails (pilotfactory's own; declared with the planner).
    *PLANNER_PARAMS,
)
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


def _provenance(files: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Which file last set each (section, key): for error messages after merging."""
    where: dict[tuple[str, str], str] = {}
    for name, text in files:
        raw = configparser.RawConfigParser(strict=False)
        raw.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            raw.read_string(text, source=name)
        except configparser.Error:
            continue
        for key in raw.defaults():
            where[("DEFAULT", key)] = name
        for section in raw.sections():
            where[(section, "")] = name
            for key in raw._sections[section]:  # type: ignore[attr-defined]
                where[(section, key)] = name
    return where


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
    files: list[tuple[str, str]] = []
    for path in paths:
        files.append((path, _read_text(path)))
    if dirconf:
        if not os.path.isdir(dirconf):
            raise ConfigError(f"{dirconf}: queueDirConf is not a directory")
        # Read as one file, so one [DEFAULT] applies to all of them (APF).
        parts = sorted(glob.glob(os.path.join(dirconf, "*.conf")))
        files.append((dirconf, "\n".join(_read_text(p) for p in parts)))
    if not files:
        raise ConfigError("no queues.conf given (queueConf / queueDirConf / -q)")
    parser = _new_parser()
    for name, text in files:
        try:
            parser.read_string(text, source=name)
        except configparser.Error as exc:
            raise ConfigError(f"{name}: not a valid INI file: {exc}") from None
    where = _provenance(files)
    for section in parser.sections():
        qcfg, problems, enabled = _load_queue(parser, section, where, factory, registry)
        result.problems.extend(problems)
        if not enabled:
            result.disabled.append(section)
        elif qcfg is None:
            result.broken.append(section)
        else:
            result.queues.append(qcfg)
    return result


def _load_queue(
    parser: configparser.ConfigParser,
    section: str,
    where: Mapping[tuple[str, str], str],
    factory: FactoryConfig,
    registry: Registry,
) -> tuple[QueueConfig | None, list[ConfigProblem], bool]:
    problems: list[ConfigProblem] = []

    def origin(key: str) -> str:
        return where.get((section, key)) or where.get(("DEFAULT", key)) or "<queues.conf>"

    def problem(severity: str, key: str | None, msg: str) -> None:
        problems.append(
            ConfigProblem(severity, origin(key) if key else origin(""), section, key, msg)
        )

    values: dict[str, str] = {}
    for key in parser.options(section):
        try:
            values[key] = parser.get(section, key)
        except configparser.Error as exc:
            problem("error", key, _interp_msg(exc))

    generic_params = {p.name: p for p in QUEUE_PARAMS}
    generic: dict[str, Any] = defaults(QUEUE_PARAMS)
    generic_raw: dict[str, str] = {}
    plugin_keys: dict[str, str] = {}
    for key, text in values.items():
        if key.startswith(_FACTORY_PLUGIN_PREFIXES) and key not in generic_params:
            plugin_keys[key] = text
            continue
        param = generic_params.get(key)
        if param is None:
            # Unknown generic keys are kept (site wrappers read them) but reported.
            generic_raw[key] = text
            hint = _did_you_mean(key, generic_params)
            if hint:
                problem("warning", key, "unknown key" + hint)
            continue
        generic_raw[key] = text
        try:
            generic[key] = param.parse(text)
        except ParamValueError as exc:
            problem("error", key, str(exc))

    if not generic["enabled"]:
        return None, problems, False

    specs: dict[str, PluginSpec | None] = {}
    for kind, selector in _PLUGIN_SELECTORS.items():
        name = generic.get(selector)
        if not name:
            problem("error", selector, f"missing: every queue needs a {kind} plugin")
            specs[kind] = None
            continue
        specs[kind] = _plugin_spec(kind, name, selector, plugin_keys, factory, registry, problem)
    sched_specs: list[PluginSpec] = []
    sched_names = generic.get("schedplugin")
    if not sched_names:
        problem("error", "schedplugin", "missing: every queue needs a scheduler chain")
    else:
        for name in sched_names:
            spec = _plugin_spec(
                "sched", name, "schedplugin", plugin_keys, factory, registry, problem
            )
            if spec is not None:
                sched_specs.append(spec)

    used = {
        ns
        for spec in [*specs.values(), *sched_specs]
        if spec is not None
        for ns in spec.cls.namespaces()
    }
    for key in plugin_keys:
        # A key for a plugin this queue does not use: harmless in [DEFAULT], odd in a queue.
        if not any(key.startswith(ns) for ns in used) and (section, key) in where:
            problem("warning", key, "set for a plugin this queue does not use; ignored")

    retire_cap = generic["max_retire_per_cycle"]
    if retire_cap is not None and not _valid_cap(retire_cap):
        problem("error", "max_retire_per_cycle", f"got {retire_cap!r}, expected N or N%")
    wmsqueue = generic["wmsqueue"] or section
    if any(p.severity == "error" for p in problems):
        return None, problems, True
    wms, batch, submit = specs["wmsstatus"], specs["batchstatus"], specs["batchsubmit"]
    assert wms is not None and batch is not None and submit is not None
    planner = PlannerSettings.from_values(generic)
    qcfg = QueueConfig(
        name=section,
        wmsqueue=wmsqueue,
        wmsstatus=wms,
        batchstatus=batch,
        batchsubmit=submit,
        sched=tuple(sched_specs),
        sleep=generic["apfqueue.sleep"],
        planner=planner,
        generic=generic_raw,
        source=origin(""),
    )
    return qcfg, problems, True


def _valid_cap(text: str) -> bool:
    t = text.strip().rstrip("%").strip()
    return t.isdigit()


def _plugin_spec(
    kind: str,
    name: str,
    selector: str,
    plugin_keys: Mapping[str, str],
    factory: FactoryConfig,
    registry: Registry,
    problem: Any,
) -> PluginSpec | None:
    try:
        cls = registry.get(kind, name)
    except UnknownPlugin as exc:
        problem("error", selector, str(exc))
        return None
    except PluginLoadError as exc:
        problem("error", selector, str(exc))
        return None
    params = defaults(cls.PARAMS)
    by_name: dict[str, Param] = {}
    for p in cls.PARAMS:
        by_name[p.name] = p
        for alias in p.aliases:
            by_name[alias] = p
    ok = True
    # [Factory] defaults first, then the queue's own keys win.
    layers = [(k, v, True) for k, v in factory.plugin_defaults.items()]
    layers += [(k, v, False) for k, v in plugin_keys.items()]
    if cls.FAMILY:  # family defaults first, so the plugin's own [Factory] keys win
        fam = f"{kind}.{cls.FAMILY.lower()}."
        layers.sort(key=lambda item: not (item[2] and item[0].startswith(fam)))
    for key, text, from_factory in layers:
        spaces = cls.factory_namespaces() if from_factory else cls.namespaces()
        ns = next((n for n in spaces if key.startswith(n)), None)
        if ns is None:
            continue
        rest = key[len(ns) :]
        param = by_name.get(rest)
        sub: str | None = None
        if param is None:
            # dict params also take "<name>.<subkey> = value"
            for pname, p in by_name.items():
                if p.type is dict and rest.startswith(pname + "."):
                    param, sub = p, rest[len(pname) + 1 :]
                    break
        if param is None:
            if from_factory:
                continue  # [Factory] may carry settings for other plugin versions
            known = sorted({p.name for p in cls.PARAMS})
            hint = _did_you_mean(rest, known)
            if any(p.name == rest for p in QUEUE_PARAMS):
                hint = f" (it is a queue setting: write {rest} = {text.strip()})"
            problem(
                "error",
                key,
                f"unknown parameter {rest!r} for {kind} plugin {cls.NAME}{hint}; "
                f"known: {', '.join(known) or 'none'}",
            )
            ok = False
            continue
        try:
            if sub is not None:
                current = dict(params.get(param.name) or {})
                current[sub] = text.strip()
                params[param.name] = current
            elif param.type is dict:
                current = dict(params.get(param.name) or {})
                current.update(param.parse(text))
                params[param.name] = current
            else:
                params[param.name] = param.parse(text)
        except ParamValueError as exc:
            problem("error", key, str(exc))
            ok = False
    if not ok:
        return None
    return PluginSpec(kind=kind, name=cls.NAME, cls=cls, params=params)
