"""Control-plane nodes are patched only where their pool says so, and one at a time."""

from __future__ import annotations

import pytest

from shared.config import parse_config
from shared.errors import ConfigError, ValidationError
from shared.rollout.planner import plan_run
from tests.fakes import make_node
from tests.harness import config_dict


def _cluster(**pool: object):  # type: ignore[no-untyped-def]
    return parse_config(config_dict({"cp": 1}, pool_cp=pool)).clusters[0]


def _nodes(label: str = "node-role.kubernetes.io/control-plane"):  # type: ignore[no-untyped-def]
    from shared.adapters.kube import Node

    return [
        Node(make_node("cp-0", "vmss-cp", "0", labels={label: ""})),
        Node(make_node("cp-1", "vmss-cp", "1")),
    ]


@pytest.mark.parametrize("label", ["node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"])
def test_a_control_plane_node_of_a_pool_that_did_not_opt_in_is_left_out_with_the_reason(label: str) -> None:
    run, work = plan_run(_cluster(), _nodes(label), reason="x", now=0.0)
    assert [w.name for w in work] == ["cp-1"]
    assert list(run.left_out) == ["cp-0"] and "controlPlane: true" in run.left_out["cp-0"]


def test_naming_a_control_plane_node_of_such_a_pool_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"cp-0.*controlPlane: true"):
        plan_run(_cluster(), _nodes(), reason="x", now=0.0, only_nodes=["cp-0"])


def test_a_pool_that_opts_in_patches_its_control_plane_nodes() -> None:
    run, work = plan_run(_cluster(controlPlane=True), _nodes(), reason="x", now=0.0)
    assert sorted(w.name for w in work) == ["cp-0", "cp-1"]
    assert run.left_out == {} and run.pools["cp"].max_unavailable == 1


def test_a_control_plane_pool_with_a_budget_above_one_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="one node at a time"):
        parse_config(config_dict({"cp": 2}, pool_cp={"controlPlane": True}))
