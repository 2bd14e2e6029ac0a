"""A reimage write whose outcome the leader cannot know never reimages a node twice, never
reimages one with pods still on it, and never loses one (issue #21).

Three ways the leader of a batch can be left not knowing whether ARM acted on its write:

* ARM accepted the write (the instances are being reimaged) and answered 500, or 409 as
  a retried write does when its first attempt was accepted;
* ARM accepted the write and never answered (the connection is dropped after a while);
* the runner died between the write-ahead claim and the write: the request is held
  before ARM sees it, the runner process holding it is SIGKILLed, and the write is never
  accepted. Recovery must not believe the reimage happened; for a plain ``reimage`` the
  instance looked "done" (on the latest model, with the expected image) before anything ran.

Each is run for both operations the workflow uses (``manualupgrade`` for nodes behind the
model, ``reimage`` for nodes already on it), on nodes of the alpha pool (its drains have
room for redeliveries after a kill), and once more all together over the whole pool. The
checks read what the sandbox served (its history), not what the app believes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sandbox.stack import Sandbox
from tests.integration.sandbox_helpers import Driver

pytestmark = pytest.mark.integration

POOL = "alpha"
SCALE_SET = f"vmss-{POOL}"
FAULTS = ("accept_then_500", "accept_then_409", "accept_then_timeout", "killed_between_claim_and_write")
# The connection of a write accepted and never answered is closed after this long: less
# than a reimage takes in the session's sandbox (240 cloud seconds at 0.01, 2.4 s), so the
# leader is left not knowing while the operation is still running.
ANSWER_DROPPED_AFTER = 1.0
TERMINAL = ("succeeded", "failed", "skipped", "deferred", "cancelled")


@dataclass
class Killer:
    """Kills the runner holding each held write, as it is held: the moment between the
    leader's claim and its write reaching ARM."""

    sandbox: Sandbox
    wanted: int
    kills: list[int] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        faults = self.sandbox.compute.faults
        while len(self.outcomes) < self.wanted and not self.stop.is_set():
            try:
                held = faults.wait_held(timeout=1.0)
            except TimeoutError:
                continue
            pids = [p.pid for p in self.sandbox.runners]
            pid = held.client_pid(pids)
            if pid is None:
                # Two writes held at once can come from one runner (a leader's write and a
                # peer's, in one process): killed for the first, it leaves the second's
                # client end with no process, and ARM sees it abandoned a moment later.
                if self.kills and held.wait(2.0) == "abandoned":
                    self.outcomes.append("abandoned")
                    continue
                self.problems.append(f"no runner holds the client end of {held.operation} from {held.client}")
                held.release()
                continue
            self.kills.append(self.sandbox.kill_runner(pids.index(pid)))
            self.outcomes.append(held.wait(15.0))

    def __enter__(self) -> Killer:
        self._thread = threading.Thread(target=self.run, name="claim-write-killer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=20)


def vms_by_node(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    assert sandbox.cluster
    return {
        str(vm["properties"]["osProfile"]["computerName"]).lower(): vm
        for vm in sandbox.compute.vms(sandbox.cluster.resource_group, SCALE_SET)
    }


def current_image(sandbox: Sandbox) -> str:
    assert sandbox.cluster
    model = sandbox.compute.scale_set(sandbox.cluster.resource_group, SCALE_SET)
    return str(model["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["id"]).rsplit(
        "/", 1
    )[-1]


def nodes_for(sandbox: Sandbox, driver: Driver, op: str, count: int) -> tuple[list[str], str]:
    """``count`` nodes of the pool that the run will ``op``, and the image they will end on."""
    if op == "manualupgrade":
        return driver.nodes_of(POOL)[:count], driver.new_image(pools=[POOL])
    on_latest = sorted(n for n, vm in vms_by_node(sandbox).items() if vm["properties"]["latestModelApplied"])
    if len(on_latest) < count:
        # Bring enough nodes onto the model first, with a clean run.
        behind = [n for n in driver.nodes_of(POOL) if n not in on_latest][: count - len(on_latest)]
        try:
            run = driver.wait(driver.start(nodes=behind), timeout=180)
        finally:
            driver.reset(*behind)
        assert run["state"] == "succeeded", driver.explain(run)
        on_latest = sorted(on_latest + behind)
    return on_latest[:count], current_image(sandbox)


def arm(sandbox: Sandbox, fault: str, op: str) -> None:
    faults = sandbox.compute.faults
    if fault == "accept_then_500":
        faults.accept_then_fail(op, status=500, code="InternalServerError")
    elif fault == "accept_then_409":
        # What a retried write meets when its first attempt was accepted: our own operation.
        faults.accept_then_fail(op, status=409, code="OperationNotAllowed")
    elif fault == "accept_then_timeout":
        faults.accept_then_drop(op, after=ANSWER_DROPPED_AFTER)
    else:
        faults.hold_next(op, max_hold=90.0)


def timeline(sandbox: Sandbox, since: float) -> str:
    """What ARM did to the instances since ``since``, for a failure message."""
    assert sandbox.world
    kinds = ("reimage_started", "operation_preempted", "reimage_failed", "reimage_completed", "node_booted")
    return "\n".join(
        ["ARM and the nodes:"]
        + [
            f"  {r['at']} {r['kind']} {r.get('computer_name') or r.get('node') or r.get('instance_id')}"
            f" {r.get('operation', '')} {r.get('operation_id', '')}"
            for r in sandbox.world.history.records()
            if r["t"] >= since and r["kind"] in kinds
        ]
    )


def assert_safe(
    sandbox: Sandbox, driver: Driver, run: dict[str, Any], *, since: float, image: str, targets: list[str]
) -> None:
    """No reimage with pods on the node, at most one per node, and no node lost."""
    report = driver.check(run, since=since, image=image)
    assert report.ok, "\n".join([*report.violations, driver.explain(run), timeline(sandbox, since)])
    states = {n["name"]: n for n in run["nodes"]}
    assert sorted(states) == sorted(targets)
    for name, node in states.items():
        assert node["state"] in TERMINAL, driver.explain(run)
        reimages = report.reimages_by_node.get((run["id"], name), 0)
        # Believed reimaged (it went on to booting) means reimaged: the run must not take
        # a write that never reached ARM for one that did.
        believed = [h for h in node["history"] if h["to"] == "booting"]
        assert not believed or reimages >= 1, (
            f"{name} went to booting ({believed[0]['reason']}) but was never reimaged\n"
            f"{driver.explain(run)}\n{timeline(sandbox, since)}"
        )
        if node["state"] == "succeeded":
            # Succeeded means reimaged: for a plain reimage the image alone cannot tell.
            assert reimages == 1, (
                f"{name} succeeded after {reimages} reimages\n"
                f"{driver.explain(run)}\n{timeline(sandbox, since)}"
            )
        else:
            assert node["state"] == "failed" and node["reason"], driver.explain(run)
            assert reimages <= 1
            node_obj = sandbox.kube.get("nodes", None, name)
            assert node_obj and node_obj["spec"].get("unschedulable"), (
                f"{name} failed but is not left cordoned"
            )


@pytest.fixture
def pool_nodes(driver: Driver) -> Iterator[list[str]]:
    """Every node of the pool is put back as it was found: uncordoned, no faults left."""
    nodes = driver.nodes_of(POOL)
    yield nodes
    driver.reset(*nodes)


@pytest.mark.parametrize("op", ["manualupgrade", "reimage"])
@pytest.mark.parametrize("fault", FAULTS)
def test_an_ambiguous_write_neither_reimages_twice_nor_loses_a_node(
    sandbox: Sandbox, driver: Driver, pool_nodes: list[str], fault: str, op: str
) -> None:
    targets, image = nodes_for(sandbox, driver, op, 3)
    disks_before = {
        n: vms_by_node(sandbox)[n]["properties"]["storageProfile"]["osDisk"]["name"] for n in targets
    }
    arm(sandbox, fault, op)
    since = time.time()
    before = len(sandbox.arm_server.request_log)
    with Killer(sandbox, wanted=1 if fault == "killed_between_claim_and_write" else 0) as killer:
        run_id = driver.start(nodes=targets)
        run = driver.wait(run_id, timeout=240)
    writes = [r for r in sandbox.arm_server.request_log[before:] if r["write"] and r["operation"] == op]
    if fault == "killed_between_claim_and_write":
        assert not killer.problems, killer.problems
        assert killer.kills and killer.outcomes == ["abandoned"], (killer.kills, killer.outcomes)
        assert any(r.get("fault") == "held_abandoned" for r in writes)
    else:
        expected = "accept_then_drop" if fault == "accept_then_timeout" else "accept_then_fail"
        assert any(r.get("fault") == expected for r in writes), writes
    assert_safe(sandbox, driver, run, since=since, image=image, targets=targets)
    disks_after = {
        n: vms_by_node(sandbox)[n]["properties"]["storageProfile"]["osDisk"]["name"] for n in targets
    }
    for name in targets:
        if next(n for n in run["nodes"] if n["name"] == name)["state"] == "succeeded":
            assert disks_after[name] != disks_before[name]


def test_a_whole_pool_rollout_through_every_ambiguous_write_keeps_every_invariant(
    sandbox: Sandbox, driver: Driver, pool_nodes: list[str]
) -> None:
    image = driver.new_image(pools=[POOL])
    faults = sandbox.compute.faults
    # Writes meet the faults in this order: two held and their runners killed, then one
    # answered 500 after it was accepted, then one accepted and never answered.
    faults.hold_next("manualupgrade", 2, max_hold=90.0)
    faults.accept_then_fail("manualupgrade", status=500)
    faults.accept_then_drop("manualupgrade", after=ANSWER_DROPPED_AFTER)
    since = time.time()
    before = len(sandbox.arm_server.request_log)
    with Killer(sandbox, wanted=2) as killer:
        run = driver.wait(driver.start(pools=[POOL]), timeout=300)
    assert not killer.problems, killer.problems
    assert killer.outcomes == ["abandoned", "abandoned"], killer.outcomes
    shaped = [
        r.get("fault") for r in sandbox.arm_server.request_log[before:] if r["write"] and r.get("fault")
    ]
    assert sorted(shaped) == ["accept_then_drop", "accept_then_fail", "held_abandoned", "held_abandoned"]
    assert_safe(sandbox, driver, run, since=since, image=image, targets=pool_nodes)
