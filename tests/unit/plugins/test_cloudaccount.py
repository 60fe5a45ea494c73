"""The typed cloud account: defaults come from the plugins' parameter table, once."""

from __future__ import annotations

import dataclasses

import pytest

from pilotfactory.factory.params import ParamValueError
from pilotfactory.factory.ports import Ec2Account, OpenStackAccount
from pilotfactory.plugins.cloudaccount import PROVIDER_PARAMS, account_of


@pytest.mark.parametrize("provider", sorted(PROVIDER_PARAMS))
def test_fields_are_the_parameter_table(provider: str) -> None:
    account = account_of(provider, {})
    names = [f.name for f in dataclasses.fields(account)]
    assert sorted(names) == sorted(p.name for p in PROVIDER_PARAMS[provider])
    for f in dataclasses.fields(account):
        assert f.default is dataclasses.MISSING, f"{f.name} restates a default"


def test_defaults_blank_text_and_raw_values() -> None:
    account = account_of("ec2", {"region": "  ", "timeout": "7.5", "retries": 2})
    assert account == Ec2Account(
        endpoint_url=None,
        region=None,
        access_key_id=None,
        secret_access_key=None,
        timeout=7.5,
        retries=2,
        api_rate=10.0,
        api_burst=10,
    )
    assert account_of("ec2", {}).timeout == 30.0
    os_account = account_of("openstack", {"auth_url": " http://k:5000 "})
    assert isinstance(os_account, OpenStackAccount) and os_account.auth_url == "http://k:5000"


def test_bad_raw_value_names_the_setting() -> None:
    with pytest.raises(ParamValueError, match="timeout"):
        account_of("ec2", {"timeout": "soon"})
