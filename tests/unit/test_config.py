"""The configuration file: the documented example, the editors' JSON schema, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from shared.config import json_schema, load_config, parse_config
from shared.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def test_the_documented_example_is_valid() -> None:
    config = load_config(CONFIG_DIR / "patcher.example.yaml")
    assert [c.name for c in config.clusters] == ["prod-weu", "prod-neu"]
    assert config.clusters[1].azure_ad is not None and config.clusters[1].proxy is not None


def test_the_committed_json_schema_is_the_one_the_code_generates() -> None:
    committed = json.loads((CONFIG_DIR / "patcher.schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema())), (
        "regenerate it: python -m shared.config > config/patcher.schema.json"
    )


def test_editors_see_the_example_as_valid_against_the_schema() -> None:
    schema = json.loads((CONFIG_DIR / "patcher.schema.json").read_text())
    example = yaml.safe_load((CONFIG_DIR / "patcher.example.yaml").read_text())
    jsonschema.validate(example, schema)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"maxUnavailable": 0}, "clusters[0].pools[0].maxUnavailable"),
        ({"maxUnavailable": "150%"}, "percentage from 1% to 100%"),
        ({"scaleSetId": "/subscriptions/x/vm"}, "clusters[0].pools[0].scaleSetId"),
        ({"window": "nope"}, "unknown window 'nope'"),
        ({"drain": {"onTimeout": "ignore"}}, "clusters[0].pools[0].drain.onTimeout"),
        ({"bootTimeout": "soon"}, "clusters[0].pools[0].bootTimeout"),
    ],
)
def test_errors_name_the_field_and_the_value(patch: dict, needle: str) -> None:
    data = yaml.safe_load((CONFIG_DIR / "patcher.example.yaml").read_text())
    data["clusters"][0]["pools"][0].update(patch)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert needle in str(err.value)


def test_a_cluster_needs_exactly_one_credential_source() -> None:
    data = yaml.safe_load((CONFIG_DIR / "patcher.example.yaml").read_text())
    data["clusters"][0]["azureAd"] = {"server": "https://x"}
    with pytest.raises(ConfigError, match="exactly one of kubeconfig"):
        parse_config(data)


def test_unreadable_and_malformed_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_lease_margin_as_long_as_the_lease_is_refused() -> None:
    from tests.harness import config_dict

    base = config_dict({"linux": 1})
    base["workflow"]["leaseMargin"] = 30
    assert parse_config(base).workflow.lease_margin.total_seconds() == 30
    base["workflow"]["leaseMargin"] = base["workflow"]["leaseDuration"]
    with pytest.raises(ConfigError, match="leaseMargin must be shorter than leaseDuration"):
        parse_config(base)


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("15m", 900),
        ("720h", 30 * 24 * 3600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("500ms", 0.5),
        (900, 900),
        ("PT15M", 900),
        ("00:15:00", 900),
    ],
)
def test_durations_are_read_as_kubernetes_users_write_them(written: object, seconds: float) -> None:
    data = yaml.safe_load((CONFIG_DIR / "patcher.example.yaml").read_text())
    data["clusters"][0]["pools"][0]["drain"] = {"timeout": written}
    config = parse_config(data)
    assert config.clusters[0].pools[0].drain.timeout.total_seconds() == seconds
    schema = json.loads((CONFIG_DIR / "patcher.schema.json").read_text())
    jsonschema.validate(data, schema)


@pytest.mark.parametrize("written", ["-5m", -3, "15 minutes", "5x", "m15"])
def test_a_negative_or_unreadable_duration_names_the_field(written: object) -> None:
    data = yaml.safe_load((CONFIG_DIR / "patcher.example.yaml").read_text())
    data["clusters"][0]["pools"][0]["drain"] = {"timeout": written}
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.pools\[0\]\.drain\.timeout"):
        parse_config(data)


@pytest.mark.parametrize("group", ["MC_prod_aks_westeurope", "mc_prod_weu"])
def test_an_aks_managed_node_resource_group_is_refused_unless_forced(group: str) -> None:
    data = yaml.safe_load((CONFIG_DIR / "patcher.example.yaml").read_text())
    pool = data["clusters"][0]["pools"][0]
    pool["scaleSetId"] = (
        f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/{group}"
        "/providers/Microsoft.Compute/virtualMachineScaleSets/aks-system-12345678-vmss"
    )
    with pytest.raises(
        ConfigError, match=rf"{group} is an AKS-managed node resource group.*allowAksManaged: true"
    ):
        parse_config(data)
    pool["allowAksManaged"] = True
    assert parse_config(data).clusters[0].pools[0].allow_aks_managed


def test_automation_accounts_of_an_older_configuration_load_and_are_said_to_be_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = yaml.safe_load((CONFIG_DIR / "patcher.example.yaml").read_text())
    data["events"]["automationAccounts"] = [
        "/subscriptions/0/resourceGroups/ops/providers/Microsoft.Automation/automationAccounts/ops"
    ]
    with caplog.at_level("WARNING", logger="shared.config"):
        parse_config(data)
    assert "events.automationAccounts is ignored" in caplog.text
