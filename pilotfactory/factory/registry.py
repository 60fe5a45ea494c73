"""Plugin discovery through entry points.

Built-ins register through the same groups as site plugins, so a site can add or replace a
plugin without touching this package. Legacy APF names are the classes' ``ALIASES``.
"""

from __future__ import annotations

import difflib
import logging
from importlib.metadata import entry_points

from pilotfactory.factory.plugin import Plugin

log = logging.getLogger(__name__)

KINDS = ("wmsstatus", "batchstatus", "sched", "batchsubmit")


class UnknownPlugin(LookupError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = known
        hint = suggest(name, known)
        super().__init__(
            f"unknown {kind} plugin {name!r}{hint}; known: {', '.join(sorted(known)) or 'none'}"
        )


class PluginLoadError(RuntimeError):
    """An entry point exists but its module or class cannot be imported."""


def suggest(word: str, candidates: list[str]) -> str:
    lowered = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[match[0]]!r}?)" if match else ""


class Registry:
    """Name -> plugin class per kind; names are matched case-insensitively like APF does."""

    def __init__(self) -> None:
        self._eps: dict[str, dict[str, object]] = {k: {} for k in KINDS}
        self._loaded: dict[tuple[str, str], type[Plugin]] = {}
        self._aliases: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        for kind in KINDS:
            for ep in entry_points(group=f"pilotfactory.{kind}"):
                self._eps[kind][ep.name.lower()] = ep

    def names(self, kind: str) -> list[str]:
        return [getattr(ep, "name", "") for ep in self._eps[kind].values()]

    def _load_all_aliases(self, kind: str) -> None:
        if self._aliases[kind]:
            return
        for key in list(self._eps[kind]):
            try:
                cls = self._load(kind, key)
            except PluginLoadError as exc:
                log.warning("%s", exc)
                continue
            for alias in cls.ALIASES:
                self._aliases[kind].setdefault(alias.lower(), key)

    def _load(self, kind: str, key: str) -> type[Plugin]:
        cached = self._loaded.get((kind, key))
        if cached is not None:
            return cached
        ep = self._eps[kind][key]
        try:
            cls = ep.load()  # type: ignore[attr-defined]
        except Exception as exc:  # an import error in a site plugin must not kill the factory
            raise PluginLoadError(
                f"{kind} plugin {getattr(ep, 'name', key)!r} "
                f"({getattr(ep, 'value', '?')}) failed to load: {exc}"
            ) from exc
        if not (isinstance(cls, type) and issubclass(cls, Plugin)) or kind != cls.KIND:
            raise PluginLoadError(
                f"{kind} plugin {getattr(ep, 'name', key)!r} is not a {kind} plugin class"
            )
        self._loaded[(kind, key)] = cls
        return cls

    def get(self, kind: str, name: str) -> type[Plugin]:
        key = name.strip().lower()
        if key in self._eps[kind]:
            return self._load(kind, key)
        self._load_all_aliases(kind)
        if key in self._aliases[kind]:
            return self._load(kind, self._aliases[kind][key])
        known = self.names(kind) + [
            a for cls in self._loaded.values() if kind == cls.KIND for a in cls.ALIASES
        ]
        raise UnknownPlugin(kind, name, known)


_default: Registry | None = None


def default_registry() -> Registry:
    global _default
    if _default is None:
        _default = Registry()
    return _default
