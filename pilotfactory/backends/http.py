"""One bounded HTTP GET (requests): every outside request ends by a deadline and reads at most
a set number of bytes, however the server behaves.

requests' ``timeout`` bounds each socket operation, not the request: a server that sends one
byte a second, in its headers or its body, never trips it, and ``resp.content`` reads whatever
size the server sends, inflating gzip as it goes (a 1 MB gzip can expand to 1 GiB). So here

- the body is streamed and read in chunks; each chunk checks the deadline and the byte count,
  and the count is of *decoded* bytes: gzip/deflate are inflated here, chunk by chunk, with
  zlib's ``max_length``, so no more than about ``max_bytes`` is ever held;
- connect and per-read timeouts are the time left to the deadline;
- a watchdog thread shuts the request's socket down when the deadline passes (or ``cancel``
  is set), which wakes a read blocked in the kernel: the only way to end a request whose server
  drips its status line or headers, since requests returns nothing before those are complete.

Not bounded: the name lookup (``getaddrinfo`` cannot be interrupted), and requests through a
SOCKS proxy are not watched (their chunks and timeouts still are).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, cast
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from pilotfactory.factory.text import clip, redact_url

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024
"""16 MiB: PanDA's per-site job statistics for a whole grid are a few hundred KB to a few MB;
a full CRIC queue dump can be larger and needs ``max_reply_bytes`` raised."""
ERROR_BODY_BYTES = 64 * 1024
"""How much of an HTTP error page is read for the message (which shows only its clipped ends)."""
CHUNK = 16 * 1024
MAX_REDIRECTS = 5
CANCEL_POLL = 0.1
"""How often the watchdog looks at ``cancel`` (seconds): the latency of a stop request."""
ACCEPT_ENCODING = "gzip, deflate"
"""The only encodings decoded here; asked for explicitly, so an installed brotli or zstandard
cannot make requests ask for one whose inflation is not bounded."""


_TRANSPORT = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
"""What requests, urllib3 and the socket raise for a failed request."""


class FetchError(Exception):
    """A request that failed or broke a limit; the message names the (redacted) URL and why."""


class Cancel(Protocol):
    """What ``cancel`` must offer; a ``threading.Event`` does."""

    def is_set(self) -> bool: ...


# ---------------------------------------------------------------------------- watchdog


class _Watchdog:
    """Shuts the sockets of one request down at the deadline, or when ``cancel`` is set.

    It holds a ``dup`` of each socket: shutdown acts on the connection, not the descriptor, so
    it still reaches the socket after TLS wrapping has detached the original object.
    """

    def __init__(self, deadline: float, cancel: Cancel | None) -> None:
        self.deadline = deadline
        self.cancel = cancel
        self.fired: str | None = None
        """``"deadline"`` or ``"cancel"`` once it has shut the sockets down."""
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        with self._lock:
            for s in self._socks:
                s.close()
            self._socks.clear()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self._done.is_set():
                return
            dup = sock.dup()
            self._socks.append(dup)
            if self.fired:
                _shutdown(dup)

    def _run(self) -> None:
        while True:
            left = self.deadline - time.monotonic()
            wait = left if self.cancel is None else min(left, CANCEL_POLL)
            if self._done.wait(max(wait, 0.0)):
                return
            if self.cancel is not None and self.cancel.is_set():
                reason = "cancel"
            elif time.monotonic() >= self.deadline:
                reason = "deadline"
            else:
                continue
            with self._lock:
                if self._done.is_set():
                    return
                self.fired = reason
                for s in self._socks:
                    _shutdown(s)
            return


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed or never connected
        sock.shutdown(socket.SHUT_RDWR)


_local = threading.local()


def _watch(sock: socket.socket) -> socket.socket:
    dog: _Watchdog | None = getattr(_local, "watchdog", None)
    if dog is not None:
        dog.watch(sock)
    return sock


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _watch(super()._new_conn())


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _watch(super()._new_conn())


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS: dict[str, type[HTTPConnectionPool]] = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _Adapter(HTTPAdapter):
    """requests' adapter whose connections tell the current watchdog their socket."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools have their own connections
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


# ---------------------------------------------------------------------------- decoding


