"""What the EC2 / OpenStack submit and status plugins share: provider settings, user data.

User data: ``user_data_file`` is a template (``etc/worker/`` ships two). The placeholders of
``PLACEHOLDERS`` are substituted from a ``VMContract`` (``{condor_config}``: HTCondor config
lines that make the startd and master advertise the worker id and its life's bounds); a shell
script without ``{worker_id}`` or
``{condor_config}`` gets a snippet appended that writes that config to
``/etc/condor/config.d/99-pilotfactory.conf``, and with no file at all the user data is that
snippet alone. Other formats (``#cloud-config``) must use a placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from pilotfactory.factory.contract import (
    DEADLINE_ATTR,
    KEEP_ATTR,
    LEASE_ATTR,
    TARGET_PARAMS,
    classad_string,
    inert,
)
from pilotfactory.factory.params import Param
from pilotfactory.plugins.batchsubmit.vmlife import VMContract, find_tokens, token_claims
from pilotfactory.plugins.cloudaccount import EC2_PARAMS, OPENSTACK_PARAMS

__all__ = [
    "EC2_PARAMS",
    "OPENSTACK_PARAMS",
    "PLACEHOLDERS",
    "VMContract",
    "condor_config",
    "render_user_data",
    "vm_params",
]


def vm_params(flavor_aliases: tuple[str, ...] = ()) -> tuple[Param, ...]:
    return (
        *TARGET_PARAMS,
        Param("image", str, None, "image id (or name, OpenStack)", required=True),
        Param(
            "flavor",
            str,
            None,
            "flavour / instance type, or a comma list tried in order",
            flavor_aliases,
            required=True,
        ),
        Param("key_name", str, None, "ssh key pair injected into the VMs"),
        Param("security_groups", list, None, "security group names (EC2: or sg- ids)"),
        Param("user_data_file", str, None, "user data template (etc/worker/; {worker_id}, ...)"),
        Param("launch_options", dict, {}, "provider extras: availability_zone, subnet_id, ..."),
    )


# ---------------------------------------------------------------------------- user data

CONDOR_CONFIG_PATH = "/etc/condor/config.d/99-pilotfactory.conf"
SNIPPET = f"""
# pilotfactory: the startd joins as worker {{worker_id}} (queue {{queue}})
mkdir -p /etc/condor/config.d
cat > {CONDOR_CONFIG_PATH} <<'PILOTFACTORY_EOF'
{{condor_config}}
PILOTFACTORY_EOF
systemctl try-restart condor >/dev/null 2>&1 || true
"""

PLACEHOLDERS: dict[str, str] = {
    "worker_id": "the worker id the VM advertises as PilotFactoryWorker (empty for CondorEC2)",
    "factory_id": "the factory's id (PilotFactoryId)",
    "queue": "the factory queue's name (PilotFactoryQueue)",
    "collector": "the pool's collector host[:port] (empty: the image's own COLLECTOR_HOST)",
    "condor_config": "HTCondor config lines: who the VM is, its START policy (multi-line)",
    "lease_until": "epoch seconds the VM's lease ends at launch (0: no lease)",
    "lease_grace": "seconds after the lease before the VM powers off hard",
    "deadline": "epoch seconds the VM's life ends (0: no max_lifetime)",
    "token": "an IDTOKEN minted for this worker (one line), or empty",
    "metadata_url": "the instance metadata base URL",
}
"""Every placeholder a user-data template may use; ``{{name}}`` writes ``{name}`` literally."""

_NAMES = "|".join(PLACEHOLDERS)
_PLACEHOLDER = re.compile(rf"\{{\{{({_NAMES})\}}\}}|\{{({_NAMES})\}}")
# A value rendered into a script or YAML must not be able to end its quoting: ids, hosts,
# URLs and JWTs all fit in these characters.
_SAFE = re.compile(r"^[A-Za-z0-9_.:@/+=,~?&%-]*$")
# The START clauses of the contract: the deadline (a job that states its expected runtime, or
# MaxWallTimeMins, must end before it) and a provider's interruption notice.
DEADLINE_START = (
    "(MY.PilotFactoryDeadline =?= 0 || time() + ifThenElse("
    "isUndefined(TARGET.PilotFactoryExpectedRuntime), "
    "ifThenElse(isUndefined(TARGET.MaxWallTimeMins), 0, TARGET.MaxWallTimeMins * 60), "
    "TARGET.PilotFactoryExpectedRuntime) < MY.PilotFactoryDeadline)"
)
NOTICE_START = "(MY.PilotFactoryInterruption =?= undefined)"


def condor_config(contract: VMContract) -> str:
    """Config lines that make the VM's startd and master advertise who it is and the bounds
    of its life; with the queue's ``wmsqueue`` label, a START that takes only that label's
    jobs (the demand the VM was bought for), so other work in the pool cannot occupy it; a
    START that refuses a job that cannot end before the deadline, and any job once the
    provider announced an interruption."""
    c = contract
    # No worker id (CondorEC2: unknown before the grid job exists): the VM claims none.
    attrs = "PilotFactoryWorker " * bool(c.worker_id) + "PilotFactoryId PilotFactoryQueue"
    life = f"{LEASE_ATTR} {DEADLINE_ATTR}"
    lines = [f"PilotFactoryWorker = {classad_string(c.worker_id)}"] * bool(c.worker_id) + [
        f"PilotFactoryId = {classad_string(c.factory_id)}",
        f"PilotFactoryQueue = {classad_string(c.queue)}",
        f"{LEASE_ATTR} = {int(c.lease_until)}",
        f"{DEADLINE_ATTR} = {int(c.deadline)}",
        f"STARTD_ATTRS = $(STARTD_ATTRS) {attrs} {life}",
        # a job asks that its VM not be retired under it (bounded by the queue's keep_max)
        f"STARTD_JOB_ATTRS = $(STARTD_JOB_ATTRS) {KEEP_ATTR}",
        f"MASTER_ATTRS = $(MASTER_ATTRS) {attrs} {life}",
    ]
    if c.collector:
        lines.append(f"COLLECTOR_HOST = {inert(c.collector, 'collector')}")
    if c.label and c.label != "ANY":
        lines.append(
            f"START = ($(START)) && (TARGET.MATCH_APF_QUEUE =?= {classad_string(c.label)})"
        )
    if c.deadline:
        lines.append(f"START = ($(START)) && {DEADLINE_START}")
    lines.append(f"START = ($(START)) && {NOTICE_START}")
    return "\n".join(lines)


def placeholders(template: str) -> set[str]:
    """The placeholders a template uses (escaped ``{{name}}`` ones not counted)."""
    return {m.group(2) for m in _PLACEHOLDER.finditer(template) if m.group(2)}


def contract_values(contract: VMContract, check: Collection[str] = ()) -> dict[str, str]:
    """The text of each placeholder; a value of one named in ``check`` that could end its
    quoting in a script or YAML document is refused (ValueError naming the placeholder)."""
    c = contract
    values = {
        "worker_id": c.worker_id,
        "factory_id": c.factory_id,
        "queue": c.queue,
        "collector": c.collector or "",
        "lease_until": str(int(c.lease_until)),
        "lease_grace": str(int(c.lease_grace)),
        "deadline": str(int(c.deadline)),
        "token": c.token.strip(),
        "metadata_url": c.metadata_url.rstrip("/"),
    }
    for name in check:
        if name in values and not _SAFE.match(value := values[name]):
            raise ValueError(f"placeholder {{{name}}}: unsafe characters in {value[:60]!r}")
    values["condor_config"] = condor_config(c)
    return values


def render_user_data(template: str | None, contract: VMContract, *, check: bool = True) -> str:
    """Substitute the placeholders in one pass (shell ``${x}`` and YAML braces stay as they
    are; a placeholder indented on its own line keeps every line of its value at that
    indentation, for YAML block scalars); a shell script without a join placeholder gets the
    config snippet appended. No template: that snippet alone (today's behaviour)."""
    text = template if template is not None else "#!/bin/sh\n"
    if not placeholders(text) & {"worker_id", "condor_config"}:
        if not text.startswith("#!"):
            raise ValueError(
                "has no {worker_id} or {condor_config} placeholder and is not a shell script, "
                "so the VM could not advertise its PilotFactoryWorker"
            )
        text = text.rstrip("\n") + "\n" + SNIPPET
    # Only what the template uses is judged (a collector's "?sock=" is fine where unused).
    values = contract_values(contract, placeholders(text) if check else ())

    def value(m: re.Match[str]) -> str:
        if m.group(1):
            return "{" + m.group(1) + "}"
        indent = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        out = values[m.group(2)]
        return out.replace("\n", "\n" + indent) if indent.isspace() else out

    return _PLACEHOLDER.sub(value, text)


# ---------------------------------------------------------------------------- check

_POOL_SECRET = re.compile(
    r"passwords\.d|SEC_PASSWORD_FILE\s*=|condor_store_cred\b|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)


def template_warnings(text: str) -> list[str]:
    """Long-lived secrets a user-data template embeds (``check`` warns): anything that reads
    the instance's user data (every process on a VM without the metadata block, the cloud
    console, a snapshot) would hold them for good. The worker's own ``{token}`` is minted,
    scoped and expiring, so it is not one of them."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if m := _POOL_SECRET.search(line):
            out.append(
                f"line {n} embeds a pool password or signing key ({m.group(0).strip()}): "
                "use token_signing_key, so each VM gets a scoped token that expires"
            )
    for token in find_tokens(text):
        claims = token_claims(token) or {}
        if "exp" not in claims:
            who = str(claims.get("sub", "?"))[:60]
            out.append(
                f"embeds a token for {who} without an expiry: whoever reads the user data "
                "joins the pool for good; use token_signing_key (minted per worker, expiring)"
            )
    return out
