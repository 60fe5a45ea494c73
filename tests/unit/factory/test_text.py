"""Outside text made inert (``clip``) and URLs made safe to show (``redact_url``)."""

from __future__ import annotations

import logging
import time

import pytest

from pilotfactory.factory.text import clip, inert, redact_url

# ---------------------------------------------------------------------------- clip


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        # ANSI colour and screen clearing
        ("\x1b[31mred\x1b[0m \x1b[2J", "\\x1b[31mred\\x1b[0m \\x1b[2J"),
        # a forged log line
        (
            "ok\r\n2026-01-01 00:00:00 INFO queue X: all fine",
            "ok 2026-01-01 00:00:00 INFO queue X: all fine",
        ),
        # OSC: window title (BEL-terminated) and clipboard write (ST-terminated)
        ("\x1b]0;owned\x07text", "\\x1b]0;owned\\x07text"),
        ("\x1b]52;c;ZWNobyBoaQ==\x1b\\", "\\x1b]52;c;ZWNobyBoaQ==\\x1b\\"),
        # NUL, backspace over text, DEL, the one-byte CSI (U+009B)
        ("a\x00b\x08\x08c\x7fd\x9b31m", "a\\x00b\\x08\\x08c\\x7fd\\x9b31m"),
        # bidi override that reorders what a reader sees, a lone surrogate
        ("file\u202etxt.exe", "file\\u202etxt.exe"),
        ("bad \udcff byte", "bad \\udcff byte"),
        # whitespace of every kind is one space
        ("a\tb\x0bc\x0cd\u2028e\x85f   g", "a b c d e f g"),
        # ordinary text, accents and a backslash stay as they are
        ("Härtere Grenze: C:\\tmp ✓", "Härtere Grenze: C:\\tmp ✓"),
    ],
)
def test_clip_makes_outside_text_inert(hostile: str, shown: str) -> None:
    out = clip(hostile)
    assert out == shown
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)


def test_clip_bounds_a_megabyte_quickly() -> None:
    for text in ("x" * 1_000_000, "\x1b" * 1_000_000, "\x00\n" * 500_000, " " * 1_000_000):
        start = time.perf_counter()
        out = clip(text, 300)
        assert time.perf_counter() - start < 0.1
        assert len(out) <= 300 + len(" [...] ")
        assert "\x00" not in out and "\x1b" not in out and "\n" not in out
    assert clip("a" * 200 + "MIDDLE" + "z" * 200, 100) == "a" * 50 + " [...] " + "z" * 50


def test_clip_keeps_head_and_tail_of_a_long_page() -> None:
    page = "HEAD " + "filler " * 100_000 + " TAIL"
    out = clip(page, 100)
    assert out.startswith("HEAD filler") and out.endswith("filler TAIL") and " [...] " in out


def test_clip_short_and_empty() -> None:
    assert clip("") == ""
    assert clip("  \r\n ") == ""
    assert clip(" one  line ") == "one line"


def test_inert_text_cannot_forge_a_log_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logging.getLogger("t").warning("hold reason: %s", clip("x\r\nCRITICAL fake\x1b[8m"))
    assert len(caplog.records) == 1
    assert "\n" not in caplog.text.rstrip("\n") and "\x1b" not in caplog.text


def test_inert_is_unbounded() -> None:
    assert inert("a\x1b" * 1000) == "a\\x1b" * 1000


# ---------------------------------------------------------------------------- redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://h/p?token=abc&x=1", "http://h/p?token=***&x=1"),
        ("http://user:pw@h:25080/api/v1", "http://h:25080/api/v1"),
        ("https://u:p@h/p?access_token=t&site=A,B", "https://h/p?access_token=***&site=A,B"),
        (
            "https://b.s3.example/o?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=f00&X-Amz-Security-Token=q"
            "&X-Amz-Expires=60",
            "https://b.s3.example/o?X-Amz-Credential=***&X-Amz-Signature=***"
            "&X-Amz-Security-Token=***&X-Amz-Expires=60",
        ),
        (
            "http://h/?PASSWORD=1&passwd=2&Secret=3&key=4&api_key=5&apikey=6&sig=7&signature=8"
            "&auth=9&credential=10",
            "http://h/?PASSWORD=***&passwd=***&Secret=***&key=***&api_key=***&apikey=***&sig=***"
            "&signature=***&auth=***&credential=***",
        ),
        (
            "http://h/?refresh_token=r&client_secret=s&x-goog-signature=g",
            "http://h/?refresh_token=***&client_secret=***&x-goog-signature=***",
        ),
        ("http://h/?tok%65n=abc", "http://h/?tok%65n=***"),  # an encoded name is still a name
        ("http://h/cb#access_token=t&state=1", "http://h/cb#access_token=***&state=1"),
        ("http://h/?monkey=1&keys=2&token", "http://h/?monkey=1&keys=2&token"),
        ("http://h:25080/api/v1", "http://h:25080/api/v1"),
        ("http://u:p@[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://u:p@h:99999/x", "http://h:99999/x"),  # a bad port is no reason to show p
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_unparsable() -> None:
    assert redact_url("http://[::1/?token=abc") == "<unparsable URL>"
