"""Minting the short-lived, scoped IDTOKEN a worker VM joins the pool with (issue 18).

Both condor backends use it (the bindings cannot sign with a chosen key): ``condor_token_create``
run as the CLI backend runs its tools (argv only, no shell, bounded, logged without the token;
its own small runner, since the CLI module imports the bindings one and this is shared). The signing
key is named by its file: its directory becomes ``SEC_PASSWORD_DIRECTORY`` and its name the
``-key`` of this one call, so the factory needs no pool-wide configuration for it.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from pilotfactory.factory.ports import CondorRejected, CondorUnreachable
from pilotfactory.factory.text import clip
from pilotfactory.secretfiles import SecretFileError, check_private

log = logging.getLogger(__name__)

_IDENTITY = re.compile(r"^[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+$")
_AUTHZ = re.compile(r"^[A-Z_]+$")
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


def run(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> str:
    """One tool's stdout; its stderr (never its stdout: a token) in the error on failure."""
    path = shutil.which(argv[0])
    if path is None:
        raise CondorUnreachable(f"{argv[0]} not found on PATH", daemon=argv[0])
    log.debug("run %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            [path, *argv[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CondorUnreachable(f"{argv[0]} timed out after {timeout:g}s") from exc
    if proc.returncode != 0:
        why = clip(proc.stderr or "", 800)
        raise CondorRejected(f"{shlex.join(argv)} exited {proc.returncode}: {why}", daemon=argv[0])
    return proc.stdout or ""


def default_identity(timeout: float = 30.0) -> str:
    """``condor@<UID_DOMAIN>`` of the factory's own HTCondor configuration."""
    domain = run(["condor_config_val", "UID_DOMAIN"], timeout).strip()
    return f"condor@{domain}"


def create_token(
    identity: str | None,
    authz: Sequence[str],
    lifetime: int,
    key_file: str | None = None,
    *,
    timeout: float = 60.0,
) -> str:
    """One IDTOKEN (one line) for ``identity`` limited to ``authz``, expiring ``lifetime``
    seconds from now, signed with ``key_file`` (else the pool's default key)."""
    identity = identity or default_identity(timeout)
    if not _IDENTITY.match(identity):
        raise CondorRejected(f"token identity {identity[:60]!r} is not user@domain")
    if int(lifetime) <= 0:
        raise CondorRejected(f"token lifetime {lifetime!r}: must be positive (tokens expire)")
    argv = ["condor_token_create", "-identity", identity, "-lifetime", str(int(lifetime))]
    for a in authz:
        if not _AUTHZ.match(a):
            raise CondorRejected(f"token authorization {a[:40]!r} is not an HTCondor level")
        argv += ["-authz", a]
    env = None
    if key_file:
        try:
            key = check_private(key_file, "token_signing_key file")
        except SecretFileError as exc:
            raise CondorRejected(str(exc)) from None
        env = {**os.environ, "_CONDOR_SEC_PASSWORD_DIRECTORY": str(key.parent)}
        argv += ["-key", key.name]
    out = run(argv, timeout, env).strip()
    token = out.splitlines()[-1].strip() if out else ""
    if not _JWT.match(token):
        raise CondorRejected("condor_token_create printed no token", daemon=argv[0])
    return token
