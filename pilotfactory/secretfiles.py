"""Secret files (tokens, keys, passwords), shared by every backend.

A secret file must be a regular file that only its owner can access, as ssh insists; anything
else is refused with a message saying how to fix it. Contents are never put in a message.
Callers map ``SecretFileError`` to their own error type (``CloudAuthError``, ``PandaError``,
``SubmitError``) so each layer keeps failing the way its callers expect.
"""

from __future__ import annotations

import stat
from pathlib import Path


class SecretFileError(Exception):
    """A secret file is missing, unreadable, not a regular file, open to others, or empty.

    ``mode`` is the file's permission bits when the file was refused for being accessible by
    group or others, else ``None``.
    """

    def __init__(self, message: str, mode: int | None = None) -> None:
        super().__init__(message)
        self.mode = mode


def check_private(path: str, what: str) -> Path:
    """The (user-expanded) path of a regular file that only its owner can access.

    ``what`` names the file in messages, e.g. ``"token file"``.
    """
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SecretFileError(f"{what} {str(p)!r} cannot be read: {reason}") from None
    if not stat.S_ISREG(mode):
        raise SecretFileError(f"{what} {str(p)!r} is not a regular file")
    if mode & 0o077:
        raise SecretFileError(
            f"{what} {str(p)!r} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); refusing to use it: chmod 600 it",
            mode=stat.S_IMODE(mode),
        )
    return p


def read_secret(path: str, what: str) -> str:
    """The stripped, non-empty contents of a private secret file (see ``check_private``)."""
    p = check_private(path, what)
    try:
        text = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise SecretFileError(f"{what} {str(p)!r} cannot be read: {reason}") from None
    if not text:
        raise SecretFileError(f"{what} {str(p)!r} is empty")
    return text
