"""The real world: ports to real services (``pilotfactory.factory.ports.World``).

Production uses ``RealWorld`` (htcondor2 / condor CLI, boto3, novaclient, requests); the demo
and the simulation tests use ``pilotfactory.sim.world.SimWorld``. Plugins never import a
backend library themselves, so the same queue runs against either.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from pilotfactory.factory.ports import (
    CloudAccount,
    CloudPort,
    CondorPort,
    CondorTarget,
    Ec2Account,
    PandaPort,
    SiteStatusPort,
)


class RealWorld:
    """Ports to real services; backend libraries are imported only when first needed.

    ``stopping``, once set (the CLI sets it on SIGTERM / SIGINT), cancels every HTTP request in
    flight or to come within a fraction of a second (``backends.http.bounded_get``), so a
    stopping factory is not held up by a slow server for up to a request's ``timeout``.
    """

    blocking_io = True
    """A server may stall a call: the factory reads its status sources on lane threads."""

    def __init__(self, condor_backend: str = "bindings") -> None:
        self.condor_backend = condor_backend
        self._condor: dict[CondorTarget, CondorPort] = {}
        self.stopping = threading.Event()

    def condor(self, target: CondorTarget) -> CondorPort:
        port = self._condor.get(target)
        if port is None:
            if self.condor_backend == "cli":
                from pilotfactory.backends.condor.cli import CliCondor

                port = CliCondor(target)
            else:
                from pilotfactory.backends.condor.bindings import BindingsCondor

                port = BindingsCondor(target)
            self._condor[target] = port
        return port

    def cloud(self, account: CloudAccount) -> CloudPort:
        if isinstance(account, Ec2Account):
            from pilotfactory.backends.cloud.ec2 import Ec2Cloud

            return Ec2Cloud.from_settings(account)
        from pilotfactory.backends.cloud.openstack import OpenStackCloud

        return OpenStackCloud.from_settings(account)

    def panda(self, settings: Mapping[str, Any]) -> PandaPort:
        from pilotfactory.backends.panda import PandaClient

        return PandaClient.from_settings(settings, cancel=self.stopping)

    def site_status(self, settings: Mapping[str, Any]) -> SiteStatusPort:
        from pilotfactory.backends.panda import SiteStatusSource

        return SiteStatusSource.from_settings(settings, cancel=self.stopping)
