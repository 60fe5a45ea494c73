"""The ``pilotfactory`` command.

Exit codes: 0 success; 1 configuration problems (``check`` found errors; ``run`` / ``status``
refuse to start with errors in [Factory] or with no usable queue); 2 usage error or a file that
cannot be read as INI text; 3 a cycle ran with queue errors (``--once``) or an endpoint failed
``check --preflight``; 141 stdout was closed by its reader (``| head``).
Logs go to stderr; machine-readable output (``--json``) to stdout. Whatever a config file holds,
the output is escaped text and the exit code one of these (no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any, NamedTuple

from pilotfactory import __version__
from pilotfactory.factory.config import (
    ConfigError,
    ConfigProblem,
    FactoryConfig,
    QueuesResult,
    default_factory_config,
    load_factory_config,
    load_queues,
)
from pilotfactory.factory.text import printable, redact_secrets
from pilotfactory.factory.trace import workers_view
from pilotfactory.logs import FORMATS, LogSetupError, QueueFiles, add_queue_files
from pilotfactory.logs import setup as setup_log_handlers
from pilotfactory.secretfiles import SecretFileError, check_private

log = logging.getLogger("pilotfactory")

EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_QUEUE_ERRORS = 0, 1, 2, 3
EXIT_PIPE = 141
"""stdout closed by its reader (``| head``): what a shell reports for a writer SIGPIPE killed."""
DEFAULT_FACTORY_CONF = "/etc/pilotfactory/factory.conf"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--factory-conf", metavar="FILE", help="factory.conf ([Factory])")
    p.add_argument(
        "-q",
        "--queues-conf",
        metavar="FILE",
        action="append",
        help="queues.conf (repeatable; later files win per key); overrides queueConf",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    _log_format(p)


def _log_format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="stderr and queue log files: inert text lines (default) or one JSON object a line",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pilotfactory",
        description="Keep HTCondor pools supplied with pilots and VMs (APF-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"pilotfactory {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="validate factory.conf and queues.conf")
    _common(p)
    p.add_argument("--json", action="store_true", help="problems as JSON")
    p.add_argument(
        "--preflight",
        action="store_true",
        help="also reach every schedd, collector, PanDA server and cloud account the queues use "
        "(credentials, quota headroom); exit 3 if one fails",
    )
    p.add_argument(
        "--preflight-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="bound on the whole pre-flight (60); an endpoint not done by then fails",
    )

    p = sub.add_parser(
        "show",
        help="print what one submit of a queue would send (secrets redacted), sending nothing",
    )
    _common(p)
    p.add_argument("queue", nargs="+", metavar="QUEUE", help="queue section name(s)")

    p = sub.add_parser("run", help="run the factory loop")
    _common(p)
    p.add_argument("--once", action="store_true", help="one cycle of every queue, then exit")
    p.add_argument("--cycles", type=int, help="stop after N cycles")
    p.add_argument("--dry-run", action="store_true", help="decide and print; act on nothing")
    p.add_argument("--json", action="store_true", help="print each cycle's traces as JSON lines")

    p = sub.add_parser("status", help="one dry-run cycle: every queue's inputs and decisions")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--queue", action="append", help="only this queue (repeatable)")
    p.add_argument(
        "--daemon",
        action="store_true",
        help="show the running daemon's recent decisions (its statusFile) instead of a new cycle",
    )
    p.add_argument(
        "--last", type=int, default=5, help="with --daemon: cycles per queue (5, all it keeps)"
    )
    p.add_argument(
        "--workers",
        action="store_true",
        help="also list each queue's workers: joined (instance + startd) apart from unjoined, "
        "with what this cycle does to each or why it holds back",
    )
    p.add_argument("--limit", type=int, default=50, help="with --workers: rows per group (50)")

    p = sub.add_parser(
        "sweep",
        help="terminate this factory's instances whose lease (plus grace) has passed, and its "
        "stopped ones, on every cloud account the queues use; no daemon needed",
    )
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="list what is due; terminate nothing")
    p.add_argument("--json", action="store_true", help="one JSON object: accounts, due, done")
    p.add_argument(
        "--grace",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="grace past the lease for instances whose queue is not configured and carry no "
        "grace tag (600)",
    )

    p = sub.add_parser("demo", help="run the factory against the embedded simulated pool and cloud")
    p.add_argument("-q", "--queues-conf", metavar="FILE", action="append")
    p.add_argument("-c", "--factory-conf", metavar="FILE")
    p.add_argument("--hours", type=float, default=6.0, help="simulated hours (6)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--workload",
        default="auto",
        help="auto (PanDA site or pool label), burst, spike, steady, panda, idle",
    )
    p.add_argument(
        "--every",
        type=int,
        default=0,
        help="also print every Nth cycle (default: only cycles that act)",
    )
    p.add_argument("--json", action="store_true", help="summary as JSON")
    p.add_argument("-v", "--verbose", action="count", default=0)
    _log_format(p)
    _sim_parser(sub)
    return parser


def _sim_parser(sub: Any) -> None:
    """``sim``: the what-if report (pilotfactory/sim/whatif.py); world settings are flags."""
    p = sub.add_parser(
        "sim",
        help="what would this configuration cost, and how long would jobs wait? (simulated)",
    )
    p.add_argument("-c", "--factory-conf", metavar="FILE")
    p.add_argument("-q", "--queues-conf", metavar="FILE", action="append")
    p.add_argument(
        "--compare", nargs=2, metavar=("A.conf", "B.conf"), help="two queues.conf side by side"
    )
    p.add_argument(
        "--workload",
        default="burst",
        help="burst, trickle, diurnal, quiet, heavy, or a CSV trace (submit,duration,cores,queue)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiply a shape's job count (1)")
    p.add_argument("--cores", type=int, default=1, help="cores per job of a shape (1)")
    p.add_argument("--hours", type=float, help="simulated hours (default: trace end + 2 h)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--boot-time", type=float, default=120.0, help="VM boot seconds (120)")
    p.add_argument("--boot-jitter", type=float, default=30.0, help="+- seconds, or sigma*boot")
    p.add_argument("--boot-dist", choices=("uniform", "lognormal"), default="uniform")
    p.add_argument("--never-join", type=float, default=0.0, help="fraction of VMs (0)")
    p.add_argument("--interruptions", type=float, default=0.0, help="per VM-hour (0)")
    p.add_argument("--price", type=float, default=0.10, help="per VM-hour (0.10)")
    p.add_argument("--activation-rate", type=float, help="PanDA jobs activated per minute")
    p.add_argument(
        "--poweroff-delay",
        type=float,
        default=10.0,
        help="seconds from a VM's startd exiting to the VM powering off (worker contract; 10)",
    )
    p.add_argument(
        "--no-self-shutdown",
        action="store_true",
        help="VMs never power themselves off (images without the etc/worker contract)",
    )
    p.add_argument(
        "--noclaim-shutdown",
        type=float,
        metavar="S",
        help="STARTD_NOCLAIM_SHUTDOWN of the VMs (the shipped template: 1200; default unset)",
    )
    p.add_argument(
        "--api-latency",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds a cloud call takes: a terminate lands that long after the decision (2)",
    )
    p.add_argument("--no-baselines", action="store_true", help="skip elastiq and the oracle")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="demand, workers, cost (needs [plot])")
    p.add_argument("-v", "--verbose", action="count", default=0)
    _log_format(p)


def setup_logging(verbose: int, fmt: str = "text") -> None:
    """stderr at WARNING (``-v`` INFO, ``-vv`` DEBUG) in ``fmt``; see ``pilotfactory.logs``."""
    setup_log_handlers(verbose, fmt)


class Loaded(NamedTuple):
    fcfg: FactoryConfig
    result: QueuesResult
    problems: list[str]
    """Printable problems, errors and warnings."""
    errors: list[str]
    refusal: str | None
    """Why ``run`` must not start: errors in [Factory], or no usable queue; else None."""


def load_all(args: argparse.Namespace) -> Loaded:
    """factory.conf (optional when -q is given) and every queue; returns printable problems."""
    problems: list[str] = []
    errors: list[str] = []
    refusal = None
    fpath = args.factory_conf
    if fpath is None and not args.queues_conf and os.path.exists(DEFAULT_FACTORY_CONF):
        fpath = DEFAULT_FACTORY_CONF
    if fpath:
        fcfg, fproblems = load_factory_config(fpath)
        problems.extend(str(p) for p in fproblems)
        errors.extend(str(p) for p in fproblems if p.severity == "error")
        if errors:
            refusal = f"{printable(fpath)}: [Factory] has errors"
            problems.append(refusal)
            errors.append(refusal)
    else:
        fcfg = default_factory_config()
    qpaths = list(args.queues_conf or fcfg.queue_conf)
    dirconf = None if args.queues_conf else fcfg.queue_dir_conf
    if not qpaths and not dirconf:
        if fpath:  # say where, and what in [Factory] may have hidden it
            first = f"; first error: {errors[0]}" if errors else ""
            raise ConfigError(
                f"{printable(fpath)}: [Factory] gives no queueConf or queueDirConf "
                f"(or give -q queues.conf){first}"
            )
        raise ConfigError(
            "no queues configuration: give -q queues.conf, or -c factory.conf with queueConf"
        )
    result = load_queues(qpaths, dirconf, fcfg)
    problems.extend(str(p) for p in result.problems)
    secrets = secret_file_problems(result)
    problems.extend(str(p) for p in secrets)
    problems.extend(str(p) for p in template_problems(result))
    errors.extend(str(p) for p in result.errors)
    errors.extend(str(p) for p in secrets if p.severity == "error")
    if not result.queues:
        files = printable(", ".join([*qpaths, *([dirconf] if dirconf else [])]))
        none = f"no usable queue ({len(result.broken)} broken, {len(result.disabled)} disabled)"
        problems.append(f"{files}: warning: {none}; run will not start")
        refusal = refusal or f"{files}: {none}"
    return Loaded(fcfg, result, problems, errors, refusal)


def secret_file_problems(result: QueuesResult) -> list[ConfigProblem]:
    """Every secret file a queue names (keys, tokens, passwords, proxies), judged the way the
    backends will judge it when they open it, so ``check`` says it first: open to group or
    others, or not a regular file, is an error; missing now is a warning (a proxy may be
    renewed into place later)."""
    out: list[ConfigProblem] = []
    seen: set[tuple[str, str]] = set()
    for q in result.queues:
        for spec in (q.wmsstatus, q.batchstatus, q.batchsubmit):
            for name, path in spec.cls.secret_files(spec.params).items():
                key = f"{spec.kind}.{spec.name.lower()}.{name}"
                if (q.name, path) in seen:
                    continue
                seen.add((q.name, path))
                try:
                    check_private(path, "secret file")
                except SecretFileError as exc:
                    missing = exc.mode is None and not os.path.lexists(os.path.expanduser(path))
                    severity = "warning" if missing else "error"
                    out.append(ConfigProblem(severity, q.source, q.name, key, str(exc)))
    return out


def template_problems(result: QueuesResult) -> list[ConfigProblem]:
    """Warnings about the user-data template of each VM queue (issue 18): a pool password,
    a signing key or a token without an expiry embedded in it (``template_warnings``)."""
    from pilotfactory.plugins.batchsubmit.cloud_common import template_warnings

    out: list[ConfigProblem] = []
    for q in result.queues:
        spec = q.batchsubmit
        key = f"{spec.kind}.{spec.name.lower()}"
        texts = []
        if path := spec.params.get("user_data_file"):
            try:
                with open(os.path.expanduser(str(path)), encoding="utf-8") as fh:
                    texts.append((f"{key}.user_data_file", f"template {path}", fh.read()))
            except (OSError, UnicodeError) as exc:
                out.append(ConfigProblem("warning", q.source, q.name, f"{key}.user_data_file",
                                         f"template {path} cannot be read: {exc}"))  # fmt: skip
        if inline := spec.params.get("user_data"):
            texts.append((f"{key}.user_data", "user_data", str(inline)))
        for where, what, text in texts:
            for warning in template_warnings(text):
                out.append(ConfigProblem("warning", q.source, q.name, where, f"{what}: {warning}"))
        if why := token_outlived(spec.params):
            out.append(ConfigProblem("warning", q.source, q.name, f"{key}.token_lifetime", why))
    return out


def token_outlived(params: Mapping[str, Any]) -> str | None:
    """A minted token expires (by default with the launch's lease + grace, so no secret in the
    user data outlives it), but a renewed VM lives on: once its security session with the
    collector ends (a collector restart, the session's own end) it cannot authenticate again and
    drops out of the pool, to be replaced as LOST. Say so where a VM may outlive its token."""
    from pilotfactory.plugins.batchsubmit.vmlife import LEASE, MAX_LIFETIME, token_lifetime

    if not params.get("token_signing_key") or not float(LEASE.of(params) or 0):
        return None
    token, life = token_lifetime(params), float(MAX_LIFETIME.of(params) or 0)
    if life and token >= life:
        return None
    span = f"max_lifetime {life:g}s" if life else "no max_lifetime (renewed without end)"
    return (
        f"minted tokens live {token}s but a VM may live longer ({span}): past its token it "
        "cannot re-authenticate after a collector restart and drops out as LOST; set "
        "max_lifetime, and token_lifetime >= max_lifetime if that longer-lived token is acceptable"
    )


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 1 on configuration errors; else, with ``--preflight``, 3 when an endpoint failed
    (the queues using it would fail closed at run time); warnings alone exit 0."""
    fcfg, result, problems, errors, _ = load_all(args)
    reports = _preflight(args, fcfg, result) if args.preflight else None
    failed = [r for r in reports or () if r.result.label == "FAIL"]
    if args.json:
        out: dict[str, Any] = {
            "ok": not errors and not failed,
            "queues": [q.name for q in result.queues],
            "broken": result.broken,
            "disabled": result.disabled,
            "problems": problems,
        }
        if reports is not None:
            out["preflight"] = [r.to_dict() for r in reports]
        print(json.dumps(out, indent=2))
    else:
        for line in problems:
            print(line)
        print(
            f"{len(result.queues)} queue(s) OK, {len(result.broken)} broken, "
            f"{len(result.disabled)} disabled; {len(errors)} error(s), "
            f"{len(problems) - len(errors)} warning(s)"
        )
        if reports is not None:
            print(format_preflight(reports))
    if errors:
        return EXIT_CONFIG
    return EXIT_QUEUE_ERRORS if failed else EXIT_OK


def _preflight(args: argparse.Namespace, fcfg: FactoryConfig, result: QueuesResult) -> list[Any]:
    """Probe every endpoint of the usable queues through the real world (``factory/preflight``)."""
    from pilotfactory.backends.world import RealWorld
    from pilotfactory.factory.preflight import run_preflight

    if args.preflight_timeout <= 0:
        raise ConfigError("--preflight-timeout must be > 0")
    return run_preflight(result.queues, RealWorld(fcfg.condor_backend), args.preflight_timeout)


def format_preflight(reports: Sequence[Any], shown_queues: int = 6) -> str:
    """One line per endpoint (result, endpoint, the queues using it, time), then its findings."""
    counts = {label: sum(r.result.label == label for r in reports) for label in ("ok", "warn")}
    bad = len(reports) - counts["ok"] - counts["warn"]
    lines = [
        f"pre-flight: {len(reports)} endpoint(s): {counts['ok']} ok, "
        f"{counts['warn']} warn, {bad} FAIL"
    ]
    width = max((len(r.endpoint) for r in reports), default=0)
    for r in reports:
        names = list(r.queues[:shown_queues])
        if len(r.queues) > shown_queues:
            names.append(f"+{len(r.queues) - shown_queues} more")
        lines.append(
            f"{r.result.label:<5} {r.endpoint:<{width}}  queues: {', '.join(names)}  "
            f"({r.seconds:.2f} s)"
        )
        lines.extend(f"        {f.result.label:<5} {f.what}" for f in r.findings)
    return "\n".join(lines)


def _make_factory(args: argparse.Namespace, dry_run: bool, service: bool = False) -> Any:
    """The factory, or None when it must not start (logged). ``service`` (``run``): first
    keep no root privileges (switch to factoryUser) and, unless a dry run, take the factory
    id's lock."""
    from pilotfactory.backends.world import RealWorld
    from pilotfactory.factory.clock import WallClock
    from pilotfactory.factory.factory import Factory

    fcfg, result, problems, _, refusal = load_all(args)
    for line in problems:
        log.warning("%s", line)
    if refusal is not None:
        log.error("not starting: %s", refusal)
        return None
    queue_logs: QueueFiles | None = None
    if service:
        from pilotfactory.service import FactoryLock, ServiceError, default_lock_path, drop_root

        try:
            if said := drop_root(fcfg):
                log.info("%s", said)
            if not dry_run:  # a dry run acts on nothing: it may look while the daemon runs
                lock_path = fcfg.lock_file or default_lock_path(fcfg.factory_id)
                lock = FactoryLock(lock_path, fcfg.factory_id)
                lock.acquire()
                _LOCKS.append(lock)  # held until the process exits
            # after drop_root: the factory user must own the files it rotates; a dry run
            # writes none (they are the daemon's)
            queue_logs = None if dry_run else add_queue_files(fcfg, args.log_format, args.verbose)
        except (ServiceError, OSError, LogSetupError) as exc:
            log.error("not starting: %s", exc)
            return None
    factory = Factory(
        fcfg, result.queues, RealWorld(fcfg.condor_backend), WallClock(), dry_run=dry_run
    )
    if queue_logs is not None:
        try:
            queue_logs.set_queues(factory.queues, strict=True)
        except LogSetupError as exc:
            log.error("not starting: %s", exc)
            return None
        reload = factory.reload_from_hook

        def reload_and_reopen() -> bool:
            """After a SIGHUP: files for new queues, removed queues' files closed."""
            done: bool = reload()
            queue_logs.set_queues(factory.queues)
            return done

        factory.reload_from_hook = reload_and_reopen  # type: ignore[method-assign]

    def reload_queues() -> QueuesResult:
        """The new queues; errors in [Factory] keep the old ones whole, and a broken queue
        keeps its old config (``Factory.reload``, which also refuses a reload to no queue)."""
        _, res, probs, _, why = load_all(args)
        for line in probs:
            log.warning("%s", line)
        if why is not None and why.endswith("[Factory] has errors"):
            raise ConfigError(why)
        return res  # no usable queue: Factory.reload keeps broken ones or refuses

    factory.reload_hook = reload_queues
    return factory


def _cancel_requests_on_stop(world: Any) -> None:
    """Make SIGTERM / SIGINT also set ``world.stopping`` (``RealWorld``), then do what the
    factory's own handler does (stop after this cycle): an HTTP request in flight ends within
    a fraction of a second instead of its deadline, and later ones of this last cycle fail at
    once, so its queues fail closed (no submission) and the daemon exits promptly."""
    stopping = getattr(world, "stopping", None)
    if stopping is None:
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            stopping.set()
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


_LOCKS: list[Any] = []


def cmd_run(args: argparse.Namespace) -> int:
    factory = _make_factory(args, dry_run=args.dry_run, service=True)
    if factory is None:
        return EXIT_CONFIG
    if args.once:
        traces = factory.cycle(force=True)
        _print_traces(traces, args.json)
        return EXIT_QUEUE_ERRORS if any(t.failed for t in traces) else EXIT_OK
    factory.install_signals()
    _cancel_requests_on_stop(factory.world)
    if factory.fcfg.metrics_port and not serve_metrics(factory):
        return EXIT_CONFIG
    from pilotfactory.service import Health, Notifier

    health = Health(Notifier(), factory.fcfg.unhealthy_after, time.monotonic())
    orig = factory.cycle

    def cycle_and_report(force: bool = False) -> Any:
        traces = orig(force)
        if args.json:
            _print_traces(traces, True)
        health.after_tick(traces, time.monotonic())
        return traces

    factory.cycle = cycle_and_report
    try:
        factory.run(cycles=args.cycles)
    finally:
        health.stopping()
    return EXIT_OK


def serve_metrics(factory: Any) -> bool:
    """Serve metrics on ``metrics_address``:``metrics_port``; False, logged naming both
    settings, when they cannot be bound (a busy port, an address this host lacks). Bound
    beyond loopback, it warns: the metrics name queues, schedds and servers."""
    fcfg = factory.fcfg
    try:
        host, port = factory.metrics.serve(fcfg.metrics_port, fcfg.metrics_address)
    except OSError as exc:
        where = _host_port(fcfg.metrics_address, fcfg.metrics_port)
        log.error(
            "not starting: cannot serve metrics on %s (metrics_address, metrics_port in %s): %s",
            where,
            fcfg.source,
            exc,
        )
        return False
    log.info("metrics on %s", _host_port(host, port))
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        log.warning(
            "metrics on %s are open beyond this host (metrics_address = %s): they name queues, "
            "schedds and servers; firewall the port or bind 127.0.0.1 / ::1",
            _host_port(host, port),
            fcfg.metrics_address,
        )
    return True


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _print_traces(traces: Sequence[Any], as_json: bool, workers: int | None = None) -> None:
    """``workers``: also each queue's workers, at most this many rows a group."""
    if as_json:
        for t in traces:
            record = t.to_dict()
            if workers is not None:
                record["workers"] = workers_view(t, workers)
            print(json.dumps(record), flush=True)
        return
    for t in traces:
        print(format_trace(t))
        if workers is not None:
            print(format_workers(workers_view(t, workers)))


def format_why_not(why: dict[str, Any]) -> list[str]:
    """The "why not" lines of a trace's ``why_not`` (live or from the daemon's file)."""
    lines = []
    if why.get("buy"):
        lines.append(f"  why nothing was bought: {printable(why['buy'], 400)}")
    for h in why.get("held", ()):
        ids = h.get("workers") or []
        more = f" +{h['count'] - len(ids)} more" if ids and h["count"] > len(ids) else ""
        shown = f" [{', '.join(printable(i, 80) for i in ids)}{more}]" if ids else ""
        lines.append(
            f"  {h['what']} held back for {h['count']}: {printable(h['reason'], 400)}{shown}"
        )
    return lines


def format_workers(view: dict[str, Any]) -> str:
    totals = view["totals"]
    lines = [f"  joined workers ({totals.get('joined', 0)}): instance/job + startd"]
    for r in view["joined"]:
        lines.append(
            f"    {printable(r['id'], 80):<24} {r['state']:<9} "
            f"startd={printable(r.get('startd') or '-', 80)} slots={r.get('slots') or '-'} "
            f"instance={printable(r.get('instance') or '-', 40)} since {_when(r['since'])}"
            + (f" as={printable(r['launched_as'], 200)}" if r.get("launched_as") else "")
            + (" protected" if r.get("protected") else "")
            + (f"  <- {printable(r['this_cycle'], 300)}" if r.get("this_cycle") else "")
        )
    lines.append(f"  not joined ({totals.get('unjoined', 0)}): no startd in the pool")
    for r in view["unjoined"]:
        lines.append(
            f"    {printable(r['id'], 80):<24} {r['state']:<9} "
            f"instance={printable(r.get('instance') or '-', 40)} since {_when(r['since'])}"
            + (f" as={printable(r['launched_as'], 200)}" if r.get("launched_as") else "")
            + (f"  ({printable(r['why'], 300)})" if r.get("why") else "")
            + (f"  <- {printable(r['this_cycle'], 300)}" if r.get("this_cycle") else "")
        )
    if totals.get("unmatched_startds"):
        lines.append(f"  startds matching no worker ({totals['unmatched_startds']}):")
        lines.extend(f"    {printable(m, 120)}" for m in view["unmatched_startds"])
    for group in ("joined", "unjoined"):
        if totals.get(group, 0) > len(view[group]):
            lines.append(f"  ({totals[group] - len(view[group])} more {group} not shown)")
    return "\n".join(lines)


def format_trace(t: Any) -> str:
    lines = [f"[{t.queue}]"]
    if t.wms is not None:
        w = t.wms
        lines.append(
            f"  wms:   ready={w.ready} notready={w.notready} running={w.running} "
            f"done={w.done} failed={w.failed} site={w.site_status.value}"
        )
    else:
        lines.append(f"  wms:   unavailable ({t.wms_error})")
    if t.batch is not None:
        states = " ".join(f"{k}={v}" for k, v in t.batch.by_state().items() if v)
        lines.append(
            f"  batch: pending={t.batch.pending} running={t.batch.running} [{states or 'empty'}]"
        )
    else:
        lines.append(f"  batch: unavailable ({t.batch_error})")
    if t.chain is not None:
        for step in t.chain.steps:
            lines.append(f"  chain: {step.reason}")
    lines.append(f"  n = {t.n}")
    lines.append(f"  decision: {t.decision()}")
    lines.extend(format_why_not(t.why_not(max_ids=10)))
    for r in t.results:
        lines.append(f"  done:  {r}")
    for note in t.notes:
        lines.append(f"  note:  {note}")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    """Each queue's submit description or launch request with its rendered user data, exactly
    as the submit plugin builds it, redacted; nothing is sent, created or contacted."""
    factory = _make_factory(args, dry_run=True)
    if factory is None:
        return EXIT_CONFIG
    code = EXIT_OK
    for name in args.queue:
        queue = factory.queues.get(name)
        if queue is None:
            known = ", ".join(sorted(factory.queues)) or "none"
            print(
                f"pilotfactory: no usable queue {printable(name)!r} (queues: {known})",
                file=sys.stderr,
            )
            code = EXIT_CONFIG
            continue
        try:
            text = queue.submitter.preview()
        except Exception as exc:  # a plugin's own refusal, said as it would say it
            print(f"pilotfactory: [{name}] {printable(str(exc), 2000)}", file=sys.stderr)
            code = EXIT_CONFIG
            continue
        if len(args.queue) > 1:
            print(f"### [{name}]")
        print(redact_secrets(text), end="" if text.endswith("\n") else "\n")
    return code


def cmd_sweep(args: argparse.Namespace, world: Any = None) -> int:
    """The dead-man's lease from outside (issue 18): list every instance tagged with this
    factory id on every account the queues reach (instances of queues no longer configured
    included) and terminate those past lease + grace, and the stopped ones (powered off where
    the provider stops: they only cost). 0: nothing due or all done; 1: an account could not
    be listed or an instance terminated; 2: usage or configuration."""
    from pilotfactory.plugins.sweep import sweep_all

    if args.grace < 0 or args.grace != args.grace:
        raise ConfigError("--grace must be a number of seconds >= 0")
    loaded = load_all(args)
    for line in loaded.problems:
        print(line, file=sys.stderr)
    if loaded.errors and not loaded.result.queues:
        return EXIT_USAGE
    if world is None:
        from pilotfactory.backends.world import RealWorld

        world = RealWorld(loaded.fcfg.condor_backend)
    fid = loaded.fcfg.factory_id
    now = time.time()
    results = sweep_all(loaded.result.queues, world, fid, now, args.grace, args.dry_run)
    failed = any(r.error for r in results)
    if args.json:
        out = {
            "factory": fid,
            "dry_run": args.dry_run,
            "accounts": [
                {
                    "account": r.account,
                    "listed": r.listed,
                    "due": [
                        {
                            "instance": d.instance_id,
                            "queue": d.queue,
                            "lease_until": d.lease_until,
                            "grace": d.grace,
                        }
                        for d in r.due
                    ],
                    "stopped": r.stopped,
                    "terminated": r.terminated,
                    "error": r.error,
                }
                for r in results
            ],
        }
        print(json.dumps(out, indent=1))
    else:
        if not results:
            print(f"factory {fid}: no queue reaches a cloud account; nothing to sweep")
        for r in results:
            head = f"{printable(r.account)}: {r.listed} instance(s) of factory {fid}"
            print(f"{head}, {len(r.due)} past lease + grace, {len(r.stopped)} stopped")
            verb = "would terminate" if args.dry_run else "terminated"
            for d in r.due:
                done = args.dry_run or d.instance_id in r.terminated
                print(f"  {verb if done else 'NOT terminated'} {printable(d.text(now))}")
            for iid in r.stopped:
                done = args.dry_run or iid in r.terminated
                print(f"  {verb if done else 'NOT terminated'} {printable(iid)} (stopped)")
            if r.error:
                print(f"  FAILED: {printable(r.error, 2000)}")
    return EXIT_CONFIG if failed else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.daemon:
        return daemon_status(args)
    factory = _make_factory(args, dry_run=True)
    if factory is None:
        return EXIT_CONFIG
    traces = factory.cycle(force=True)
    if args.queue:
        traces = [t for t in traces if t.queue in set(args.queue)]
    _print_traces(traces, args.json, max(1, args.limit) if args.workers else None)
    return EXIT_QUEUE_ERRORS if any(t.failed for t in traces) else EXIT_OK


def load_factory(args: argparse.Namespace) -> FactoryConfig:
    """factory.conf alone (``status --daemon`` reads no queue: it reads the daemon's file)."""
    fpath = args.factory_conf
    if fpath is None and os.path.exists(DEFAULT_FACTORY_CONF):
        fpath = DEFAULT_FACTORY_CONF
    if not fpath:
        raise ConfigError("status --daemon needs factory.conf (-c) with statusFile")
    fcfg, problems = load_factory_config(fpath)
    for p in problems:
        if p.severity == "error":
            raise ConfigError(str(p))
    return fcfg


def _read_daemon_status(path: str) -> dict[str, Any]:
    """The daemon's status file, checked for the shape this command reads: a truncated, empty
    or foreign file is a clear error naming the file, never a traceback."""
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the daemon's status: {exc}") from None
    shape: dict[str, type | tuple[type, ...]] = {
        "factory_id": str,
        "time": (int, float),
        "cycles": int,
        "sources": list,
        "queues": dict,
    }
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a pilotfactory status file (no JSON object)")
    for key, kind in shape.items():
        if not isinstance(state.get(key), kind):
            raise ConfigError(f"{path}: not a pilotfactory status file ({key!r} missing or bad)")
    for name, q in state["queues"].items():
        if not (
            isinstance(q, dict)
            and isinstance(q.get("history"), list)
            and isinstance(q.get("counters"), dict)
        ):
            raise ConfigError(f"{path}: queue {name!r} has no history/counters")
    return state


def daemon_status(args: argparse.Namespace) -> int:
    fcfg = load_factory(args)
    if not fcfg.status_file:
        raise ConfigError(f"{fcfg.source}: [Factory] statusFile is not set")
    state = _read_daemon_status(fcfg.status_file)
    wanted = set(args.queue or state["queues"])
    queues = {k: v for k, v in state["queues"].items() if k in wanted}
    for q in queues.values():
        q["history"] = q["history"][-max(1, args.last) :]
    if args.json:
        print(json.dumps({**state, "queues": queues}, indent=2))
        return EXIT_OK
    try:
        _print_daemon_status(state, queues)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{fcfg.status_file}: unexpected content in the daemon's status ({exc!r}); "
            "was it written by another version?"
        ) from None
    return EXIT_OK


