"""Plugin discovery: names and legacy aliases, unknown names, broken entry points, built-ins."""

from __future__ import annotations

import configparser
import importlib
import logging
from collections.abc import Iterable
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from pilotfactory.factory import registry as registry_mod
from pilotfactory.factory.plugin import Plugin, SchedContext, SchedPlugin, WMSStatusPlugin
from pilotfactory.factory.registry import (
    KINDS,
    PluginLoadError,
    Registry,
    UnknownPlugin,
    default_registry,
    suggest,
)
from pilotfactory.plugins.wmsstatus.condor import CondorWMSStatus
from tests.conftest import ROOT

HERE = __name__


class Good(SchedPlugin):
    NAME = "Good"
    ALIASES = ("OldGood", "Legacy-Good")

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        return 1, "Good"


class Other(SchedPlugin):
    NAME = "Other"


class SomeWMS(WMSStatusPlugin):
    NAME = "SomeWMS"


NOT_A_CLASS = Good.calc


def ep(name: str, target: str, kind: str = "sched") -> EntryPoint:
    return EntryPoint(name=name, value=target, group=f"pilotfactory.{kind}")


def make(monkeypatch: pytest.MonkeyPatch, eps: Iterable[EntryPoint]) -> Registry:
    """A registry over exactly these entry points (the module's discovery seam)."""
    listed = list(eps)

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [e for e in listed if e.group == group]

    monkeypatch.setattr(registry_mod, "entry_points", entry_points)
    return Registry()


GOOD = ep("Good", f"{HERE}:Good")
OTHER = ep("Other", f"{HERE}:Other")
BROKEN = ep("Broken", "pilotfactory_no_such_module_for_tests:Thing")


# ---------------------------------------------------------------------------- lookup


@pytest.mark.parametrize("name", ["Good", "good", "GOOD", "  Good\t"])
def test_lookup_by_name_is_case_insensitive(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    reg = make(monkeypatch, [GOOD, OTHER])
    assert reg.get("sched", name) is Good


@pytest.mark.parametrize("alias", ["OldGood", "oldgood", "LEGACY-GOOD", " Legacy-Good "])
def test_lookup_by_legacy_alias(monkeypatch: pytest.MonkeyPatch, alias: str) -> None:
    reg = make(monkeypatch, [OTHER, GOOD])
    assert reg.get("sched", alias) is Good


def test_names_are_per_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = make(monkeypatch, [GOOD, OTHER, ep("SomeWMS", f"{HERE}:SomeWMS", "wmsstatus")])
    assert sorted(reg.names("sched")) == ["Good", "Other"]
    assert reg.names("wmsstatus") == ["SomeWMS"]
    assert reg.names("batchstatus") == []
    assert reg.get("wmsstatus", "somewms") is SomeWMS
    with pytest.raises(UnknownPlugin):
        reg.get("batchsubmit", "Good")  # a sched name is not a batchsubmit one


def test_a_name_wins_over_another_plugins_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = make(monkeypatch, [GOOD, ep("OldGood", f"{HERE}:Other")])
    assert reg.get("sched", "OldGood") is Other
    assert reg.get("sched", "Legacy-Good") is Good


def test_a_class_is_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    real = EntryPoint.load

    def counting(self: EntryPoint) -> object:
        loads.append(self.name)
        return real(self)

    monkeypatch.setattr(EntryPoint, "load", counting)
    reg = make(monkeypatch, [GOOD, OTHER])
    for name in ("Good", "good", "OldGood", "Good"):
        assert reg.get("sched", name) is Good
    assert sorted(loads) == ["Good", "Other"]  # Other once, for the alias scan


# ---------------------------------------------------------------------------- unknown names


def test_unknown_name_names_the_kind_the_name_and_the_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reg = make(monkeypatch, [OTHER, GOOD])
    with pytest.raises(UnknownPlugin) as err:
        reg.get("sched", "Nope")
    exc = err.value
    assert (exc.kind, exc.name) == ("sched", "Nope")
    assert isinstance(exc, LookupError)
    assert sorted(exc.known) == ["Good", "Legacy-Good", "OldGood", "Other"]
    assert str(exc) == "unknown sched plugin 'Nope'; known: Good, Legacy-Good, OldGood, Other"


@pytest.mark.parametrize(
    ("typo", "hint"),
    [("Godo", "'Good'"), ("othr", "'Other'"), ("OldGod", "'OldGood'")],
)
def test_unknown_name_suggests_the_closest(
    monkeypatch: pytest.MonkeyPatch, typo: str, hint: str
) -> None:
    reg = make(monkeypatch, [GOOD, OTHER])
    with pytest.raises(UnknownPlugin) as err:
        reg.get("sched", typo)
    assert str(err.value).startswith(f"unknown sched plugin {typo!r} (did you mean {hint}?); ")


def test_unknown_name_in_an_empty_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = make(monkeypatch, [GOOD])
    with pytest.raises(UnknownPlugin) as err:
        reg.get("batchsubmit", "CondorLocal")
    assert str(err.value) == "unknown batchsubmit plugin 'CondorLocal'; known: none"
    assert err.value.known == []


@pytest.mark.parametrize(
    ("word", "candidates", "out"),
    [
        ("Redy", ["Ready", "Fixed"], " (did you mean 'Ready'?)"),
        ("ready", ["READY"], " (did you mean 'READY'?)"),  # the candidate's own spelling
        ("xyzzy", ["Ready", "Fixed"], ""),
        ("Ready", [], ""),
    ],
)
def test_suggest(word: str, candidates: list[str], out: str) -> None:
    assert suggest(word, candidates) == out


# ---------------------------------------------------------------------------- broken entry points


def test_a_broken_entry_point_is_a_load_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = make(monkeypatch, [GOOD, BROKEN])
    with pytest.raises(PluginLoadError) as err:
        reg.get("sched", "broken")
    assert str(err.value).startswith(
        "sched plugin 'Broken' (pilotfactory_no_such_module_for_tests:Thing) failed to load: "
        "No module named 'pilotfactory_no_such_module_for_tests'"
    )
    assert isinstance(err.value.__cause__, ModuleNotFoundError)
    assert reg.get("sched", "Good") is Good  # the others still load


def test_a_missing_attribute_is_a_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = make(monkeypatch, [ep("Gone", f"{HERE}:NoSuchClass")])
    with pytest.raises(PluginLoadError, match=r"'Gone' \(.*:NoSuchClass\) failed to load"):
        reg.get("sched", "Gone")


def test_an_import_time_crash_is_a_load_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "pf_crashy_site_plugin.py").write_text(
        "raise RuntimeError('site plugin crashed on import')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = make(monkeypatch, [ep("Crashy", "pf_crashy_site_plugin:Crashy"), GOOD])
    with pytest.raises(PluginLoadError) as err:
        reg.get("sched", "Crashy")
    assert str(err.value) == (
        "sched plugin 'Crashy' (pf_crashy_site_plugin:Crashy) failed to load: "
        "site plugin crashed on import"
    )
    assert isinstance(err.value.__cause__, RuntimeError)
    assert reg.get("sched", "OldGood") is Good  # the factory goes on


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("builtins:dict", "sched"),  # a class, but no plugin
        (f"{HERE}:NOT_A_CLASS", "sched"),  # not a class at all
        (f"{HERE}:SomeWMS", "sched"),  # a plugin of another kind
        (f"{HERE}:Good", "batchsubmit"),
    ],
)
def test_an_entry_point_that_is_no_plugin_of_its_kind(
    monkeypatch: pytest.MonkeyPatch, target: str, kind: str
) -> None:
    reg = make(monkeypatch, [ep("Odd", target, kind)])
    with pytest.raises(PluginLoadError) as err:
        reg.get(kind, "Odd")
    assert str(err.value) == f"{kind} plugin 'Odd' is not a {kind} plugin class"


