"""Where the factory's log records go: stderr always, per-queue files when configured.

stderr carries every record at the ``-v`` level, as inert text or as one JSON object a line
(``--log-format json``). With ``factory.queueLogDir`` set, ``run`` also writes each queue's
records to ``<dir>/<queue>.log`` (at least INFO, so the queue's one line per cycle is always
there), rotated at ``factory.logMaxBytes`` keeping ``factory.logBackups`` files, or, with
``factory.logMaxBytes = 0``, reopened when logrotate moves the file away.

A record belongs to a queue when it carries ``queue`` (``extra=``) or was emitted while that
queue's cycle ran (``trace.CURRENT_QUEUE``), so a plugin's or backend's line lands in the
queue's file without naming the queue. One routing handler rather than a logger per queue:
queue names hold dots (``ANALY_X-gk01.bnl.gov``), which a logger name would turn into a false
hierarchy, and loggers are never freed, while a reload must close a removed queue's file.
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from pilotfactory.factory.config import FactoryConfig, name_problem
from pilotfactory.factory.text import one_line, printable
from pilotfactory.factory.trace import CURRENT_QUEUE

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_MODE = 0o640
"""Queue log files: error texts and worker names are for the factory's group, not the world
(as the status file)."""
DIR_MODE = 0o750

_installed: list[logging.Handler] = []
"""The handlers ``setup`` and ``add_queue_files`` put on the root logger (replaced, never
doubled, when called again)."""
_install_lock = threading.Lock()


class LogSetupError(Exception):
    """The configured log destination cannot be used; the message names setting and path."""


def queue_of(record: logging.LogRecord) -> str | None:
    """The queue a record belongs to: its own ``queue`` (``extra=``), else the queue whose
    cycle emitted it (handlers run in the emitting thread, so the context is the caller's)."""
    queue = getattr(record, "queue", None)
    return queue if isinstance(queue, str) else CURRENT_QUEUE.get()


class OneLineFormatter(logging.Formatter):
    """Every record's message is one inert line: outside text that reached a log call without
    ``clip`` still cannot forge a record (``\\r\\n``) or drive the terminal (``ESC [``). A
    traceback, appended after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))


def _inert(value: Any) -> Any:
    """``value`` with every string made one inert line, as the text format shows it (JSON
    would escape control characters anyway; this keeps both formats saying the same)."""
    if isinstance(value, str):
        return one_line(value)
    if isinstance(value, dict):
        return {one_line(str(k)): _inert(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_inert(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return one_line(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``;
    ``queue`` when the record belongs to one; a queue's cycle line adds the keys of its
    ``trace`` extra (``cycle``, ``n``, ``chain``, ``actions``, ``results``, ``notes``,
    ``errors``, ``dry_run``); ``exc`` holds a traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": one_line(record.getMessage()),
        }
        queue = queue_of(record)
        if queue is not None:
            out["queue"] = one_line(queue)
        fields = getattr(record, "trace", None)
        if isinstance(fields, dict):
            for key, value in _inert(fields).items():
                out.setdefault(key, value)  # never over time, level, logger, message, queue
        if record.exc_info:
            out["exc"] = _lines(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = _lines(self.formatStack(record.stack_info))
        return json.dumps(out)


def _lines(text: str) -> str:
    """A traceback keeps its line breaks (escaped by JSON); anything else inert."""
    return "\n".join(one_line(line) for line in text.splitlines())


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return OneLineFormatter(TEXT_FORMAT)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when the record is emitted (as logging's last
    resort does), so a replaced stderr (tests, a reconfigured stream) is never written after
    it was closed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _replace(kind: type[logging.Handler] | None, new: logging.Handler | None) -> None:
    """Put ``new`` on the root logger in place of the installed handler of ``kind`` (None:
    all of them), closing what it replaces; foreign handlers are left alone."""
    root = logging.getLogger()
    with _install_lock:
        for old in [h for h in _installed if kind is None or isinstance(h, kind)]:
            root.removeHandler(old)
            _installed.remove(old)
            old.close()
        if new is not None:
            root.addHandler(new)
            _installed.append(new)


def setup(verbose: int, fmt: str = "text") -> None:
    """stderr logging at WARNING, INFO with ``-v``, DEBUG with ``-vv``, in ``fmt``."""
    level = max(logging.DEBUG, logging.WARNING - 10 * verbose)
    handler = _StderrHandler()
    handler.setFormatter(formatter(fmt))
    handler.setLevel(level)
    _replace(None, handler)
    logging.getLogger().setLevel(level)


def teardown() -> None:
    """Remove and close every handler ``setup`` / ``add_queue_files`` installed."""
    _replace(None, None)


class _PrivateFile(logging.FileHandler):
    """Opens the log file 0640, never through a symlink planted at its name."""

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.baseFilename, flags, FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


class _RotatingFile(_PrivateFile, logging.handlers.RotatingFileHandler):
    pass


class _WatchedFile(_PrivateFile, logging.handlers.WatchedFileHandler):
    pass


def queue_log_path(directory: str, queue: str) -> str:
    """``<directory>/<queue>.log``, refused unless it names a file directly inside
    ``directory``: queue names are checked at load (``config.name_problem``), this checks
    again where the name becomes a path (``.``, ``..``, a separator, a symlink out)."""
    if (
        queue in ("", ".", "..")
        or os.sep in queue
        or (os.altsep is not None and os.altsep in queue)
        or name_problem(queue) is not None
    ):
        raise LogSetupError(f"queue {printable(queue)!r} cannot name a log file")
    path = os.path.join(directory, f"{queue}.log")
    real_dir = os.path.realpath(directory)
    if os.path.dirname(os.path.realpath(path)) != real_dir:
        raise LogSetupError(
            f"factory.queueLogDir {printable(directory)}: the log file of queue "
            f"{printable(queue)!r} would be outside it"
        )
    return path


class QueueFiles(logging.Handler):
    """Routes each queue's records to its own file under ``directory``. Records of no queue,
    or of a queue it was not told about (``set_queues``), go to no file, so nothing outside
    the configured queues ever names a file."""

    def __init__(self, directory: str, max_bytes: int, backups: int, fmt: str, level: int) -> None:
        super().__init__(level)
        self.directory = directory
        self.max_bytes = max_bytes
        self.backups = backups
        self.fmt = fmt
        self._files: dict[str, logging.Handler] = {}

    def _open(self, queue: str) -> logging.Handler:
        path = queue_log_path(self.directory, queue)
        handler: logging.Handler
        try:
            if self.max_bytes > 0:
                handler = _RotatingFile(
                    path,
                    maxBytes=self.max_bytes,
                    backupCount=self.backups,
                    encoding="utf-8",
                    errors="backslashreplace",
                )
            else:  # rotation is logrotate's: reopen when the file is moved away
                handler = _WatchedFile(path, encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            raise LogSetupError(
                f"factory.queueLogDir: cannot open {printable(path)}: {exc.strerror or exc}"
            ) from None
        handler.setFormatter(formatter(self.fmt))
        return handler

    def set_queues(self, queues: Iterable[str], strict: bool = False) -> list[str]:
        """Open the files of new queues and close those of queues no longer there (start and
        every reload); returns why a queue has no file. ``strict`` (start): raise on the
        first one instead."""
        wanted = list(dict.fromkeys(queues))
        problems: list[str] = []
        self.acquire()
        try:
            for gone in [q for q in self._files if q not in wanted]:
                self._files.pop(gone).close()
            for queue in wanted:
                if queue in self._files:
                    continue
                try:
                    self._files[queue] = self._open(queue)
                except LogSetupError as exc:
                    if strict:
                        raise
                    problems.append(str(exc))
        finally:
            self.release()
        for problem in problems:  # logged outside the lock: this handler takes the record too
            logging.getLogger(__name__).error("%s; its records go to stderr only", problem)
        return problems

    @property
    def queues(self) -> list[str]:
        return list(self._files)

    def emit(self, record: logging.LogRecord) -> None:
        queue = queue_of(record)
        target = None if queue is None else self._files.get(queue)
        if target is not None:
            target.handle(record)

    def close(self) -> None:
        self.acquire()
        try:
            for handler in self._files.values():
                handler.close()
            self._files.clear()
        finally:
            self.release()
        super().close()


def prepare_directory(directory: str) -> None:
    """Create ``directory`` 0750 when missing; refuse one the factory cannot write into."""
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
            os.chmod(directory, DIR_MODE)  # makedirs' mode is masked by the umask
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission for uid {os.geteuid()}")
    except OSError as exc:
        why = exc.strerror if exc.strerror else str(exc)
        raise LogSetupError(
            f"factory.queueLogDir = {printable(directory)}: cannot create or write the "
            f"directory: {why}"
        ) from None


def add_queue_files(fcfg: FactoryConfig, fmt: str, verbose: int) -> QueueFiles | None:
    """The per-queue files of ``fcfg`` on the root logger (None when ``factory.queueLogDir``
    is unset). Their level is INFO (DEBUG with ``-vv``) whatever stderr's is: the queue's
    one line per cycle is what the file is for. Raises ``LogSetupError`` naming setting and
    path when the directory cannot be made or written."""
    if not fcfg.queue_log_dir:
        return None
    directory = fcfg.queue_log_dir
    prepare_directory(directory)
    level = min(logging.INFO, max(logging.DEBUG, logging.WARNING - 10 * verbose))
    files = QueueFiles(directory, fcfg.log_max_bytes, fcfg.log_backups, fmt, level)
    _replace(QueueFiles, files)
    root = logging.getLogger()
    if root.getEffectiveLevel() > level:
        root.setLevel(level)
    return files
