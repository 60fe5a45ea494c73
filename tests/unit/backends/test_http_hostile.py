"""The PanDA client and the site status source against hostile HTTP servers on loopback.

``responses`` cannot be slow or stream, so each server here is a real socket server (port 0 on
127.0.0.1) that misbehaves on purpose: it drips, never answers, sends a gzip bomb or an endless
body. Each test asserts the factory gives up by its deadline or at its size limit, with a
PandaError that names the URL and what was exceeded.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest

from pilotfactory.backends import http
from pilotfactory.backends.panda import HttpSettings, PandaClient, SiteStatusSource
from pilotfactory.factory.ports import PandaError

STATS = "/api/v1/statistics/active_job_stats_by_site"
MiB = 1024 * 1024
GOOD = json.dumps({"success": True, "message": "", "data": {"BNL": {"activated": 3}}}).encode()

Behaviour = Callable[[socket.socket, threading.Event, bytes], None]


@contextmanager
def serve(
    behaviour: Behaviour, tls: ssl.SSLContext | None = None
) -> Iterator[tuple[str, list[bytes]]]:
    """A server on 127.0.0.1 answering every request with ``behaviour(sock, stop, request)``
    (over TLS with ``tls``); yields its root URL and the raw requests it read."""
    stop = threading.Event()
    seen: list[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock = self.request
            if tls is not None:
                try:
                    sock = tls.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError):  # a client refusing our certificate
                    return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                data += chunk
            seen.append(data)
            with contextlib.suppress(OSError):  # the client hung up, as it should
                behaviour(sock, stop, data)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def head(status: str = "200 OK", **headers: str | int) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def drip(payload: bytes, every: float = 0.2) -> Behaviour:
    def behaviour(sock: socket.socket, stop: threading.Event, _req: bytes) -> None:
        for i in range(len(payload)):
            if stop.wait(every):
                return
            sock.sendall(payload[i : i + 1])

    return behaviour


def silent(sock: socket.socket, stop: threading.Event, _req: bytes) -> None:
    stop.wait(30)


def reply(body: bytes, **headers: str | int) -> Behaviour:
    def behaviour(sock: socket.socket, stop: threading.Event, _req: bytes) -> None:
        sock.sendall(head(Content_Length=len(body), **headers) + body)

    return behaviour


def endless(with_length: bool) -> Behaviour:
    """An uncompressed body of zeros that never ends (or claims 1 GiB)."""

    def behaviour(sock: socket.socket, stop: threading.Event, _req: bytes) -> None:
        sock.sendall(head(Content_Length=1 << 30) if with_length else head(Connection="close"))
        block = bytes(64 * 1024)
        while not stop.is_set():
            sock.sendall(block)

    return behaviour


@cache
def gzip_bomb() -> bytes:
    """A valid gzip stream of 1 GiB of zeros, about 1 MB long: 1024 copies of one compressed
    MiB (a full flush makes every copy byte-identical) and the true CRC and length."""
    zeros = bytes(MiB)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    trailer = c.flush(zlib.Z_FINISH) + struct.pack("<II", crc, (1 << 30) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block * 1024 + trailer


def client(root: str, timeout: float = 1.0, max_bytes: int = MiB, **kw: object) -> PandaClient:
    http = HttpSettings(timeout=timeout, max_reply_bytes=max_bytes, **kw)  # type: ignore[arg-type]
    return PandaClient(root + "/api/v1", http)


def fails_within(seconds: float, call: Callable[[], object], match: str) -> str:
    start = time.monotonic()
    with pytest.raises(PandaError, match=match) as err:
        call()
    took = time.monotonic() - start
    assert took < seconds, f"gave up only after {took:.2f} s"
    return str(err.value)


# ---------------------------------------------------------------------------- time


def test_body_drip_is_cut_at_the_deadline() -> None:
    """1 byte per 0.2 s of a 1000-byte body: every read is quick, the request is not."""
    body = b"{" + b" " * 999

    def behaviour(sock: socket.socket, stop: threading.Event, req: bytes) -> None:
        sock.sendall(head(Content_Length=len(body)))
        drip(body)(sock, stop, req)

    with serve(behaviour) as (root, _):
        msg = fails_within(1.5, client(root).active_job_stats, r"timed out after 1 s")
    assert root + STATS in msg and "deadline for the whole request" in msg


def test_body_drip_is_cut_by_the_read_loop_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the watchdog (a SOCKS proxy's connections are not watched) the chunk loop
    still sees the deadline: read1 hands over each dripped byte as it comes."""
    monkeypatch.setattr(http, "_watch", lambda sock: sock)
    body = b"{" + b" " * 999

    def behaviour(sock: socket.socket, stop: threading.Event, req: bytes) -> None:
        sock.sendall(head(Content_Length=len(body)))
        drip(body)(sock, stop, req)

    with serve(behaviour) as (root, _):
        msg = fails_within(1.5, client(root).active_job_stats, r"timed out after 1 s")
    assert re.search(r"; [1-9] bytes of the reply read\)$", msg), msg  # ~5 dripped bytes


