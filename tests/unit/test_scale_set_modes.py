"""Scale sets the way Azure builds them today: Flexible orchestration (instances are VMs
of their own, named in providerIDs as plain VMs) and upgrade policies under which a model
write makes Azure replace the instances itself."""

from __future__ import annotations

from typing import Any

import pytest

from shared.adapters.compute import InstanceRef, parse_provider_id
from shared.adapters.workqueue import WorkItem
from shared.rollout.model import NodeState
from shared.rollout.planner import map_nodes_to_pools
from shared.triggers.events import CaseInsensitive, EventEnvelope
from shared.triggers.intake import Intake
from tests.fakes import RG, SUB, scale_set_id
from tests.harness import Harness, admitted_steps

DEF = f"/subscriptions/{SUB}/resourceGroups/rg-img/providers/Microsoft.Compute/galleries/g/images/ubuntu"
VERSION = f"{DEF}/versions/2026.12.01"


def image_event(version_id: str) -> EventEnvelope:
    data = {
        "operationName": "Microsoft.Compute/galleries/images/versions/write",
        "resourceUri": version_id,
        "status": "Succeeded",
    }
    return EventEnvelope(
        id="img-1",
        type="Microsoft.Resources.ResourceWriteSuccess",
        source="",
        subject="",
        data=CaseInsensitive(data),
    )


def harness() -> Harness:
    h = Harness(
        {"linux": 1, "win": 1},
        nodes_per_pool=2,
        extra_config={
            "events": {"galleryImages": [{"imageDefinitionId": DEF, "pools": ["test/linux", "test/win"]}]}
        },
    )
    h.compute.image_versions[VERSION.lower()] = {"state": "Succeeded", "tags": {}}
    return h


@pytest.mark.parametrize("mode", ["Rolling", "Automatic"])
def test_an_image_for_pools_whose_scale_sets_upgrade_themselves_is_refused_before_any_write(
    mode: str,
) -> None:
    h = harness()
    for pool in ("linux", "win"):
        h.compute.upgrade_policies[scale_set_id(f"vmss-{pool}").lower()] = mode
    outcome = Intake(h.deps).handle_event(image_event(VERSION))
    assert outcome.action == "refused", outcome.detail
    assert f"scale set vmss-linux has upgradePolicy {mode}" in outcome.detail
    assert "without cordon or drain" in outcome.detail
    assert h.compute.model_writes == []
    assert h.store.list_runs() == []


def test_only_the_pool_on_a_rolling_scale_set_is_refused_the_others_roll() -> None:
    h = harness()
    h.compute.upgrade_policies[scale_set_id("vmss-linux").lower()] = "Rolling"
    outcome = Intake(h.deps).handle_event(image_event(VERSION))
    assert outcome.action == "started", outcome.detail
    assert "test/linux: refused, scale set vmss-linux has upgradePolicy Rolling" in outcome.detail
    assert h.compute.model_writes == [scale_set_id("vmss-win").lower()]
    assert set(h.node_states(outcome.runs[0])) == {"win-0", "win-1"}
    reason = h.store.get_run(outcome.runs[0]).reason
    assert reason.startswith("new node image 2026.12.01; pool linux refused: scale set vmss-linux has")


def test_a_model_write_itself_refuses_a_self_upgrading_scale_set() -> None:
    """The guard sits in the one call that writes a model, not only in its caller."""
    from shared.adapters.compute import UnguardedUpgradeError

    h = harness()
    h.compute.upgrade_policies[scale_set_id("vmss-linux").lower()] = "Automatic"
    with pytest.raises(UnguardedUpgradeError, match="upgradePolicy Automatic"):
        h.compute.set_model_image(scale_set_id("vmss-linux"), VERSION)
    assert h.compute.model_writes == []


FLEX_VM = (
    f"azure:///subscriptions/{SUB}/resourceGroups/{RG.lower()}/providers/Microsoft.Compute/virtualMachines"
)