def _print_daemon_status(state: dict[str, Any], queues: dict[str, Any]) -> None:
    print(
        f"factory {state['factory_id']}: {state['cycles']} cycles, status of {_when(state['time'])}"
    )
    if state.get("reload_refused"):
        print(f"  last reload refused, the old queues run on: {state['reload_refused']}")
    for name, why in sorted((state.get("reload_errors") or {}).items()):
        print(f"  queue {name} runs on its old configuration: {why}")
    for src in state["sources"]:
        health = (
            f"failing ({src['failures_in_a_row']} in a row): {src['error']}"
            if src["error"]
            else "ok"
        )
        print(f"  {src['kind']} {src['plugin']} for {', '.join(src['queues'])}: {health}")
    for queue, n in sorted(state.get("unconfigured_queues", {}).items()):
        print(f"  {n} worker(s) of queue {queue}, which is not configured: left alone")
    for name, q in queues.items():
        c = q["counters"]
        print(
            f"[{name}] cycles {c['cycles']}, submitted {c['submitted']}, "
            f"unretired {c['unretired']}, cancelled {c['cancelled']}, "
            f"retired {c['retired']}, reaped {c['reaped']}, "
            f"errors {c['errors']}, fail-closed {c['failclosed']}"
        )
        if q["backoff_reason"] and q["backoff_until"] > state["time"]:
            print(f"  backing off until {_when(q['backoff_until'])}: {q['backoff_reason']}")
        if c.get("skipped"):
            print(f"  {c['skipped']} tick(s) skipped: cycles longer than the queue's interval")
        for t in q["history"]:
            acts = ", ".join(f"{a['kind']} {a['count']}" for a in t["actions"]) or "nothing"
            line = f"  {_when(t['time'])}  n={t['n']:<4} {t['error'] or acts}"
            print(line + ("  | " + "; ".join(t["notes"]) if t["notes"] else ""))
        if q["history"] and isinstance(q["history"][-1].get("why_not"), dict):
            for line in format_why_not(q["history"][-1]["why_not"]):
                print(line)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def cmd_demo(args: argparse.Namespace) -> int:
    from pilotfactory.sim.runner import run_demo

    qpaths = args.queues_conf or [_default_demo_queues()]
    return run_demo(
        queue_paths=qpaths,
        factory_path=args.factory_conf,
        hours=args.hours,
        seed=args.seed,
        workload=args.workload,
        every=args.every,
        as_json=args.json,
    )


