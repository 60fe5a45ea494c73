"""Helpers shared by the cloud ports: setting readers, secret files, clipped provider text.

Every failure is a port error (``CloudError``, or ``CloudAuthError`` for credentials), so the
plugins above a port never see another exception type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pilotfactory import secretfiles
from pilotfactory.factory.ports import CloudAuthError, CloudError
from pilotfactory.factory.text import clip as text_clip

CLIP = 300


def clip(text: str) -> str:
    """Bounded head + tail of provider text, so one huge error page cannot flood a log."""
    return text_clip(text, CLIP)


def read_secret(path: str, what: str) -> str:
    """The stripped contents of the secret file named by setting ``what``; only its owner may
    access it (as ssh insists)."""
    try:
        return secretfiles.read_secret(path, f"{what} file")
    except secretfiles.SecretFileError as exc:
        raise CloudAuthError(str(exc)) from None


def text_setting(settings: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    """The stripped setting, or ``default`` when it is unset or blank."""
    value = settings.get(name)
    return default if value is None or str(value).strip() == "" else str(value).strip()


def number_setting(settings: Mapping[str, Any], name: str, default: float, minimum: float) -> float:
    """The setting as a number >= ``minimum``, or ``default`` when it is unset or blank."""
    value = text_setting(settings, name)
    if value is None:
        return default
    try:
        out = float(value)
    except ValueError:
        raise CloudError(f"setting {name}={value!r} is not a number") from None
    if out < minimum:
        raise CloudError(f"setting {name}={value!r} must be >= {minimum:g}")
    return out
