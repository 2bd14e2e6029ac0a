"""A whole rollout while the API server ends every watch at once (a proxy's idle timeout
of zero, an API server shedding watches): it still finishes with every invariant, and
its steps' in-place waits do not flood the API server.

This is the end-to-end guard; the waits themselves (each spends its timeout, backs off,
counts early ends) are proved in ``test_kube_watch_ends.py``. At the sandbox's time scale
a boot is shorter than one in-place wait, so the spin a probe saw (a batch leader's boot
watch turned into 2,440 work items for one 120 s boot) does not show here by itself."""

from __future__ import annotations

import time

import pytest

from sandbox.stack import Sandbox
from tests.integration.sandbox_helpers import Driver

pytestmark = pytest.mark.integration


def test_a_rollout_whose_watches_all_end_at_once_finishes_without_flooding_the_api_server(
    sandbox: Sandbox, driver: Driver
) -> None:
    image = driver.new_image(pools=["beta"])
    since = time.time()
    before = len(sandbox.kube_server.request_log)
    sandbox.kube_server.watch_max_seconds = 0
    try:
        run_id = driver.start(pools=["beta"])
        run = driver.wait(run_id, timeout=240)
    finally:
        sandbox.kube_server.watch_max_seconds = None
    assert run["state"] == "succeeded", driver.explain(run)
    nodes = len(run["nodes"])
    assert nodes == 10 and {n["state"] for n in run["nodes"]} == {"succeeded"}
    report = driver.check(run, since=since, image=image)
    assert report.ok, report.violations
    kube = sandbox.kube_server.request_log[before:]
    watches = [r for r in kube if "watch=true" in str(r["query"]).lower()]
    # Each wait re-establishes its watch after a back-off from 0.2 s doubling to 2 s; a
    # watch ended at once and asked again at once would be hundreds per node.
    assert len(watches) / nodes < 40, f"{len(watches)} watches for {nodes} nodes"
    assert len(kube) / nodes < 80, f"{len(kube)} API requests for {nodes} nodes"
