"""The EC2 pre-flight probe against a real moto EC2 server on loopback (no HTCondor needed):
credentials, ``max-instances`` and the account's live instances, and a refused key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import settings as moto_settings
from moto.core.authorization import ActionAuthenticatorMixin

from pilotfactory.backends.world import RealWorld
from pilotfactory.factory.probe import Finding, Need, Probe, Result
from pilotfactory.plugins.batchstatus.cloud import EC2BatchStatus
from tests.integration.test_cloud_ec2 import SECRET, key_files


def probe(moto_url: str, tmp_path: Path) -> Probe:
    params = {
        "endpoint_url": moto_url,
        "region": "eu-west-1",
        "retries": "0",
        "timeout": "10",
        **key_files(tmp_path),
    }
    cloud, collector = EC2BatchStatus.preflight(params, RealWorld())
    assert collector.key == ("collector", None)
    return cloud


def test_headroom_counts_every_live_instance_of_the_account(moto_url: str, tmp_path: Path) -> None:
    # Someone else's instances (untagged) count against the account's limit too.
    ec2 = boto3.client(
        "ec2",
        endpoint_url=moto_url,
        region_name="eu-west-1",
        aws_access_key_id="AKIDOTHER",
        aws_secret_access_key="other",  # moto accepts any key
    )
    ec2.run_instances(ImageId="ami-12c6146b", InstanceType="t3.micro", MinCount=3, MaxCount=3)
    p = probe(moto_url, tmp_path)
    assert p.endpoint == f"EC2 {moto_url} region eu-west-1"
    assert p.check(Need(("q1",), 5)) == [
        Finding(Result.OK, "credentials accepted"),
        Finding(Result.OK, "instances: 3 of 20 used, 17 free; the queues' maximum 5 fits"),
    ]
    findings = p.check(Need(("q1", "q2"), 30))
    assert findings[1].result is Result.WARN
    assert "the queues' maximum 30 exceeds it: launches past 17" in findings[1].what


@pytest.fixture
def moto_auth() -> Iterator[None]:
    """moto checks signatures and keys from now on (the in-process server shares the setting)."""
    before = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        yield
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = before


def test_an_unknown_key_fails_naming_the_settings(
    moto_url: str, tmp_path: Path, moto_auth: None
) -> None:
    [finding] = probe(moto_url, tmp_path).check(Need(("q1",), 5))
    assert finding.result is Result.FAIL
    assert finding.what.startswith(
        "credentials refused (batchstatus.ec2.access_key_id / batchstatus.ec2.secret_access_key): "
        f"EC2 {moto_url} DescribeAccountAttributes: "
    )
    assert SECRET not in finding.what
