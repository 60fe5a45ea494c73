"""``create_token`` of the condor backends: the argv and environment of condor_token_create
(a stand-in script on PATH records them), the key file's checks, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pilotfactory.backends.condor.bindings import BindingsCondor
from pilotfactory.backends.condor.cli import CliCondor
from pilotfactory.factory.ports import CondorRejected, CondorTarget
from pilotfactory.plugins.batchsubmit.vmlife import WORKER_AUTHZ, token_claims, unsigned_token

TOKEN = unsigned_token({"sub": "condor@pool.test", "exp": 2_000_000_000})


@pytest.fixture
def tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A condor_token_create that records its argv and password directory, prints a token."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "record.json"
    script = bindir / "condor_token_create"
    script.write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'dir': os.environ.get("
        f"'_CONDOR_SEC_PASSWORD_DIRECTORY')}}, open({str(record)!r}, 'w'))\n"
        f"print({TOKEN!r})\n"
    )
    script.chmod(0o755)
    cfg = bindir / "condor_config_val"
    cfg.write_text("#!/bin/sh\necho pool.test\n")
    cfg.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.delenv("PILOTFACTORY_CONDOR_ADMIN_TOKEN_DIR", raising=False)
    return record


@pytest.mark.parametrize("backend", [CliCondor, BindingsCondor])
def test_create_token_argv_and_key(tool: Path, tmp_path: Path, backend: type) -> None:
    key = tmp_path / "keys" / "POOL"
    key.parent.mkdir()
    key.write_text("secret")
    key.chmod(0o600)
    port = backend(CondorTarget())
    token = port.create_token("condor@pool.test", WORKER_AUTHZ, 4200, str(key))
    assert token == TOKEN and token_claims(token) == {
        "sub": "condor@pool.test",
        "exp": 2_000_000_000,
    }
    seen = json.loads(tool.read_text())
    assert seen["argv"] == [
        "-identity", "condor@pool.test", "-lifetime", "4200",
        "-authz", "ADVERTISE_STARTD", "-authz", "ADVERTISE_MASTER", "-authz", "READ",
        "-key", "POOL",
    ]  # fmt: skip
    assert seen["dir"] == str(key.parent)
    # no identity: condor@<UID_DOMAIN>; no key: the pool's default
    port.create_token(None, ["READ"], 60)
    seen = json.loads(tool.read_text())
    assert seen["argv"][:2] == ["-identity", "condor@pool.test"] and "-key" not in seen["argv"]


def test_create_token_refusals(tool: Path, tmp_path: Path) -> None:
    port = CliCondor(CondorTarget())
    key = tmp_path / "POOL"
    key.write_text("secret")
    key.chmod(0o644)
    with pytest.raises(CondorRejected, match="accessible by group or others"):
        port.create_token("condor@pool.test", WORKER_AUTHZ, 60, str(key))
    with pytest.raises(CondorRejected, match="not user@domain"):
        port.create_token("condor pool; rm", WORKER_AUTHZ, 60)
    with pytest.raises(CondorRejected, match="tokens expire"):
        port.create_token("condor@pool.test", WORKER_AUTHZ, 0)
    with pytest.raises(CondorRejected, match="not an HTCondor level"):
        port.create_token("condor@pool.test", ["READ -key x"], 60)
    assert not tool.exists(), "nothing ran"
