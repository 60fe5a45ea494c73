"""Helpers shared by the cloud ports: secret files, clipped provider text, redacted URLs.

Every failure is a port error (``CloudError``, or ``CloudAuthError`` for credentials), so the
plugins above a port never see another exception type.
"""

from __future__ import annotations

from pilotfactory import secretfiles
from pilotfactory.factory.ports import CloudAuthError
from pilotfactory.factory.text import clip as text_clip
from pilotfactory.factory.text import redact_url as redact_url  # for the ports' messages

CLIP = 300


def clip(text: str, limit: int = CLIP) -> str:
    """Bounded, one-line, inert head + tail of provider text, so one huge or hostile error
    page cannot flood, forge or recolour a log."""
    return text_clip(text, limit)


def read_secret(path: str, what: str) -> str:
    """The stripped contents of the secret file named by setting ``what``; only its owner may
    access it (as ssh insists)."""
    try:
        return secretfiles.read_secret(path, f"{what} file")
    except secretfiles.SecretFileError as exc:
        raise CloudAuthError(str(exc)) from None