def test_a_broken_entry_point_does_not_hide_other_aliases(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reg = make(monkeypatch, [BROKEN, GOOD])
    with caplog.at_level(logging.WARNING, logger=registry_mod.__name__):
        assert reg.get("sched", "OldGood") is Good
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "sched plugin 'Broken'" in warnings[0] and "failed to load" in warnings[0]


def test_an_unknown_name_beside_a_broken_entry_point_is_still_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reg = make(monkeypatch, [BROKEN, GOOD])
    with pytest.raises(UnknownPlugin) as err:
        reg.get("sched", "Nope")
    assert "Broken" in err.value.known
    assert "OldGood" in err.value.known


# ---------------------------------------------------------------------------- the built-ins


def setup_cfg_entry_points() -> dict[str, dict[str, str]]:
    cfg = configparser.ConfigParser()
    cfg.optionxform = str  # type: ignore[assignment,method-assign]
    cfg.read(ROOT / "setup.cfg")
    section = cfg["options.entry_points"]
    out: dict[str, dict[str, str]] = {}
    for kind in KINDS:
        lines = [x.strip() for x in section[f"pilotfactory.{kind}"].splitlines() if x.strip()]
        out[kind] = dict(tuple(p.strip() for p in x.split("=", 1)) for x in lines)  # type: ignore[misc]
    return out


BUILTINS = setup_cfg_entry_points()


def test_setup_cfg_declares_every_kind() -> None:
    assert set(BUILTINS) == {"wmsstatus", "batchstatus", "sched", "batchsubmit"}
    assert {"Condor", "Panda"} <= set(BUILTINS["wmsstatus"])
    assert {"Ready", "Activated", "MaxPerCycle", "JobsPerVM"} <= set(BUILTINS["sched"])
    assert {"CondorLocal", "CondorEC2", "EC2", "OpenStack"} <= set(BUILTINS["batchsubmit"])


@pytest.mark.parametrize(
    ("kind", "name", "target"),
    [(k, n, t) for k, names in BUILTINS.items() for n, t in names.items()],
)
def test_every_builtin_is_registered_and_loads(kind: str, name: str, target: str) -> None:
    reg = Registry()
    assert name in reg.names(kind)
    cls = reg.get(kind, name)
    module, _, attr = target.partition(":")
    assert cls is getattr(importlib.import_module(module), attr)
    assert issubclass(cls, Plugin)
    assert kind == cls.KIND
    assert name == cls.NAME


def test_apf_legacy_condorlocal_wms_alias() -> None:
    reg = Registry()
    assert reg.get("wmsstatus", "CondorLocal") is CondorWMSStatus
    assert reg.get("wmsstatus", "condorlocal") is CondorWMSStatus
    # The same APF name is a real plugin of another kind: no alias crosses kinds.
    assert reg.get("batchsubmit", "CondorLocal").NAME == "CondorLocal"


def test_default_registry_is_one_shared_instance() -> None:
    assert default_registry() is default_registry()
    assert default_registry().get("sched", "Ready").NAME == "Ready"
