"""An operator's scheduled run through the runners' real HTTP and queue paths: planned at
once with the reason it waits, nothing touched before its notBefore, then rolled by the
admission queued (with the queue's own visibility delay) for that moment."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from sandbox.stack import CLUSTER, Sandbox
from tests.integration.sandbox_helpers import Driver, http_json

pytestmark = pytest.mark.integration


def test_a_run_with_not_before_waits_for_it_then_rolls(sandbox: Sandbox, driver: Driver) -> None:
    node = driver.nodes_of("beta")[0]
    # Far enough ahead that a loaded machine still asks before it comes.
    not_before = (datetime.now(UTC) + timedelta(seconds=15)).replace(microsecond=0)
    stamp = not_before.isoformat().replace("+00:00", "Z")
    since = time.time()
    status, answer = http_json(
        "POST",
        f"{driver.url}/api/runs",
        {"cluster": CLUSTER, "nodes": [node], "reason": "scheduled", "notBefore": stamp},
    )
    assert status == 202, answer
    assert answer["state"] == "planned" and answer["stateReason"].endswith(": notBefore"), answer
    waiting = driver.get(answer["id"])
    assert waiting["notBefore"].startswith(stamp[:19]) and waiting["counts"] == {"pending": 1}, waiting
    run = driver.wait(answer["id"])
    assert run["state"] == "succeeded", driver.explain(run)
    cordons = [
        r["t"]
        for r in sandbox.world.history.records()
        if r["t"] >= since and r["kind"] == "node_cordoned" and r.get("node") == node
    ]
    assert cordons and min(cordons) >= not_before.timestamp() - 0.05, cordons


def test_a_schedule_field_that_is_not_utc_is_a_400_and_plans_nothing(driver: Driver) -> None:
    before = http_json("GET", f"{driver.url}/api/runs")[1]["runs"]
    status, answer = http_json(
        "POST", f"{driver.url}/api/runs", {"cluster": CLUSTER, "notBefore": "2026-12-05T22:00:00+01:00"}
    )
    assert status == 400 and "must be in UTC" in answer["error"], answer
    assert http_json("GET", f"{driver.url}/api/runs")[1]["runs"] == before
