"""What ``run`` does before its first cycle: whose privileges it keeps, and that it is the only
daemon of its factory id on this host.

Two daemons with one factory id would each see the other's workers as their own and submit,
retire and reap them twice; a lock file held with ``flock`` for the life of the process (the
kernel lets go when it dies, even by ``kill -9``) makes the second one exit, saying who holds it.
A factory talks to schedds, clouds and PanDA on the network: it does not keep root's
privileges unless told to (``allowRoot``), and, as APF does, switches to ``factoryUser`` when
started as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import socket
import sys
import tempfile
import time
from typing import Any

from pilotfactory.factory.config import FactoryConfig


class ServiceError(Exception):
    """``run`` must not start: the message says why and what to do."""


def default_lock_path(factory_id: str) -> str:
    """``/run/pilotfactory`` when it exists and is ours to write (the shipped tmpfiles entry
    makes it), else ``$XDG_RUNTIME_DIR``, else a private directory under the temp dir."""
    name = f"{factory_id}.lock"
    if os.access("/run/pilotfactory", os.W_OK):
        return os.path.join("/run/pilotfactory", name)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return os.path.join(runtime, f"pilotfactory-{name}")
    return os.path.join(tempfile.gettempdir(), f"pilotfactory-{os.getuid()}", name)


class FactoryLock:
    """An exclusive ``flock`` on the lock file, kept until ``release`` or process exit. The
    file says who holds it (pid, host, start time, command), for the one refused."""

    def __init__(self, path: str, factory_id: str) -> None:
        self.path = path
        self.factory_id = factory_id
        self.fd: int | None = None

    def acquire(self) -> None:
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise ServiceError(f"lock file {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ServiceError(
                f"factory {self.factory_id} is already running ({holder}); lock {self.path}"
            ) from None
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "argv": sys.argv[:8],
        }
        os.write(fd, (json.dumps(info) + "\n").encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _holder(fd: int) -> str:
    try:
        info: Any = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(info.get("since", 0))))
    return f"pid {info['pid']} on {info.get('host', '?')} since {since}"


def drop_root(fcfg: FactoryConfig) -> str | None:
    """As root: switch to ``factoryUser`` (what was done, for the log), stay root with
    ``allowRoot``, else refuse. Not root: nothing (None)."""
    if os.geteuid() != 0:
        return None
    if fcfg.factory_user:
        try:
            user = pwd.getpwnam(fcfg.factory_user)
        except KeyError:
            raise ServiceError(
                f"{fcfg.source}: [Factory] factoryUser {fcfg.factory_user!r}: no such user"
            ) from None
        if user.pw_uid == 0:
            if fcfg.allow_root:
                return "running as root (factoryUser is root, allowRoot = true)"
            raise ServiceError(f"{fcfg.source}: [Factory] factoryUser is root; set allowRoot")
        os.initgroups(user.pw_name, user.pw_gid)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
        os.environ["HOME"] = user.pw_dir
        os.environ["USER"] = os.environ["LOGNAME"] = user.pw_name
        return f"switched from root to {user.pw_name} (uid {user.pw_uid})"
    if fcfg.allow_root:
        return "running as root (allowRoot = true)"
    raise ServiceError(
        "refusing to run as root: set factoryUser in [Factory] (run switches to that user), "
        "run it as an unprivileged user, or set allowRoot = true"
    )
