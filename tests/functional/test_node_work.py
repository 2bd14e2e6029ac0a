"""The queue trigger, called as the host calls it: real QueueMessage objects."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.functions.queue import QueueMessage

from shared.rollout.model import NodeState
from tests.harness import Harness


def deliver(functions: dict[str, Any], body: str | bytes, *, dequeue_count: int = 1) -> None:
    msg = QueueMessage(
        id="m1", body=body.encode() if isinstance(body, str) else body, dequeue_count=dequeue_count
    )
    functions["node_work"].get_user_function()(msg)


def test_a_malformed_message_is_dead_lettered_with_its_reason(functions: dict, harness: Harness) -> None:
    for body, needle in [
        (b"\xff\xfe", "not valid JSON"),
        ("[1,2]", "JSON object"),
        ('{"v": 9, "kind": "step"}', "version"),
        ('{"v": 1, "kind": "step", "run": "r"}', "node"),
        ('{"v": 1, "kind": "reboot", "run": "r"}', "unknown work item kind"),
        ('{"v": 1, "kind": "step", "run": "r", "node": "n", "seq": 1, "due": "soon"}', "due time"),
    ]:
        deliver(functions, body)
        _, reason = harness.queue.dead[-1]
        assert needle in reason
    assert len(harness.queue.dead) == 6


def test_a_step_item_carries_when_it_was_due() -> None:
    from shared.adapters.workqueue import WorkItem

    item = WorkItem("step", "r", "n", 3, due=1764000000.25)
    assert WorkItem.parse(item.to_json()) == item
    assert "due" not in WorkItem("step", "r", "n", 3).to_json()  # older senders: not said
    assert WorkItem.parse(WorkItem("step", "r", "n", 3).to_json()).due == 0.0


def test_the_final_failing_delivery_fails_the_node_with_the_reason(functions: dict, harness: Harness) -> None:
    run_id = harness.start(pools=["linux"])  # admits the first node
    item = harness.queue.take()[0][0]
    harness.kube.fail_next = [KeyError("unexpected shape")]
    for attempt in (1, 5):
        with pytest.raises(KeyError):
            deliver(functions, item.to_json(), dequeue_count=attempt)
        node = harness.store.get_node(run_id, item.node)
        if attempt == 1:
            assert node.state == NodeState.ADMITTED and "unexpected shape" in node.last_error
            assert node.lease_owner == ""  # released, so the retry can run at once
            harness.kube.fail_next = [KeyError("unexpected shape")]
    assert node.state == NodeState.FAILED
    assert "poison queue" in node.reason


def test_a_step_message_moves_the_node(functions: dict, harness: Harness) -> None:
    run_id = harness.start(pools=["win"])
    harness._collect()
    harness.workflow.handle(harness.pending.pop(0)[1])
    item = harness.queue.take()[0][0]
    deliver(
        functions, json.dumps({"v": 1, "kind": "step", "run": run_id, "node": item.node, "seq": item.seq})
    )
    assert harness.store.get_node(run_id, item.node).state in (NodeState.DRAINING, NodeState.REIMAGING)
