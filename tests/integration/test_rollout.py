"""Whole rollouts through the app's real paths: POST /api/runs on a runner, the queue
trigger in 4 runner processes, Azurite, the simulated ARM and Kubernetes API servers.
Invariants are checked on what the sandbox served (its history), not on what the app
believes it did."""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from sandbox.stack import Sandbox
from tests.integration.sandbox_helpers import Driver

pytestmark = pytest.mark.integration


def test_a_30_node_rollout_over_3_pools_keeps_every_invariant(sandbox: Sandbox, driver: Driver) -> None:
    image = driver.new_image()
    since = time.time()
    arm_before, kube_before = len(sandbox.arm_server.request_log), len(sandbox.kube_server.request_log)
    run_id = driver.start()
    run = driver.wait(run_id, timeout=240)
    assert run["state"] == "succeeded", driver.explain(run)
    assert len(run["nodes"]) == 30
    assert {n["state"] for n in run["nodes"]} == {"succeeded"}
    assert {p: v["maxUnavailable"] for p, v in run["pools"].items()} == {"alpha": 2, "beta": 2, "win": 2}
    report = driver.check(run, since=since, image=image)
    assert report.ok, report.violations
    assert report.reimages == 30
    assert max(report.max_disrupted.values()) == 2  # the budget was used, and never exceeded
    # API economy, from the servers' own request logs.
    arm = sandbox.arm_server.request_log[arm_before:]
    kube = sandbox.kube_server.request_log[kube_before:]
    arm_writes = [r for r in arm if r["write"]]
    assert len(arm_writes) <= 30  # at most one upgrade per node (nodes ready together share one)
    assert not [r for r in arm if r["status"] == 429]
    assert (len(arm) - len(arm_writes)) / 30 <= 10
    cluster_wide_pod_lists = [
        r
        for r in kube
        if r["method"] == "GET" and r["path"] == "/api/v1/pods" and "spec.nodeName" not in str(r["query"])
    ]
    assert not cluster_wide_pod_lists
    assert len(kube) / 30 < 40


def test_runner_processes_killed_at_random_keep_every_invariant(sandbox: Sandbox, driver: Driver) -> None:
    image = driver.new_image(pools=["alpha", "win"])
    since = time.time()
    run_id = driver.start(pools=["alpha", "win"])
    stop = threading.Event()
    kills: list[int] = []
    rng = random.Random(7)

    def killer() -> None:
        while not stop.wait(rng.uniform(0.3, 1.5)):
            kills.append(sandbox.kill_runner(rng.randrange(len(sandbox.runners)), signal.SIGKILL))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        time.sleep(12)
    finally:
        stop.set()
        thread.join()
    run = driver.wait(run_id, timeout=240)
    assert len(kills) >= 8
    assert run["state"] == "succeeded", driver.explain(run)
    report = driver.check(run, since=since, image=image)
    assert report.ok, report.violations
    assert report.reimages == 20


def test_every_message_delivered_twice_does_no_harm(sandbox: Sandbox, driver: Driver) -> None:
    from azure.storage.queue import QueueClient

    queue = QueueClient.from_connection_string(sandbox.azurite.connection_string, "node-work")
    seen: set[str] = set()
    stop = threading.Event()
    copies = 0

    def duplicate() -> None:
        nonlocal copies
        while not stop.is_set():
            for msg in queue.peek_messages(max_messages=32):
                if msg.id not in seen:
                    seen.add(msg.id)
                    # The raw (base64) content, sent again as-is: an identical second delivery.
                    queue.send_message(msg.content)
                    copies += 1
            stop.wait(0.02)

    image = driver.new_image(pools=["beta"])
    since = time.time()
    thread = threading.Thread(target=duplicate, daemon=True)
    thread.start()
    try:
        run_id = driver.start(pools=["beta"])
        run = driver.wait(run_id, timeout=180)
    finally:
        stop.set()
        thread.join()
    assert copies >= 20
    assert run["state"] == "succeeded", driver.explain(run)
    report = driver.check(run, since=since, image=image)
    assert report.ok, report.violations
    assert report.reimages == 10  # exactly one reimage per node despite the copies
