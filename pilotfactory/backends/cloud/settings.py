"""Helpers shared by the cloud ports: secret files, clipped provider text.

Every failure is a port error (``CloudError``, or ``CloudAuthError`` for credentials), so the
plugins above a port never see another exception type.
"""

from __future__ import annotations

from pilotfactory import secretfiles
from pilotfactory.factory.ports import CloudAuthError
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
