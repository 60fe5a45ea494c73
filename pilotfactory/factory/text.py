"""Text from the outside world, made safe to log and to show: bounded, one line, inert.

A server message, a ClassAd string or a cloud error is written by someone else. Shown raw, a
``\\r\\n`` in it forges a log line, an ``ESC [`` / ``ESC ]`` sequence rewrites the operator's
terminal (colours, cursor, window title, OSC 52 clipboard), a NUL or a bidi override hides what
follows, and one error page fills a log. ``clip`` makes such text harmless; ``redact_url``
keeps credentials of a URL out of messages.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

# What survives whitespace collapsing and still acts on a terminal or a reader: C0/DEL/C1
# controls (ESC, NUL, BS, CSI U+009B...), bidi embeddings/overrides/isolates and marks, and
# lone surrogates (which make a log handler's encoder raise).
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_CUT = " [...] "
_PRECUT = 4
"""Text longer than ``2 * _PRECUT * limit`` is cut to its two ends before any other work, so a
1 MB page costs no more than a short one."""


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def inert(text: str) -> str:
    """``text`` on one line with no control characters: every whitespace run (``\\r``, ``\\n``,
    tab, U+2028...) becomes one space, every other control or bidi character a visible escape
    such as ``\\x1b``. Unbounded; ``clip`` also bounds."""
    return _UNSAFE.sub(_escape, " ".join(text.split()))


_LINE_BREAKING = re.compile(
    r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def one_line(text: str) -> str:
    """``text`` with every control character but the tab (line breaks too) as a visible escape
    and nothing else changed: the last line of defence for a log record, whose own spacing is
    kept. Outside text should have gone through ``clip`` before."""
    return _LINE_BREAKING.sub(_escape, text)


def clip(text: str, limit: int = 400) -> str:
    """Inert (see ``inert``), whitespace-collapsed head + tail of outside text, at most about
    ``limit`` characters, so one hostile or huge reply cannot forge, recolour or flood a log
    or a message."""
    window = _PRECUT * limit
    if len(text) > 2 * window:
        text = text[:window] + _CUT + text[len(text) - window :]
    text = inert(text)
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}{_CUT}{text[len(text) - half :]}"


SECRET_PARAMS = frozenset(
    {
        "token",
        "access_token",
        "password",
        "passwd",
        "pwd",
        "secret",
        "key",
        "api_key",
        "apikey",
        "sig",
        "signature",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)
"""Query parameter names (compared case-insensitively) whose values ``redact_url`` hides."""
_SECRET_ENDINGS = ("token", "secret", "password", "passwd", "signature", "credential", "apikey")
"""...and names ending so (``refresh_token``, ``client_secret``, ``X-Goog-Signature``)."""

REDACTED = "***"


def _secret_name(name: str) -> bool:
    low = unquote_plus(name).strip().lower()
    return low in SECRET_PARAMS or low.replace("-", "_").endswith(_SECRET_ENDINGS)


def _redact_query(query: str) -> str:
    """``query`` with the value of every secret-looking parameter replaced; the rest as written."""
    out = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        out.append(f"{name}={REDACTED}" if eq and _secret_name(name) else item)
    return "&".join(out)


def redact_url(url: str) -> str:
    """``url`` for messages: no ``user:password@``, and no value of a query (or fragment)
    parameter whose name looks secret (``token``, ``X-Amz-Signature``...; see
    ``SECRET_PARAMS``): it becomes ``***``. Everything else is kept as written."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a broken IPv6 literal: nothing of it can be shown safely
        return "<unparsable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    has_userinfo = netloc != parts.netloc
    query = _redact_query(parts.query)
    fragment = _redact_query(parts.fragment)
    if not has_userinfo and (query, fragment) == (parts.query, parts.fragment):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def printable(text: str, limit: int = 300) -> str:
    """``text`` to print or log whole: at most about ``limit`` characters (head and tail kept)
    and every non-printable character escaped, so a name read from a file cannot move the
    terminal's cursor, fake a line of output, or fail to encode."""
    if len(text) > limit:
        half = limit // 2
        text = f"{text[:half]}{_CUT}{text[len(text) - half :]}"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


_SECRET_ASSIGNMENT = re.compile(
    r"^(?P<key>\s*(?:export\s+)?[\w.+-]*(?:password|passwd|token|secret|credential|private_?key"
    r"|api_?key)[\w.+-]*\s*[=:]\s*)(?P<value>\S.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_PEM = re.compile(
    r"(-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----).*?(-----END [A-Z0-9 ]*PRIVATE KEY-----)", re.DOTALL
)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def redact_secrets(text: str) -> str:
    """Configuration text (a submit description, user data) fit to show: the value of every
    ``key = value`` / ``key: value`` line whose key names a password, token, secret,
    credential or key (unless it is a file's path), every PEM private key, and the credentials
    in URLs become ``***``.
    A heuristic for display, never a reason to put a secret there."""
    text = _PEM.sub(lambda m: f"{m.group(1)}\n{REDACTED}\n{m.group(2)}", text)
    text = _SECRET_ASSIGNMENT.sub(
        lambda m: m.group() if m.group("value").startswith("/") else f"{m.group('key')}{REDACTED}",
        text,
    )  # a path names the file holding the secret: shown
    return _URL.sub(lambda m: redact_url(m.group()), text)