def test_header_drip_is_cut_at_the_deadline() -> None:
    """The status line itself dripped: requests returns nothing before the headers end, so
    only the watchdog's socket shutdown stops this one."""
    with serve(drip(head(Content_Length=2) + b"{}")) as (root, _):
        fails_within(1.5, client(root).active_job_stats, r"timed out after 1 s")


def test_server_that_never_answers() -> None:
    with serve(silent) as (root, _):
        msg = fails_within(1.5, client(root).active_job_stats, r"timed out after 1 s")
    assert root + STATS in msg


def test_cancel_ends_a_request_in_flight() -> None:
    """A stop request (the SIGTERM hook) ends a 30 s request on a silent server at once."""
    cancel = threading.Event()
    with serve(silent) as (root, _):
        c = client(root, timeout=30.0, cancel=cancel)
        threading.Timer(0.3, cancel.set).start()
        msg = fails_within(1.0, c.active_job_stats, "cancelled")
    assert root + STATS in msg


def test_sigterm_ends_a_request_in_flight() -> None:
    """The daemon's wiring: SIGTERM sets RealWorld.stopping (then runs the factory's handler),
    and a PanDA request on a silent server with a 30 s timeout ends at once."""
    from pilotfactory.backends.world import RealWorld
    from pilotfactory.cli import _cancel_requests_on_stop

    seen: list[int] = []
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGTERM, lambda sig, _frame: seen.append(sig))  # the factory's
        world = RealWorld()
        _cancel_requests_on_stop(world)
        with serve(silent) as (root, _):
            c = world.panda({"baseurl": root + "/api/v1", "timeout": 30})
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
            fails_within(1.0, c.active_job_stats, "cancelled")
        assert seen == [signal.SIGTERM] and world.stopping.is_set()
        sites = world.site_status({"sitestatus_url": root + "/q.json"})
        with pytest.raises(PandaError, match="cancelled"):  # the rest of the last cycle
            sites.site_status()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_cancel_already_set_sends_nothing() -> None:
    cancel = threading.Event()
    cancel.set()
    with serve(reply(GOOD)) as (root, seen), pytest.raises(PandaError, match="cancelled"):
        client(root, cancel=cancel).active_job_stats()
    assert seen == []


# ---------------------------------------------------------------------------- size


def test_gzip_bomb_stops_at_the_limit_in_bounded_memory() -> None:
    bomb = gzip_bomb()
    with serve(reply(bomb, Content_Encoding="gzip")) as (root, _):
        tracemalloc.start()
        try:
            start = time.monotonic()
            with pytest.raises(PandaError) as err:
                client(root, timeout=5.0).active_job_stats()
            took = time.monotonic() - start
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert "reply larger than max_reply_bytes=1048576 (after gzip decoding)" in str(err.value)
    assert root + STATS in str(err.value)
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB for a 1 MiB limit"
    assert took < 2.0


def test_deflate_bomb_too() -> None:
    wrapped = zlib.compress(bytes(64 * MiB), 9)
    with (
        serve(reply(wrapped, Content_Encoding="deflate")) as (root, _),
        pytest.raises(PandaError, match=r"after deflate decoding"),
    ):
        client(root).active_job_stats()


@pytest.mark.parametrize("with_length", [True, False])
def test_huge_plain_body_stops_at_the_limit(with_length: bool) -> None:
    with serve(endless(with_length)) as (root, _):
        msg = fails_within(
            1.5, client(root).active_job_stats, r"larger than max_reply_bytes=1048576 \(as sent\)"
        )
    assert "stopped reading" in msg


