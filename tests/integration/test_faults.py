"""Faults on the real paths: each ends in its documented outcome with the reason recorded.

Every test works on nodes of one pool and puts them back as it found them, because the
session's sandbox is shared with the rollout tests.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest

from sandbox.kube.objects import HANG_TERMINATING_ANNOTATION
from sandbox.stack import Sandbox
from tests.integration.sandbox_helpers import Driver

pytestmark = pytest.mark.integration


def test_arm_throttling_and_server_errors_are_retried_until_the_node_succeeds(
    sandbox: Sandbox, driver: Driver
) -> None:
    node = driver.nodes_of("beta")[0]
    driver.new_image(pools=["beta"])
    sandbox.compute.faults.fail_next("manualupgrade", 2, status=429, code="TooManyRequests", retry_after=1)
    sandbox.compute.faults.fail_next("get_vm", 2, status=500)
    before = len(sandbox.arm_server.request_log)
    try:
        run = driver.wait(driver.start(nodes=[node]))
    finally:
        driver.reset(node)
    assert run["state"] == "succeeded", driver.explain(run)
    statuses = [r["status"] for r in sandbox.arm_server.request_log[before:]]
    assert statuses.count(429) == 2 and statuses.count(500) == 2


def test_a_failing_reimage_is_retried_once_then_fails_the_node_left_cordoned(
    sandbox: Sandbox, driver: Driver
) -> None:
    first, second = driver.nodes_of("beta")[1:3]
    driver.new_image(pools=["beta"])
    sandbox.compute.faults.fail_lro("manualupgrade", 1)
    try:
        run = driver.wait(driver.start(nodes=[first]))
        assert run["state"] == "succeeded", driver.explain(run)
        reasons = [h["reason"] for h in run["nodes"][0]["history"]]
        assert any("manualupgrade failed (InternalExecutionError" in r for r in reasons), reasons
        sandbox.compute.faults.fail_lro("manualupgrade", 5)
        run = driver.wait(driver.start(nodes=[second]))
        node = run["nodes"][0]
        assert run["state"] == "failed" and node["state"] == "failed"
        assert "failed 2 times" in node["reason"] and "left cordoned" in node["reason"]
        assert sandbox.kube.get("nodes", None, second)["spec"]["unschedulable"] is True
    finally:
        driver.reset(first, second)


def test_a_budget_that_never_allows_eviction_fails_the_node_with_the_blocking_pdb(
    sandbox: Sandbox, driver: Driver
) -> None:
    sandbox.cluster.add_deployment("faults", "stuck", replicas=1, pdb_min_available=1)
    node = sandbox.kube.list("pods", "faults", label_selector="app=stuck")[0]["spec"]["nodeName"]
    try:
        run = driver.wait(driver.start(nodes=[node]))
        info = run["nodes"][0]
        assert info["state"] == "failed", driver.explain(run)
        assert "drain timed out" in info["reason"] and "faults/stuck" in info["reason"]
        assert "PodDisruptionBudget faults/stuck-pdb allows 0 disruptions" in " ".join(
            info["blockers"] + [h["reason"] for h in info["history"]]
        )
        assert sandbox.kube.get("nodes", None, node)["spec"]["unschedulable"] is True
        assert sandbox.kube.list("pods", "faults", label_selector="app=stuck")  # never evicted
    finally:
        sandbox.kube.delete("poddisruptionbudgets.policy", "faults", "stuck-pdb")
        driver.reset(node)


def test_a_pod_that_hangs_in_terminating_fails_the_drain_on_timeout(sandbox: Sandbox, driver: Driver) -> None:
    node = driver.nodes_of("beta")[-1]
    pod = driver.pod_on(node)
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    sandbox.kube.mutate(
        "pods",
        ns,
        name,
        lambda p: p["metadata"].setdefault("annotations", {}).update({HANG_TERMINATING_ANNOTATION: "true"}),
    )
    try:
        run = driver.wait(driver.start(nodes=[node]))
        info = run["nodes"][0]
        assert info["state"] == "failed", driver.explain(run)
        assert "drain timed out" in info["reason"]
        assert sandbox.kube.get("pods", ns, name)["metadata"].get("deletionTimestamp")
    finally:
        sandbox.kube.remove_now("pods", ns, name)
        driver.reset(node)


def test_kubernetes_conflicts_and_server_errors_are_retried(sandbox: Sandbox, driver: Driver) -> None:
    node = driver.nodes_of("alpha")[0]
    driver.new_image(pools=["alpha"])
    sandbox.kube_server.faults.fail_next("PATCH", rf"/api/v1/nodes/{node}$", 1, status=409)
    sandbox.kube_server.faults.fail_next("GET", r"/api/v1/pods$", 2, status=500)
    before = len(sandbox.kube_server.request_log)
    try:
        run = driver.wait(driver.start(nodes=[node]))
    finally:
        driver.reset(node)
    assert run["state"] == "succeeded", driver.explain(run)
    statuses = [r["status"] for r in sandbox.kube_server.request_log[before:]]
    assert statuses.count(409) == 1 and statuses.count(500) == 2


def test_a_lost_in_flight_message_is_recovered_by_the_sweeper(sandbox: Sandbox, driver: Driver) -> None:
    from azure.storage.queue import QueueClient

    node = driver.nodes_of("win")[0]
    queue = QueueClient.from_connection_string(sandbox.azurite.connection_string, "node-work")
    stolen: list[dict] = []
    stop = threading.Event()

    def steal() -> None:
        # Take the first step message for the node off the queue, as if it were lost.
        while not stop.is_set() and not stolen:
            for msg in queue.receive_messages(max_messages=32, visibility_timeout=5):
                body = json.loads(base64.b64decode(msg.content))
                if body.get("kind") == "step" and body.get("node") == node and not stolen:
                    queue.delete_message(msg)
                    stolen.append(body)
                else:
                    queue.update_message(msg, visibility_timeout=0)
            stop.wait(0.01)

    driver.new_image(pools=["win"])
    thread = threading.Thread(target=steal, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        run = driver.wait(driver.start(nodes=[node]), timeout=120)
    finally:
        stop.set()
        thread.join()
        driver.reset(node)
    assert stolen, "the message was never seen"
    assert run["state"] == "succeeded", driver.explain(run)
    assert time.monotonic() - started >= 20  # it waited for stallAfter, then the sweeper resumed it


def test_a_malformed_message_is_dead_lettered_with_the_reason(sandbox: Sandbox) -> None:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    queue = QueueClient.from_connection_string(
        sandbox.azurite.connection_string, "node-work", message_encode_policy=TextBase64EncodePolicy()
    )
    poison = QueueClient.from_connection_string(sandbox.azurite.connection_string, "node-work-poison")
    queue.send_message('{"v": 1, "kind": "reboot-everything", "run": "x"}')
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            peeked = poison.peek_messages(max_messages=32)
        except ResourceNotFoundError:  # created with the first dead letter
            peeked = []
        for msg in peeked:
            text = msg.content
            try:
                envelope = json.loads(text)
            except ValueError:
                envelope = json.loads(base64.b64decode(text))
            if "reboot-everything" in envelope.get("body", ""):
                assert "unknown work item kind" in envelope["reason"]
                return
        time.sleep(0.2)
    raise AssertionError("the malformed message never reached node-work-poison")
