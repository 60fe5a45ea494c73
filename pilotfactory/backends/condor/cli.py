"""The condor port on the ``condor_*`` command-line tools (fallback to the bindings).

Used where the bindings cannot be: a pool whose tools must run elsewhere (the test sandbox's
chroot wrappers), or a site that trusts only its installed CLI. Tools are found on ``PATH`` at
call time. Every call goes through :func:`run`: argv lists only (never a shell), logged, bounded
by a timeout, and a failure carries the exit code plus the head and tail of the tool's output.
Ads are parsed from ``-json`` output into the same plain dicts the bindings return.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import classad2

from pilotfactory.backends.condor.bindings import (
    ADMIN_TOKEN_DIR_ENV,
    check_token_dir,
    checked_constraint,
    classify,
    plain_ads,
)
from pilotfactory.factory.constraints import job_ids_constraint
from pilotfactory.factory.contract import UnsafeValue, inert, submit_key
from pilotfactory.factory.ports import (
    CondorError,
    CondorRejected,
    CondorTarget,
    CondorUnreachable,
    SubmitResult,
    combine,
    render_match,
)
from pilotfactory.factory.text import clip

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
OUTPUT_LIMIT = 1600  # head + tail of a tool's output kept in an error
_EXPR = re.compile(r"^/Expr\((.*)\)/$", re.DOTALL)
_JOB_ID = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        parts = [f"{shlex.join(self.argv)} exited {self.returncode}"]
        if self.stderr.strip():
            parts.append(f"stderr: {clip(self.stderr, OUTPUT_LIMIT)}")
        if self.stdout.strip():
            parts.append(f"stdout: {clip(self.stdout, OUTPUT_LIMIT)}")
        return "; ".join(parts)


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    default: type[CondorError] = CondorRejected,
) -> CommandResult:
    """Run one tool; on failure raise ``default`` (or what the message says) with its output."""
    args = [str(a) for a in argv]
    path = shutil.which(args[0])
    if path is None:
        raise CondorUnreachable(f"{args[0]} not found on PATH", daemon=args[0])
    log.debug("run %s", shlex.join(args))
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [path, *args[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CondorUnreachable(
            f"{shlex.join(args)} timed out after {timeout:g}s", daemon=args[0]
        ) from exc
    result = CommandResult(args, proc.returncode, proc.stdout or "", proc.stderr or "")
    log.debug("%s exited %d in %.2fs", args[0], result.returncode, time.monotonic() - started)
    if check and result.returncode != 0:
        detail = result.describe()
        cls = classify(f"{result.stderr}\n{result.stdout}", default)
        raise cls(detail, daemon=args[0], detail=clip(result.stderr or result.stdout, OUTPUT_LIMIT))
    return result


def parse_json_ads(text: str, projection: Sequence[str]) -> list[dict[str, Any]]:
    """``-json`` output (an array, or nothing when no ad matched) as plain dicts."""
    text = text.strip()
    if not text:
        return []
    try:
        objects = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CondorRejected(f"unparseable -json output: {clip(text)}") from exc
    return plain_ads((_to_classad(obj) for obj in objects), projection)


def _to_classad(obj: Mapping[str, Any]) -> classad2.ClassAd:
    """Expressions come as ``"/Expr(...)/"`` strings: parse them back, as the bindings keep them."""
    ad = classad2.ClassAd()
    for key, value in obj.items():
        if isinstance(value, str) and (m := _EXPR.match(value)):
            ad[key] = classad2.ExprTree(m.group(1))
        else:
            ad[key] = value
    return ad


def render_ads(ads: Sequence[Mapping[str, Any]]) -> str:
    """Ads in the old ClassAd syntax, separated by one blank line each (``-multiple``)."""
    return "\n".join(_to_classad(ad).printOld().rstrip("\n") + "\n" for ad in ads)


def _job_constraint(job_ids: Sequence[str]) -> str:
    """The jobs to edit, as the decision tree the rechecks use (``job_ids_constraint``): the
    schedd evaluates it against every job, and a flat ``||`` chain of ~400 ids fails to."""
    for job_id in job_ids:
        if not _JOB_ID.match(job_id):
            raise ValueError(f"not a cluster.proc job id: {job_id!r}")
    return job_ids_constraint(job_ids) or "false"


def render_submit(description: Mapping[str, str], count: int) -> str:
    """A submit file: one ``key = value`` line per entry and a single ``queue count``."""
    lines = []
    for key, value in description.items():
        if key.strip().lower() == "queue":
            raise ValueError("the count is an argument, not a 'queue' key")
        try:
            lines.append(f"{submit_key(key)} = {inert(str(value), key, macros=True)}")
        except UnsafeValue as exc:
            raise CondorRejected(f"submit description: {exc}") from None
    lines.append(f"queue {count}")
    return "\n".join(lines) + "\n"


class CliCondor:
    """CondorPort on the condor_* tools; ``-name`` / ``-pool`` come from the APF-style target."""

    def __init__(
        self,
        target: CondorTarget,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        admin_token_dir: str | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        # Admin tools get their own token directory through their environment (per process,
        # unlike the bindings' process-wide switch).
        self.admin_token_dir = admin_token_dir or os.environ.get(ADMIN_TOKEN_DIR_ENV) or None
        if self.admin_token_dir:
            check_token_dir(self.admin_token_dir)

    def __repr__(self) -> str:
        return f"CliCondor({self.target!r})"

    def _schedd_args(self) -> list[str]:
        args = []
        if self.target.schedd:
            args += ["-name", self.target.schedd]
        if self.target.collector:
            args += ["-pool", self.target.collector]
        return args

    def _pool_args(self) -> list[str]:
        return ["-pool", self.target.collector] if self.target.collector else []

    def _admin_env(self) -> dict[str, str] | None:
        if not self.admin_token_dir:
            return None
        return {**os.environ, "_CONDOR_SEC_TOKEN_DIRECTORY": self.admin_token_dir}

    def _run(self, argv: list[str], **kwargs: Any) -> CommandResult:
        return run(argv, timeout=self.timeout, **kwargs)

    # -- queries -----------------------------------------------------------------------------

    @staticmethod
    def _attr_args(projection: Sequence[str]) -> list[str]:
        return ["-attributes", ",".join(projection)] if projection else []

    def query_jobs(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        argv = ["condor_q", *self._schedd_args(), "-allusers", "-json"]
        argv += [
            *self._attr_args(projection),
            "-constraint",
            checked_constraint(combine(match, constraint)),
        ]
        return parse_json_ads(self._run(argv).stdout, projection)

    def query_history(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        since: float,
        limit: int,
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        constraint = render_match(match)
        argv = ["condor_history", *self._schedd_args(), "-json", *self._attr_args(projection)]
        if since > 0:
            # Newest first: stop the scan at the first record older than ``since``.
            constraint = f"({constraint}) && EnteredCurrentStatus >= {int(since)}"
            argv += ["-since", f"EnteredCurrentStatus < {int(since)}"]
        argv += ["-limit", str(limit), "-constraint", constraint]
        return parse_json_ads(self._run(argv).stdout, projection)[:limit]

    def query_startds(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        argv = ["condor_status", *self._pool_args(), "-json", *self._attr_args(projection)]
        argv += ["-constraint", checked_constraint(combine(match, constraint))]
        return parse_json_ads(self._run(argv, default=CondorUnreachable).stdout, projection)

    def query_masters(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        argv = ["condor_status", *self._pool_args(), "-master", "-json"]
        argv += [*self._attr_args(projection)]
        argv += ["-constraint", checked_constraint(combine(match, constraint))]
        return parse_json_ads(self._run(argv, default=CondorUnreachable).stdout, projection)

    def ping_schedd(self) -> None:
        """One attribute of at most one job (see ``BindingsCondor.ping_schedd``)."""
        argv = ["condor_q", *self._schedd_args(), "-allusers", "-json", "-limit", "1"]
        self._run([*argv, "-attributes", "ClusterId"], default=CondorUnreachable)

    def ping_collector(self) -> None:
        """The collector's own ad (one small query)."""
        argv = ["condor_status", *self._pool_args(), "-collector", "-json", "-attributes", "Name"]
        self._run(argv, default=CondorUnreachable)

    def advertise(self, ads: Sequence[Mapping[str, Any]]) -> None:
        """All ads in one file: one ``condor_advertise -multiple`` call (without
        ``-multiple`` the tool ignores the blank lines and sends one merged ad)."""
        if not ads:
            return
        with tempfile.TemporaryDirectory(prefix="pilotfactory-advertise-") as tmp:
            path = os.path.join(tmp, "ads")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(render_ads(ads))
            argv = ["condor_advertise", *self._pool_args(), "-multiple", "UPDATE_AD_GENERIC", path]
            self._run(argv)

    # -- schedd actions ----------------------------------------------------------------------

    def submit(self, description: Mapping[str, str], count: int) -> SubmitResult:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        text = render_submit(description, count)
        with tempfile.TemporaryDirectory(prefix="pilotfactory-submit-") as tmp:
            # Readable by the submitting identity even when the tool runs as another local user
            # (the sandbox's submit user); the description holds no secret.
            os.chmod(tmp, 0o711)  # noqa: S103 - traverse only, no listing
            path = os.path.join(tmp, "job.sub")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(path, 0o644)
            # Run from the caller's cwd: a job without initialdir gets it as Iwd, as with bindings.
            result = self._run(["condor_submit", "-terse", *self._schedd_args(), path])
        # -terse prints "<cluster>.<first> - <cluster>.<last>".
        m = re.search(r"(\d+)\.(\d+)\s*-\s*(\d+)\.(\d+)", result.stdout)
        if not m:
            raise CondorRejected(f"condor_submit: unexpected output: {clip(result.stdout)}")
        submitted = SubmitResult(
            cluster=int(m.group(1)), count=int(m.group(4)) - int(m.group(2)) + 1
        )
        log.debug("submitted %d job(s) as cluster %d", submitted.count, submitted.cluster)
        return submitted

    def remove(self, job_ids: Sequence[str], reason: str) -> int:
        if not job_ids:
            return 0
        for job_id in job_ids:
            if not _JOB_ID.match(job_id):
                raise ValueError(f"not a cluster.proc job id: {job_id!r}")
        argv = ["condor_rm", *self._schedd_args(), "-reason", reason, *job_ids]
        result = self._run(argv, check=False)
        removed = len(re.findall(r"marked for removal", result.stdout))
        if result.returncode != 0:
            # Jobs already gone are not an error ("Job 1.0 not found"); anything else is.
            other = [
                line
                for line in result.stderr.splitlines()
                if line.strip() and not re.search(r"not found|Couldn't find", line)
            ]
            if other or not (removed or "not found" in result.stderr):
                cls = classify(result.stderr, CondorUnreachable)
                raise cls(
                    result.describe(), daemon="condor_rm", detail=clip(result.stderr, OUTPUT_LIMIT)
                )
        return removed

    def edit(self, job_ids: Sequence[str], attr: str, value: str) -> None:
        if not job_ids:
            return
        argv = ["condor_qedit", *self._schedd_args(), "-constraint", _job_constraint(job_ids)]
        result = self._run([*argv, attr, value])
        m = re.search(r"for (\d+) matching job", result.stdout)
        if m and int(m.group(1)) < len(job_ids):
            raise CondorRejected(
                f"edit {attr}: only {m.group(1)} of {len(job_ids)} job(s) exist",
                daemon=self.target.schedd,
            )

    # -- startd commands (ADMINISTRATOR) -----------------------------------------------------

    def _admin(self, argv: list[str], default: type[CondorError] = CondorRejected) -> None:
        result = self._run(argv, env=self._admin_env(), default=default)
        log.debug("%s: %s", shlex.join(argv), clip(result.stdout or result.stderr))

    def retire_peaceful(self, machine: str) -> None:
        self._admin(
            ["condor_off", *self._pool_args(), "-peaceful", "-daemon", "startd", "-name", machine]
        )

    def unretire(self, machine: str) -> None:
        self._admin(["condor_on", *self._pool_args(), "-daemon", "startd", "-name", machine])

    def drain(self, machine: str, reason: str) -> None:
        self._admin(
            [
                "condor_drain",
                *self._pool_args(),
                "-graceful",
                "-exit-on-completion",
                "-reason",
                reason,
                machine,
            ]
        )

    def cancel_drain(self, machine: str) -> None:
        self._admin(["condor_drain", *self._pool_args(), "-cancel", machine])

    def vacate(self, machine: str, reason: str) -> None:
        self._admin(["condor_drain", *self._pool_args(), "-quick", "-reason", reason, machine])

    # -- worker tokens -----------------------------------------------------------------------

    def create_token(
        self,
        identity: str | None,
        authz: Sequence[str],
        lifetime: int,
        key_file: str | None = None,
    ) -> str:
        from pilotfactory.backends.condor.tokens import create_token

        return create_token(identity, authz, lifetime, key_file, timeout=self.timeout)