def test_redirect_body_is_never_read() -> None:
    """requests itself would read (and inflate) a redirect's whole body to free the socket."""
    bomb = gzip_bomb()

    def behaviour(sock: socket.socket, stop: threading.Event, req: bytes) -> None:
        if req.startswith(b"GET /final"):
            sock.sendall(head(Content_Length=len(GOOD)) + GOOD)
            return
        sock.sendall(
            head("302 Found", Location="/final", Content_Encoding="gzip", Content_Length=len(bomb))
        )
        sock.sendall(bomb)

    with serve(behaviour) as (root, seen):
        tracemalloc.start()
        try:
            assert client(root).active_job_stats() == {"BNL": {"activated": 3}}
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 4 * MiB
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("location", "match"),
    [
        ("ftp://h/x", "redirected to a non-HTTP URL 'ftp://h/x'"),
        ("http://h:99999/x", "request failed|connection failed"),
        ("file:///etc/passwd", "non-HTTP URL"),
    ],
)
def test_hostile_redirects(location: str, match: str) -> None:
    def away(sock: socket.socket, stop: threading.Event, req: bytes) -> None:
        sock.sendall(head("302 Found", Location=location, Content_Length=0))

    with serve(away) as (root, _), pytest.raises(PandaError, match=match) as err:
        client(root).active_job_stats()
    assert root + STATS in str(err.value)


def test_redirect_loop_and_token_stays_home(tmp_path: object) -> None:
    def loop(sock: socket.socket, stop: threading.Event, req: bytes) -> None:
        sock.sendall(head("302 Found", Location="/again", Content_Length=0))

    with serve(loop) as (root, seen), pytest.raises(PandaError, match="more than 5 redirects"):
        client(root).active_job_stats()
    assert len(seen) == 6

    with serve(reply(GOOD)) as (other, elsewhere):

        def away(sock: socket.socket, stop: threading.Event, req: bytes) -> None:
            sock.sendall(head("307 Temporary Redirect", Location=other + STATS, Content_Length=0))

        with serve(away) as (root, home):
            c = client(root, token="s3cr3t")
            assert c.active_job_stats() == {"BNL": {"activated": 3}}
    assert b"Bearer s3cr3t" in home[0]
    assert b"s3cr3t" not in elsewhere[0]


# ---------------------------------------------------------------------------- good replies


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate"])
def test_normal_reply_still_works(encoding: str) -> None:
    body = {"": GOOD, "gzip": gzip.compress(GOOD), "deflate": zlib.compress(GOOD)}[encoding]
    headers = {"Content_Encoding": encoding} if encoding else {}
    with serve(reply(body, **headers)) as (root, seen):
        assert client(root).active_job_stats() == {"BNL": {"activated": 3}}
    assert b"Accept-Encoding: gzip, deflate\r\n" in seen[0]


@pytest.mark.parametrize("wbits", [-zlib.MAX_WBITS, zlib.MAX_WBITS])
@pytest.mark.parametrize("size", [1, 7])
def test_chunked_reply_raw_and_wrapped_deflate(wbits: int, size: int) -> None:
    """One-byte chunks too: the zlib header is judged once two bytes are in."""
    raw = zlib.compressobj(6, zlib.DEFLATED, wbits)
    body = raw.compress(GOOD) + raw.flush()
    chunked = b"".join(
        f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    )

    def behaviour(sock: socket.socket, stop: threading.Event, req: bytes) -> None:
        sock.sendall(head(Transfer_Encoding="chunked", Content_Encoding="deflate"))
        sock.sendall(chunked + b"0\r\n\r\n")

    with serve(behaviour) as (root, _):
        assert client(root).active_job_stats() == {"BNL": {"activated": 3}}


def test_reply_exactly_at_the_limit_is_accepted() -> None:
    with serve(reply(GOOD)) as (root, _):
        assert client(root, max_bytes=len(GOOD)).active_job_stats() == {"BNL": {"activated": 3}}
    with (
        serve(reply(GOOD)) as (root, _),
        pytest.raises(PandaError, match=f"max_reply_bytes={len(GOOD) - 1} "),
    ):
        client(root, max_bytes=len(GOOD) - 1).active_job_stats()


# ---------------------------------------------------------------------------- broken replies


