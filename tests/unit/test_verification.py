"""A reimaged node is uncordoned only once both sides agree it is on the new image; every
way that can fail ends in its documented state (failed, left cordoned, with the reason)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from shared.rollout.model import NodeState
from tests.harness import Harness


def _at(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).timestamp()


def _run_with_reboot(h: Harness, reboot: Callable[[str, str | None], None]) -> str:
    h.kube.reboot = lambda name, image=None: reboot(name, image)  # type: ignore[method-assign]
    run_id = h.start()
    h.pump(run_id, max_steps=20000)
    return run_id


def _failed_while_booting(h: Harness, run_id: str, node: str = "linux-0") -> tuple[str, float]:
    record = h.store.get_node(run_id, node)
    assert record.state == NodeState.FAILED, record.reason
    booting = next(e for e in record.history if e["to"] == "booting")
    failed = next(e for e in record.history if e["to"] == "failed")
    assert h.kube.nodes[node]["spec"].get("unschedulable") is True  # left cordoned
    assert any(r == "PatchFailed" and node == n for n, r, _ in h.kube.events)
    return record.reason, _at(failed) - _at(booting)


def test_a_node_that_comes_back_on_its_old_boot_fails_left_cordoned() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)

    def ready_without_rebooting(name: str, image: str | None) -> None:
        h.kube.nodes[name]["status"]["conditions"] = [{"type": "Ready", "status": "True"}]

    run_id = _run_with_reboot(h, ready_without_rebooting)
    reason, _ = _failed_while_booting(h, run_id)
    assert "boot id unchanged" in reason and "left cordoned" in reason


def test_a_node_that_reports_another_image_fails_left_cordoned() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    real = h.kube.reboot

    def boots_the_wrong_image(name: str, image: str | None) -> None:
        real(name, image="1.0.0")

    run_id = _run_with_reboot(h, boots_the_wrong_image)
    reason, _ = _failed_while_booting(h, run_id)
    assert "node reports image 1.0.0, expected 2.0.0" in reason


def test_an_instance_not_on_the_latest_model_after_the_reimage_fails_left_cordoned() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    real = h.kube.reboot

    def model_moved_on(name: str, image: str | None) -> None:
        real(name, image=image)
        h.compute.instance("linux0")["latest"] = False  # someone wrote the model meanwhile

    run_id = _run_with_reboot(h, model_moved_on)
    reason, _ = _failed_while_booting(h, run_id)
    assert "instance is not on the latest model" in reason


@pytest.mark.parametrize(("pool", "minutes"), [("linux", 15), ("win", 30)])
def test_a_node_that_never_comes_up_fails_after_its_os_default_boot_timeout(pool: str, minutes: int) -> None:
    h = Harness({pool: 1}, nodes_per_pool=1)
    run_id = _run_with_reboot(h, lambda name, image: None)  # never Ready again
    reason, took = _failed_while_booting(h, run_id, f"{pool}-0")
    assert f"not verified within {minutes * 60}s" in reason and "node is not Ready" in reason
    assert minutes * 60 < took < minutes * 60 + 120, took


def test_a_node_whose_work_item_goes_to_the_poison_queue_is_failed_with_an_event_and_annotation() -> None:
    from shared.adapters.kube import ANNOTATION_STATE
    from shared.adapters.workqueue import WorkItem

    h = Harness({"linux": 1}, nodes_per_pool=1)
    run_id = h.start()
    h.queue.take()
    h.workflow.handle(WorkItem("step", run_id, "linux-0", h.store.get_node(run_id, "linux-0").seq))
    h.queue.take()
    record = h.store.get_node(run_id, "linux-0")
    assert record.state == NodeState.REIMAGING and record.cordoned_by_us, record.state

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("a bug in the step")

    h.compute.poll = broken  # type: ignore[method-assign]
    h.compute.get_instance = broken  # type: ignore[method-assign]
    h.compute.get_model_image = broken  # type: ignore[method-assign]
    h.kube.list_pods_on_node = broken  # type: ignore[method-assign]
    item = WorkItem("step", run_id, "linux-0", h.store.get_node(run_id, "linux-0").seq)
    h.clock.advance(120)
    with pytest.raises(RuntimeError):
        h.workflow.handle(item, final_attempt=True)
    record = h.store.get_node(run_id, "linux-0")
    assert record.state == NodeState.FAILED and "poison queue" in record.reason
    assert h.kube.nodes["linux-0"]["metadata"]["annotations"][ANNOTATION_STATE] == "failed"
    assert any(n == "linux-0" and r == "PatchFailed" and "poison" in m for n, r, m in h.kube.events)
