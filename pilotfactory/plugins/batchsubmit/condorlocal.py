"""CondorLocal: pilots submitted as vanilla jobs to an HTCondor schedd (APF's CondorLocal).

A pilot holds no state worth keeping once the factory wants it gone, so every way of taking
one away is ``condor_rm``: cancel, reap, and retire in any mode.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pilotfactory.factory.info import RetireMode, Worker, WorkerKind
from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import SubmitError
from pilotfactory.plugins.batchsubmit.condor_common import COMMON_SUBMIT_PARAMS, CondorSubmitBase
from pilotfactory.secretfiles import SecretFileError, check_private

log = logging.getLogger(__name__)


class CondorLocalSubmit(CondorSubmitBase):
    """Pilot jobs in the vanilla universe, labelled so the factory finds them again."""

    NAME = "CondorLocal"
    WORKERS = WorkerKind.PILOT
    PARAMS = (
        *COMMON_SUBMIT_PARAMS,
        Param("executable", str, None, "pilot wrapper (overrides the queue's executable)"),
        Param("executable.arguments", str, None, "its arguments"),
        Param(
            "proxy", str, None, "x509 proxy: a path, or a name resolved in proxy_dir", secret=True
        ),
        Param("proxy_dir", str, "/tmp", "where named proxies live (x509up_<name>)"),
    )

    def executable(self) -> tuple[str | None, str | None]:
        """The plugin's own keys win over the queue's generic ``executable`` keys."""
        exe = self.params.get("executable") or self.queue.generic.get("executable")
        args = self.params.get("executable.arguments")
        if args is None:
            args = self.queue.generic.get("executable.arguments")
        return exe or None, args or None

    @classmethod
    def secret_files(cls, params: Mapping[str, Any]) -> dict[str, str]:
        path = cls._proxy_location(params)
        return {"proxy": path} if path else {}

    @staticmethod
    def _proxy_location(params: Mapping[str, Any]) -> str | None:
        proxy = str(params.get("proxy") or "")
        if not proxy:
            return None
        if os.sep in proxy:
            return proxy
        return os.path.join(params.get("proxy_dir") or "/tmp", f"x509up_{proxy}")

    def proxy_path(self) -> str | None:
        """Resolve ``proxy`` (path or name); a missing proxy, or one others can read (it holds
        a private key), is a SubmitError."""
        path = self._proxy_location(self.params)
        if path is None or self.previewing:  # show: the path is what is sent
            return path
        try:
            check_private(path, "x509 proxy")
        except SecretFileError as exc:
            raise SubmitError(f"queue {self.queue.queue}: {exc}") from None
        return path

    def template(self) -> dict[str, str]:
        exe, args = self.executable()
        if not exe:
            raise SubmitError(
                f"queue {self.queue.queue}: no executable (set executable or "
                "batchsubmit.condorlocal.executable)"
            )
        desc = {
            "universe": "vanilla",
            "executable": exe,
            "should_transfer_files": "IF_NEEDED",
            "+TransferOutput": '""',
        }
        if args:
            desc["arguments"] = args
        proxy = self.proxy_path()
        if proxy:
            desc["x509userproxy"] = proxy
        return desc

    def retire(self, workers: Sequence[Worker], mode: RetireMode) -> None:
        """Pilots cannot be retired peacefully from outside: every mode removes the job."""
        if mode is not RetireMode.KILL and workers:
            log.warning(
                "[%s] retire mode %r is not meaningful for pilots: removing %d job(s)",
                self.queue.queue,
                mode,
                len(workers),
            )
        self.remove(workers, f"retire ({mode})")

    def unretire(self, workers: Sequence[Worker]) -> None:
        """Nothing to undo: a retired pilot is gone."""