def cmd_sim(args: argparse.Namespace) -> int:
    """The what-if report: exit 1 when the configuration evicted jobs or left orphan VMs."""
    from pilotfactory.factory.config import default_factory_config, load_factory_config, load_queues
    from pilotfactory.sim import whatif

    fcfg = load_factory_config(args.factory_conf)[0] if args.factory_conf else None
    base = fcfg or default_factory_config()
    sets: list[tuple[str, list[str]]]
    if args.compare:
        sets = [(os.path.basename(path), [path]) for path in args.compare]
        if sets[0][0] == sets[1][0]:
            sets = [("A", [args.compare[0]]), ("B", [args.compare[1]])]
    elif args.queues_conf:
        sets = [("config", args.queues_conf)]
    elif fcfg is not None:
        sets = [("config", list(fcfg.queue_conf))]
    else:
        sets = [("config", [_default_demo_queues()])]
    configs = []
    for name, paths in sets:
        res = load_queues(paths, base.queue_dir_conf if fcfg else None, base)
        for problem in res.problems:
            print(f"config: {problem}", file=sys.stderr)
        if not res.queues:
            raise ConfigError(f"{', '.join(paths)}: no usable queue to simulate")
        configs.append((name, base, tuple(res.queues)))
    req = whatif.SimRequest(
        configs=tuple(configs),
        workload=args.workload,
        scale=args.scale,
        cores=args.cores,
        seed=args.seed,
        hours=args.hours,
        settings=whatif.WorldSettings(
            boot_time=args.boot_time,
            boot_jitter=args.boot_jitter,
            boot_distribution=args.boot_dist,
            never_join=args.never_join,
            interruption_rate=args.interruptions,
            price=args.price,
            activation_rate=args.activation_rate,
            poweroff_delay=None if args.no_self_shutdown else args.poweroff_delay,
            noclaim_shutdown=args.noclaim_shutdown,
            api_latency=args.api_latency,
        ),
        baselines=not args.no_baselines,
    )
    if args.plot:
        whatif.require_matplotlib()
    progress = whatif.TerminalProgress(enabled=None if not args.json else False)
    try:
        results, header = whatif.run_request(req, progress)
    finally:
        progress.done()
    if args.plot:
        whatif.plot(args.plot, results)
    if args.json:
        print(json.dumps(whatif.report_json(results, header), indent=2))
    else:
        print(whatif.report_table(results, whatif.header_lines(header)))
    bad = [
        r.name
        for r in results[: len(configs)]
        if r.metrics.get("jobs_evicted") or r.metrics.get("orphans")
    ]
    if bad:
        print(f"pilotfactory: {', '.join(bad)} evicted jobs or left orphan VMs", file=sys.stderr)
        return 1
    return 0


