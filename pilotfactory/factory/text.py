"""Text from the outside world, made safe to log and to show: bounded, one line."""

from __future__ import annotations


def clip(text: str, limit: int = 400) -> str:
    """Whitespace-collapsed head + tail of outside text, so one huge error page cannot flood a
    log or a message."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [...] {text[len(text) - half :]}"


def printable(text: str, limit: int = 300) -> str:
    """``text`` to print or log whole: at most about ``limit`` characters (head and tail kept)
    and every non-printable character escaped, so a name read from a file cannot move the
    terminal's cursor, fake a line of output, or fail to encode."""
    if len(text) > limit:
        half = limit // 2
        text = f"{text[:half]} [...] {text[len(text) - half :]}"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