def test_a_flexible_instance_s_provider_id_names_a_vm_of_the_pool_s_scale_set() -> None:
    ref = parse_provider_id(f"{FLEX_VM}/vmss-linux_0a1b2c3d")
    assert ref == InstanceRef(SUB, RG.lower(), "", "vmss-linux_0a1b2c3d", flexible=True)
    assert ref.same_scale_set(scale_set_id("vmss-linux"))
    assert ref.same_scale_set(scale_set_id("VMSS-Linux"))
    assert not ref.same_scale_set(scale_set_id("vmss-win"))
    assert not ref.same_scale_set(scale_set_id("vmss"))  # a prefix of the name is not the set
    other_group = scale_set_id("vmss-linux").replace(RG, "rg-other")
    assert not ref.same_scale_set(other_group)
    assert ref.vm_id == f"{FLEX_VM}/vmss-linux_0a1b2c3d".removeprefix("azure://").lower()
    uniform = parse_provider_id(f"azure://{scale_set_id('vmss-linux')}/virtualMachines/3")
    assert uniform is not None and not uniform.flexible


def flexible(h: Harness, pool: str) -> list[str]:
    """Make the pool's instances Flexible ones: VM names, VM-shaped providerIDs; each on the
    model already, so that the run reimages them (the operation Flexible has no batch for)."""
    names = []
    ids = h.compute.scale_sets[scale_set_id(f"vmss-{pool}").lower()]
    for index, old in enumerate(list(ids)):
        vm_name = f"vmss-{pool}_{index:08x}"
        node = h.instance_to_node.pop(old)
        h.instance_to_node[vm_name] = node
        ids[index] = vm_name
        h.kube.nodes[node]["spec"]["providerID"] = f"{FLEX_VM}/{vm_name}"
        h.compute.instance(vm_name).update(latest=True, image=h.compute.model_image)
        names.append(vm_name)
    return names


def test_a_run_on_a_flexible_pool_reimages_each_vm_with_a_write_of_its_own() -> None:
    h = Harness({"linux": 3}, nodes_per_pool=3)
    vms = flexible(h, "linux")
    planned = map_nodes_to_pools(h.config.clusters[0], h.kube.list_nodes())
    assert {(p.instance_id, p.flexible) for p in planned["linux"]} == {(vm, True) for vm in vms}
    run_id = h.start()
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    writes: list[Any] = [c for c in h.compute.calls if c.startswith(("reimage", "manualupgrade"))]
    assert sorted(writes) == sorted(f"reimage ['{vm}']" for vm in vms)
    assert all(h.store.get_node(run_id, n).flexible for n in h.node_states(run_id))


@pytest.mark.parametrize("orchestration", ["Uniform", "Flexible"])
def test_drained_nodes_share_a_write_on_a_uniform_scale_set_and_not_on_a_flexible_one(
    orchestration: str,
) -> None:
    h = Harness({"linux": 2}, nodes_per_pool=2)
    instances = flexible(h, "linux") if orchestration == "Flexible" else ["linux0", "linux1"]
    run_id = h.start()
    steps = admitted_steps(h)
    for item in steps:  # both drained at once, each waiting for its write
        node = h.store.get_node(run_id, item.node)
        node.state, node.reimage_op, node.seq = NodeState.REIMAGING, "reimage", node.seq + 1
        node.cordoned_by_us = True
        h.store.commit(node)
        h.kube.cordon(node.name, run_id=run_id, state="reimaging")
    first = h.store.get_node(run_id, steps[0].node)
    h.workflow.handle(WorkItem("step", run_id, first.name, first.seq))
    writes = [c for c in h.compute.calls if c.startswith("reimage")]
    if orchestration == "Uniform":
        assert writes == [f"reimage {instances}"]
    else:
        assert writes == [f"reimage ['{instances[0]}']"]


def test_the_sandbox_pools_option_takes_a_flexible_mode_and_refuses_others() -> None:
    from sandbox.cluster import PoolSpec

    flex, uniform = PoolSpec.parse_list("a:linux:2:flex,b:windows:1")
    assert (flex.orchestration, uniform.orchestration) == ("Flexible", "Uniform")
    with pytest.raises(ValueError, match="NAME:OS:COUNT:flex"):
        PoolSpec.parse_list("a:linux:2:flexible")