def _default_demo_queues() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    shipped = shipped_etc_dir()
    for cand in (
        os.path.join(os.getcwd(), "etc", "queues.conf"),
        os.path.join(os.path.dirname(here), "etc", "queues.conf"),
        *([os.path.join(shipped, "queues.conf")] if shipped else []),
    ):
        if os.path.exists(cand):
            return cand
    raise ConfigError("etc/queues.conf not found: give -q queues.conf")


def shipped_etc_dir() -> str | None:
    """Where an installed wheel put the repository's ``etc/`` (``<prefix>/share/pilotfactory``),
    or None (a source checkout, an editable install). Read from the distribution's list of
    installed files rather than built from ``sys.prefix``, so ``--user`` and ``--prefix``
    installs are found too."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("pilotfactory")
    except PackageNotFoundError:
        return None
    for path in dist.files or ():
        if path.parts[-3:] == ("share", "pilotfactory", "queues.conf"):
            return os.path.dirname(os.path.abspath(str(dist.locate_file(path))))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    for stream in (sys.stdout, sys.stderr):  # a path argv could not decode still prints
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    setup_logging(getattr(args, "verbose", 0), getattr(args, "log_format", "text"))
    handlers = {
        "check": cmd_check,
        "show": cmd_show,
        "run": cmd_run,
        "status": cmd_status,
        "sweep": cmd_sweep,
        "demo": cmd_demo,
        "sim": cmd_sim,
    }
    try:
        code = handlers[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except ConfigError as exc:
        print(f"pilotfactory: {printable(str(exc), 2000)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `pilotfactory status | head`: the reader left. Point stdout at /dev/null so the
        # interpreter's own flush at exit does not complain, and exit as a killed writer would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
