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