class _Inflate:
    """Bounded gzip / deflate decoding: never returns (or holds) more than asked for."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._obj: Any = None
        self.fed = 0
        self._head = b""
        """deflate: the first bytes, until the zlib header (RFC) or its absence (raw deflate,
        which some servers send) can be told."""
        if encoding == "gzip":
            self._obj = self._new()

    def _new(self) -> Any:
        if self.encoding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        cmf, flg = self._head[0], self._head[1]
        wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes, limit: int) -> bytes:
        """Up to ``limit`` decoded bytes from ``data``; exactly ``limit`` means "there is more".
        Raises ``zlib.error`` on a broken stream."""
        self.fed += len(data)
        if self._obj is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._obj = self._head, self._new()
        out = b""
        while data and len(out) < limit:
            out += self._obj.decompress(data, limit - len(out))
            if self._obj.eof:
                # gzip may hold several members; anything after a deflate stream is ignored.
                data = self._obj.unused_data if self.encoding == "gzip" else b""
                if data:
                    self._obj = self._new()
            else:
                data = self._obj.unconsumed_tail
        return out

    @property
    def complete(self) -> bool:
        """The stream reached its end (or never started: an empty body is just empty)."""
        return self.fed == 0 or (self._obj is not None and bool(self._obj.eof))


def _encoding(header: str | None, shown: str) -> str | None:
    """``"gzip"``, ``"deflate"`` or None (identity) from a Content-Encoding header."""
    codings = [c.strip().lower() for c in (header or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in {"gzip", "x-gzip", "deflate"}:
        return "deflate" if codings[0] == "deflate" else "gzip"
    raise FetchError(f"{shown}: unsupported Content-Encoding {clip(header or '', 80)!r}")


# ---------------------------------------------------------------------------- the request


class _Limits:
    """One request's deadline and budget, and the error that names what was exceeded."""

    def __init__(self, shown: str, timeout: float, cancel: Cancel | None) -> None:
        self.shown = shown
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.cancel = cancel
        self.dog: _Watchdog | None = None
        self.read = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def stopped(self) -> FetchError | None:
        """The error to raise if the request must end now (cancelled or past its deadline)."""
        fired = self.dog.fired if self.dog is not None else None
        if fired == "cancel" or (self.cancel is not None and self.cancel.is_set()):
            return FetchError(f"{self.shown}: cancelled (stop requested) after {self.read} bytes")
        if fired == "deadline" or self.left() <= 0:
            return FetchError(
                f"{self.shown}: timed out after {self.timeout:g} s (deadline for the whole "
                f"request; {self.read} bytes of the reply read)"
            )
        return None

    def check(self) -> None:
        err = self.stopped()
        if err is not None:
            raise err


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    """The raw body in pieces as they arrive: ``read1`` returns what one receive brings (up
    to ``CHUNK``), so the loop sees the deadline while a server drips; ``stream`` would wait
    for a whole ``CHUNK``. urllib3 before 2 has no ``read1``: ``stream`` it is, and the
    watchdog alone ends a drip."""
    raw: urllib3.HTTPResponse = resp.raw
    if not hasattr(raw, "read1"):
        yield from raw.stream(CHUNK, decode_content=False)
        return
    while data := raw.read1(CHUNK, decode_content=False):
        yield data


def _read(resp: requests.Response, limits: _Limits, max_bytes: int, truncate: bool) -> bytes:
    """The decoded body, at most ``max_bytes``; past that, raise (or, ``truncate``, stop)."""
    encoding = _encoding(resp.headers.get("Content-Encoding"), limits.shown)
    inflate = _Inflate(encoding) if encoding else None
    body = bytearray()
    for chunk in _chunks(resp):
        limits.check()
        budget = max_bytes + 1 - len(body)
        if inflate is not None:
            try:
                part = inflate.feed(chunk, budget)
            except zlib.error as exc:
                raise FetchError(
                    f"{limits.shown}: {encoding} reply cannot be decoded: {exc}"
                ) from None
        else:
            part = chunk[:budget]
        body += part
        limits.read = len(body)
        if len(body) > max_bytes:
            if truncate:
                return bytes(body[:max_bytes])
            what = f"after {encoding} decoding" if encoding else "as sent"
            raise FetchError(
                f"{limits.shown}: reply larger than max_reply_bytes={max_bytes} ({what}): "
                "stopped reading"
            )
    limits.check()  # a socket the watchdog shut down ends the body early, looking complete
    if inflate is not None and not inflate.complete and not truncate:
        raise FetchError(f"{limits.shown}: {encoding} reply ends before its compressed data does")
    return bytes(body)


def _origin(url: str) -> tuple[str, str]:
    """Scheme and host[:port] as written (a port spelt differently is another origin: only
    ever one reason less to send credentials); never raises on a hostile Location."""
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.rpartition("@")[2].lower()


