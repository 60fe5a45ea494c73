"""What the EC2 / OpenStack submit and status plugins share: provider settings, user data.

User data: ``user_data_file`` is a template. ``{worker_id}``, ``{factory_id}``, ``{queue}``,
``{collector}`` and ``{condor_config}`` (HTCondor config lines that make the startd and master
advertise the worker id) are substituted; a shell script without ``{worker_id}`` or
``{condor_config}`` gets a snippet appended that writes that config to
``/etc/condor/config.d/99-pilotfactory.conf``, and with no file at all the user data is that
snippet alone. Other formats (``#cloud-config``) must use a placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pilotfactory.factory.contract import KEEP_ATTR, TARGET_PARAMS, classad_string
from pilotfactory.factory.params import Param
from pilotfactory.plugins.cloudaccount import EC2_PARAMS, OPENSTACK_PARAMS

__all__ = ["EC2_PARAMS", "OPENSTACK_PARAMS", "condor_config", "render_user_data", "vm_params"]


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
        Param("user_data_file", str, None, "user data template ({worker_id}, {condor_config})"),
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
_PLACEHOLDER = re.compile(r"\{(worker_id|factory_id|queue|collector|condor_config)\}")


def condor_config(
    worker_id: str,
    factory_id: str,
    queue: str,
    collector: str | None,
    label: str | None = None,
) -> str:
    """Config lines that make the VM's startd and master advertise who it is; with the
    queue's ``wmsqueue`` label, a START that takes only that label's jobs (the demand the VM
    was bought for), so other work in the pool cannot occupy it."""
    attrs = "PilotFactoryWorker PilotFactoryId PilotFactoryQueue"
    lines = [
        f"PilotFactoryWorker = {classad_string(worker_id)}",
        f"PilotFactoryId = {classad_string(factory_id)}",
        f"PilotFactoryQueue = {classad_string(queue)}",
        f"STARTD_ATTRS = $(STARTD_ATTRS) {attrs}",
        # a job asks that its VM not be retired under it (bounded by the queue's keep_max)
        f"STARTD_JOB_ATTRS = $(STARTD_JOB_ATTRS) {KEEP_ATTR}",
        f"MASTER_ATTRS = $(MASTER_ATTRS) {attrs}",
    ]
    if collector:
        lines.append(f"COLLECTOR_HOST = {collector}")
    if label and label != "ANY":
        lines.append(f"START = ($(START)) && (TARGET.MATCH_APF_QUEUE =?= {classad_string(label)})")
    return "\n".join(lines)


def render_user_data(template: str | None, values: Mapping[str, str]) -> str:
    """Substitute the placeholders in one pass (shell ``${x}`` and YAML braces stay as they
    are; a placeholder indented on its own line keeps every line of its value at that
    indentation, for YAML block scalars); a shell script without a join placeholder gets the
    config snippet appended."""
    text = template if template is not None else "#!/bin/sh\n"
    if "{worker_id}" not in text and "{condor_config}" not in text:
        if not text.startswith("#!"):
            raise ValueError(
                "has no {worker_id} or {condor_config} placeholder and is not a shell script, "
                "so the VM could not advertise its PilotFactoryWorker"
            )
        text = text.rstrip("\n") + "\n" + SNIPPET

    def value(m: re.Match[str]) -> str:
        indent = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        out = values[m.group(1)]
        return out.replace("\n", "\n" + indent) if indent.isspace() else out

    return _PLACEHOLDER.sub(value, text)