@pytest.mark.parametrize(
    ("headers", "body", "match"),
    [
        ({"Content_Encoding": "br"}, b"xx", "unsupported Content-Encoding 'br'"),
        ({"Content_Encoding": "gzip, gzip"}, b"xx", "unsupported Content-Encoding"),
        ({"Content_Encoding": "gzip"}, b"not gzip at all", "gzip reply cannot be decoded"),
        ({"Content_Encoding": "gzip"}, gzip.compress(GOOD)[:-12], "ends before its compressed"),
        ({"Content_Encoding": "deflate"}, zlib.compress(GOOD)[:-9], "ends before its compressed"),
        ({"Content_Encoding": "gzip"}, b"", r"not valid JSON: \(empty\)"),
    ],
)
def test_bad_encodings(headers: dict[str, str], body: bytes, match: str) -> None:
    with serve(reply(body, **headers)) as (root, _), pytest.raises(PandaError, match=match):
        client(root).active_job_stats()


def test_short_body_is_a_failure() -> None:
    def behaviour(sock: socket.socket, stop: threading.Event, req: bytes) -> None:
        sock.sendall(head(Content_Length=100) + b'{"success": true')

    with serve(behaviour) as (root, _), pytest.raises(PandaError, match="connection failed"):
        client(root).active_job_stats()


def test_hostile_error_page_is_inert_and_bounded() -> None:
    page = b"\x1b]0;pwned\x07\x1b[2J\r\n2026-01-01 ERROR forged line\x00" + b"A" * 5 * MiB

    def behaviour(sock: socket.socket, stop: threading.Event, req: bytes) -> None:
        sock.sendall(head("500 Oops", Content_Length=len(page)) + page)

    with serve(behaviour) as (root, _):
        msg = fails_within(1.5, client(root).active_job_stats, "HTTP 500 server error")
    assert "\x1b" not in msg and "\r" not in msg and "\n" not in msg and "\x00" not in msg
    assert "\\x1b]0;pwned\\x07\\x1b[2J 2026-01-01 ERROR forged line\\x00" in msg
    assert len(msg) < 500


def test_site_status_url_is_bounded_too() -> None:
    with serve(silent) as (root, _):
        src = SiteStatusSource(url=root + "/queues.json", http=HttpSettings(timeout=1.0))
        msg = fails_within(1.5, src.site_status, r"timed out after 1 s")
    assert root + "/queues.json" in msg
    with serve(endless(True)) as (root, _):
        src = SiteStatusSource.from_settings(
            {"sitestatus_url": root + "/q.json?token=abc&x=1", "max_reply_bytes": 1000}
        )
        with pytest.raises(PandaError, match="max_reply_bytes=1000") as err:
            src.site_status()
    assert "token=***&x=1" in str(err.value) and "abc" not in str(err.value)


# ---------------------------------------------------------------------------- TLS


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    """(cert, key) files for 127.0.0.1, made with cryptography (skips the test without it)."""
    pytest.importorskip("cryptography")
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


@pytest.fixture
def tls_ctx(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    """A server TLS context and the CA bundle (the certificate itself) clients verify with."""
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx, cert


def test_tls_normal_reply_and_header_drip(tls_ctx: tuple[ssl.SSLContext, str]) -> None:
    """Over TLS the socket the watchdog holds is detached by the wrapping; its dup still
    reaches the connection, so a dripped status line is cut at the deadline too."""
    ctx, ca = tls_ctx
    with serve(reply(GOOD), tls=ctx) as (root, _):
        https = root.replace("http://", "https://")
        c = client(https, verify=ca)
        assert c.active_job_stats() == {"BNL": {"activated": 3}}
    with serve(drip(head(Content_Length=2) + b"{}"), tls=ctx) as (root, _):
        c = client(root.replace("http://", "https://"), verify=ca)
        fails_within(1.5, c.active_job_stats, r"timed out after 1 s")


def test_tls_handshake_that_never_completes(tls_ctx: tuple[ssl.SSLContext, str]) -> None:
    _, ca = tls_ctx
    with serve(silent) as (root, _):  # accepts, reads the ClientHello, never answers
        c = client(root.replace("http://", "https://"), verify=ca)
        fails_within(1.5, c.active_job_stats, r"timed out after 1 s")


def test_tls_bad_certificate(tls_ctx: tuple[ssl.SSLContext, str]) -> None:
    ctx, _ = tls_ctx
    with serve(reply(GOOD), tls=ctx) as (root, _):
        c = client(root.replace("http://", "https://"))
        with pytest.raises(PandaError, match="TLS error"):
            c.active_job_stats()