def _follow(
    session: requests.Session,
    url: str,
    limits: _Limits,
    *,
    headers: Mapping[str, str],
    auth: requests.auth.AuthBase | None,
    verify: bool | str,
    cert: str | tuple[str, str] | None,
) -> requests.Response:
    """The response at the end of ``url``'s redirects (at most ``MAX_REDIRECTS``).

    Each hop goes to the adapter directly: ``Session.send`` reads a redirect's whole body (and
    inflates it) to free the connection, even with ``allow_redirects=False``, so a hostile 302
    could carry a bomb. Here a redirect's body is never read, and credentials go only to the
    URL's own scheme, host and port.
    """
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        request = requests.Request(
            "GET",
            current,
            headers=dict(headers),
            auth=auth if _origin(current) == _origin(url) else None,
        )
        prepared = session.prepare_request(request)
        # proxies and CA bundle from the environment, as Session.send would take them
        env = cast(
            dict[str, Any], session.merge_environment_settings(prepared.url, {}, True, verify, cert)
        )
        left = max(limits.left(), 0.001)
        resp = session.get_adapter(current).send(prepared, timeout=(left, left), **env)
        if not resp.is_redirect:
            return resp
        location = resp.headers.get("Location", "")
        resp.close()
        current = urljoin(current, location)
        if urlsplit(current).scheme.lower() not in {"http", "https"}:
            raise FetchError(
                f"{limits.shown}: redirected to a non-HTTP URL {redact_url(current)!r}"
            )
        limits.check()
    raise FetchError(f"{limits.shown}: more than {MAX_REDIRECTS} redirects")


def bounded_get(
    url: str,
    *,
    headers: Mapping[str, str],
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    verify: bool | str = True,
    cert: str | tuple[str, str] | None = None,
    auth: requests.auth.AuthBase | None = None,
    cancel: Cancel | None = None,
) -> bytes:
    """The body of one GET of ``url``, decoded, within ``timeout`` seconds from start to last
    byte and at most ``max_bytes`` long.

    Every failure is a ``FetchError`` naming the redacted URL: transport, TLS, HTTP status
    >= 400 (with the clipped start and end of the error page), the deadline, the size, an
    unsupported or broken encoding. ``cancel`` (e.g. a ``threading.Event`` a SIGTERM handler
    sets) ends the request within ``CANCEL_POLL`` seconds, even one blocked on a silent server.
    """
    shown = redact_url(url)
    limits = _Limits(shown, timeout, cancel)
    limits.check()
    sent = {**headers, "Accept-Encoding": ACCEPT_ENCODING}
    with _Watchdog(limits.deadline, cancel) as dog, requests.Session() as session:
        limits.dog = dog
        for prefix in ("http://", "https://"):
            session.mount(prefix, _Adapter())
        _local.watchdog = dog
        try:
            resp = _follow(session, url, limits, headers=sent, verify=verify, cert=cert, auth=auth)
            with resp:
                if resp.status_code >= 400:
                    kind = "server error" if resp.status_code >= 500 else "client error"
                    text = _error_page(resp, limits, min(max_bytes, ERROR_BODY_BYTES))
                    raise FetchError(f"{shown}: HTTP {resp.status_code} {kind}: {text}")
                return _read(resp, limits, max_bytes, truncate=False)
        except FetchError:
            raise
        except _TRANSPORT as exc:
            stopped = limits.stopped()
            if stopped is not None:  # the watchdog's shutdown surfaces as a broken connection
                raise stopped from None
            raise FetchError(f"{shown}: {_describe(exc, timeout)}") from None
        finally:
            _local.watchdog = None


def _error_page(resp: requests.Response, limits: _Limits, max_bytes: int) -> str:
    """The clipped, inert text of an error page: its ends are all a message can show."""
    try:
        page = _read(resp, limits, max_bytes, truncate=True)
    except (FetchError, *_TRANSPORT) as exc:
        return f"(body not read: {str(exc).removeprefix(limits.shown + ': ')})"
    try:
        text = page.decode(resp.encoding or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        text = page.decode("utf-8", "replace")
    return clip(text, 300) or "(empty body)"


def _describe(exc: BaseException, timeout: float) -> str:
    """What went wrong, in the words the PanDA client always used."""
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
        return f"TLS error: {clip(str(exc), 300)}"
    if isinstance(exc, (requests.ConnectionError, urllib3.exceptions.ProtocolError)):
        return f"connection failed: {clip(str(exc), 300)}"
    if isinstance(exc, requests.RequestException):
        return f"request failed: {clip(str(exc), 300)}"
    # e.g. an unreadable CA bundle or certificate
    return f"{type(exc).__name__}: {clip(str(exc), 300)}"
