"""A small local PanDA server for tests and the demo, over real loopback HTTP.

It serves what pilotfactory reads from PanDA, with counts a test changes between cycles:

- ``/api/v1/statistics/active_job_stats_by_site`` and ``.../active_job_detailed_stats_by_site``
  (JSON ``{"success", "message", "data"}``),
- the legacy ``/server/panda/getJobStatisticsPerSite`` and ``getJobStatisticsWithLabel``
  (protocol-0 pickle of plain dicts, text/plain),
- ``/queues.json``: queue configuration with each site's status (CRIC style).

Failure modes (``go_offline``, ``set_malformed``, ``delay``) let tests and the demo show that
queues fail closed. ``POST /_emulator/{counts,site_status,mode}`` changes the same state from
outside the process (the standalone demo). Run it with
``python -m pilotfactory.sim.panda_server --port 25080``.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)

API = "/api/v1"
LEGACY = "/server/panda"
STATS = API + "/statistics/active_job_stats_by_site"
DETAILED = API + "/statistics/active_job_detailed_stats_by_site"
LEGACY_STATS = LEGACY + "/getJobStatisticsPerSite"
LEGACY_LABEL = LEGACY + "/getJobStatisticsWithLabel"
QUEUES = "/queues.json"
ALWAYS_PRESENT = ("assigned", "activated", "running")
"""The real server lists these as 0 for every site it reports."""

MALFORMED = ("json", "shape", "success_false", "negative")
OFFLINE = ("refuse", "503")


class PandaEmulator:
    """A threaded HTTP server on ``host:port`` (0 picks a free port); use it as a context manager.

    ``url`` is the JSON API base (what ``baseurl`` takes), ``legacy_url`` APF's base and
    ``sitestatus_url`` the queue configuration. ``requests`` lists every path served.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.host = host
        self.port = port
        self.token = token
        """When set, every endpoint but the control one wants ``Authorization: Bearer <token>``."""
        self.delay = 0.0
        """Seconds to wait before answering (to provoke client timeouts)."""
        self.requests: list[str] = []
        self._lock = threading.RLock()
        # site -> resource_type -> label -> status -> count
        self._counts: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
        self._site_status: dict[str, str] = {}
        self._offline: str | None = None
        self._malformed: str | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._server is None:
            server = ThreadingHTTPServer((self.host, self.port), _make_handler(self))
            server.daemon_threads = True
            self.port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},  # quick stop / go_offline
                name=f"panda-emulator:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.root_url + API

    @property
    def legacy_url(self) -> str:
        return self.root_url + LEGACY

    @property
    def sitestatus_url(self) -> str:
        return self.root_url + QUEUES

    # ------------------------------------------------------------------------ state

    def set_counts(
        self,
        site: str,
        counts: Mapping[str, int],
        label: str = "managed",
        resource_type: str = "SCORE",
    ) -> None:
        """Replace the job counts of one (site, resource type, label); other buckets stay."""
        with self._lock:
            by_rt = self._counts.setdefault(site, {})
            by_rt.setdefault(resource_type, {})[label] = {k: int(v) for k, v in counts.items()}

    def clear(self, site: str | None = None) -> None:
        """Forget the counts of one site (it then has no jobs), or of all sites."""
        with self._lock:
            if site is None:
                self._counts.clear()
            else:
                self._counts.pop(site, None)

    def set_site_status(self, site: str, status: str | None) -> None:
        """``online`` / ``test`` / ``offline`` / ``brokeroff`` / any text; None removes it."""
        with self._lock:
            if status is None:
                self._site_status.pop(site, None)
            else:
                self._site_status[site] = status

    def go_offline(self, mode: str = "refuse") -> None:
        """``refuse``: close the socket (connection refused); ``503``: answer 503 to all."""
        if mode not in OFFLINE:
            raise ValueError(f"offline mode {mode!r}: expected one of {OFFLINE}")
        with self._lock:
            self._offline = mode
        if mode == "refuse":
            self.stop()

    def go_online(self) -> None:
        """Serve again, on the same port."""
        with self._lock:
            self._offline = None
        self.start()

    def set_malformed(self, kind: str | None) -> None:
        """Break the statistics replies: ``json`` (not JSON / not a pickle), ``shape`` (data
        is a list), ``success_false``, ``negative`` (a count of -1); None repairs them."""
        if kind is not None and kind not in MALFORMED:
            raise ValueError(f"malformed kind {kind!r}: expected one of {MALFORMED}")
        with self._lock:
            self._malformed = kind

    def request_count(self, path: str) -> int:
        """How many requests were served for ``path`` (query string ignored)."""
        with self._lock:
            return sum(1 for p in self.requests if p == path)

    # ------------------------------------------------------------------------ replies

    def stats(self) -> dict[str, dict[str, int]]:
        """``{site: {status: n}}`` summed over labels and resource types."""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for site, by_rt in self._counts.items():
                row = dict.fromkeys(ALWAYS_PRESENT, 0)
                for by_label in by_rt.values():
                    for by_status in by_label.values():
                        for status, n in by_status.items():
                            row[status] = row.get(status, 0) + n
                out[site] = row
            return out

    def detailed_stats(self) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
        with self._lock:
            return json.loads(json.dumps(self._counts))  # type: ignore[no-any-return]

    def label_stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """Legacy ``{site: {label: {status: n}}}`` summed over resource types."""
        with self._lock:
            out: dict[str, dict[str, dict[str, int]]] = {}
            for site, by_rt in self._counts.items():
                labels = out.setdefault(site, {})
                for by_label in by_rt.values():
                    for label, by_status in by_label.items():
                        row = labels.setdefault(label, {})
                        for status, n in by_status.items():
                            row[status] = row.get(status, 0) + n
            return out

    def queues(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {
                site: {"name": site, "panda_queue": site, "status": status}
                for site, status in self._site_status.items()
            }

    def _break(self, data: Any) -> Any:
        if self._malformed == "shape":
            return [data]
        if self._malformed == "negative":
            return {"BROKEN_SITE": {"activated": -1}}
        return data

    def answer(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> _Reply:
        """The reply to one request (also usable without a socket)."""
        path = path.split("?", 1)[0]
        with self._lock:
            self.requests.append(path)
            offline, malformed = self._offline, self._malformed
        if method == "POST" and path.startswith("/_emulator/"):
            return self._control(path, body)
        if offline == "503":
            return _Reply(503, "text/plain", b"Service Unavailable (emulator offline)\n")
        if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
            return _json_reply(401, {"success": False, "message": "unauthorized", "data": None})
        if path in (STATS, DETAILED):
            data: Any = self.stats() if path == STATS else self.detailed_stats()
            if malformed == "json":
                return _Reply(200, "application/json", b'{"success": true, "data": {')
            if malformed == "success_false":
                return _json_reply(
                    200, {"success": False, "message": "emulated failure", "data": None}
                )
            return _json_reply(200, {"success": True, "message": "", "data": self._break(data)})
        if path in (LEGACY_STATS, LEGACY_LABEL):
            if malformed in ("json", "success_false"):
                return _Reply(200, "text/plain", b"not a pickle")
            data = self.stats() if path == LEGACY_STATS else self.label_stats()
            return _Reply(200, "text/plain", pickle.dumps(self._break(data), protocol=0))
        if path == QUEUES:
            return _json_reply(200, self.queues())
        return _json_reply(404, {"success": False, "message": f"no such path {path}"})

    def _control(self, path: str, body: bytes) -> _Reply:
        try:
            req = json.loads(body or b"{}")
            what = path.removeprefix("/_emulator/")
            if what == "counts":
                self.set_counts(
                    req["site"],
                    req["counts"],
                    req.get("label", "managed"),
                    req.get("resource_type", "SCORE"),
                )
            elif what == "site_status":
                self.set_site_status(req["site"], req.get("status"))
            elif what == "mode":
                mode = req.get("mode")
                if mode == "503":
                    self.go_offline("503")
                elif mode in (None, "online"):
                    with self._lock:
                        self._offline = None
                    self.set_malformed(None)
                else:
                    self.set_malformed(mode)
            else:
                return _json_reply(404, {"success": False, "message": f"unknown control {what}"})
        except (ValueError, KeyError, TypeError) as exc:
            return _json_reply(400, {"success": False, "message": f"bad request: {exc!r}"})
        return _json_reply(200, {"success": True, "message": "", "data": None})


class _Reply:
    __slots__ = ("body", "content_type", "status")

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body


def _json_reply(status: int, doc: Any) -> _Reply:
    return _Reply(status, "application/json", json.dumps(doc).encode())


def _make_handler(emu: PandaEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if emu.delay > 0:
                time.sleep(emu.delay)
            reply = emu.answer(method, self.path, dict(self.headers.items()), body)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("panda emulator: " + format, *args)

    return Handler


def _parse_counts(text: str) -> tuple[str, dict[str, int]]:
    """``SITE:status=n,status=n`` from the command line."""
    site, _, rest = text.partition(":")
    counts = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        status, _, n = part.partition("=")
        counts[status.strip()] = int(n)
    return site, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Local PanDA server emulator (tests and demo).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=25080)
    ap.add_argument(
        "--counts",
        action="append",
        default=[],
        metavar="SITE:status=n,...",
        help="initial counts (label managed, resource type SCORE); repeatable",
    )
    ap.add_argument(
        "--site-status", action="append", default=[], metavar="SITE=status", help="repeatable"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    emu = PandaEmulator(args.host, args.port)
    for spec in args.counts:
        emu.set_counts(*_parse_counts(spec))
    for spec in args.site_status:
        site, _, status = spec.partition("=")
        emu.set_site_status(site, status)
    with emu:
        log.info("PanDA emulator: baseurl %s, site status %s", emu.url, emu.sitestatus_url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
