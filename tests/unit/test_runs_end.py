"""A run always ends and never holds the cluster by mistake: a run whose closing write
failed is closed by the sweeper; a claim or a run record whose answer was lost is
recognised as ours; a lock that names a missing or finished run is released by the
sweeper; an operator can release a lock, and it is recorded."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import TemporaryError
from shared.rollout.model import NodeState, RunState
from shared.rollout.service import RunService
from shared.rollout.sweeper import sweep
from tests.fakes import FlakyRunStore, claims_cluster, closes_run, creates_run
from tests.harness import Harness


def flaky(pools: dict[str, int] | None = None, **kwargs: object) -> tuple[Harness, FlakyRunStore]:
    store = FlakyRunStore()
    return Harness(pools or {"linux": 1}, store=store, **kwargs), store  # type: ignore[arg-type]


# ---- a run that never closes ----------------------------------------------------------------


def test_a_run_whose_closing_write_failed_is_closed_by_the_sweeper() -> None:
    h, store = flaky(nodes_per_pool=1)
    store.fail_write(closes_run)  # a Table 503 on the admission after the last node finished
    run_id = h.start()
    with pytest.raises(TemporaryError):
        h.pump(run_id)
    assert store.fired and h.node_states(run_id) == {"linux-0": "succeeded"}
    assert h.store.get_run(run_id).state == RunState.RUNNING  # the redelivered step is stale
    report = sweep(h.deps)
    run = h.store.get_run(run_id)
    assert (run.state, run.state_reason) == (RunState.SUCCEEDED, "1 succeeded")
    assert report.closed == [run_id]
    assert h.store.active_run("test") is None
    assert h.start()  # the cluster takes a new run


def test_the_sweeper_does_not_close_a_run_with_pending_nodes() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=2)
    run_id = h.start()
    h.queue.take()
    node = h.store.get_node(run_id, "linux-0")
    for state in (NodeState.DRAINING, NodeState.REIMAGING, NodeState.BOOTING, NodeState.SUCCEEDED):
        node.move_to(state, reason="test", at="now")
    h.store.commit(node)
    assert sweep(h.deps).closed == []
    assert h.store.get_run(run_id).state == RunState.RUNNING


# ---- a lock that points at nothing ------------------------------------------------------------


@pytest.mark.parametrize("write", [claims_cluster, creates_run], ids=["claim", "run record"])
def test_a_create_retried_into_a_409_for_itself_is_recognised_as_ours(write: Any) -> None:
    h, store = flaky(nodes_per_pool=1)
    store.lose_answer(write)  # the SDK retried the create after a 5xx: 409 for itself
    run_id = h.start()
    assert store.fired
    assert h.store.active_run("test") == run_id
    h.pump(run_id)
    assert h.store.get_run(run_id).state == RunState.SUCCEEDED
    assert h.store.active_run("test") is None


def test_a_claim_whose_answer_was_dropped_is_looked_at_again_and_kept() -> None:
    h, store = flaky(nodes_per_pool=1)
    store.lose_answer(claims_cluster, TemporaryError("connection aborted: no answer"))
    run_id = h.start()
    assert h.store.active_run("test") == run_id
    h.pump(run_id)
    assert h.store.active_run("test") is None


def test_a_run_that_could_not_be_written_gives_the_cluster_back() -> None:
    h, store = flaky(nodes_per_pool=1)
    store.fail_write(creates_run)
    with pytest.raises(TemporaryError):
        h.start()
    assert h.store.active_run("test") is None


def test_the_sweeper_releases_a_lock_whose_run_does_not_exist() -> None:
    # The process died between claiming the cluster and writing the run.
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.store.claim_cluster("test", "ghost", at=h.clock.now())
    assert sweep(h.deps).released == []  # a run being written right now looks just the same
    assert h.store.active_run("test") == "ghost"
    h.clock.advance(h.config.workflow.stall_after.total_seconds() + 1)
    assert sweep(h.deps).released == ["test: run ghost does not exist"]
    assert h.store.active_run("test") is None
    assert h.start()


def test_the_sweeper_releases_a_lock_whose_run_has_ended() -> None:
    h, store = flaky(nodes_per_pool=1)
    store.fail_write(lambda partition, ops: partition == "cluster~test" and ops[0][0] == "delete")
    run_id = h.start()
    with pytest.raises(TemporaryError):  # the run was closed, the release failed
        h.pump(run_id)
    assert store.fired and h.store.get_run(run_id).state == RunState.SUCCEEDED
    assert h.store.active_run("test") == run_id
    assert sweep(h.deps).released == [f"test: run {run_id} is succeeded"]
    assert h.store.active_run("test") is None


def test_the_sweeper_keeps_the_lock_of_an_ended_run_while_its_nodes_finish() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=2)
    run_id = h.start()  # linux-0 admitted
    h.queue.take()
    node = h.store.get_node(run_id, "linux-0")
    node.move_to(NodeState.DRAINING, reason="test", at="now")
    node.move_to(NodeState.REIMAGING, reason="test", at="now")
    h.store.commit(node)
    RunService(h.deps).cancel(run_id)  # linux-0 is reimaging: it finishes first
    assert sweep(h.deps).released == []
    assert h.store.active_run("test") == run_id


def test_an_operator_releases_a_lock_and_it_is_recorded() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.store.claim_cluster("test", "ghost", at=h.clock.now())
    released = RunService(h.deps).release_lock("test", by="alice@contoso.com", reason="stuck since Tuesday")
    assert released["runId"] == "ghost" and released["runState"] == "missing"
    assert h.store.active_run("test") is None
    (record,) = h.store.list_records("lock-release")
    assert record["cluster"] == "test" and record["runId"] == "ghost"
    assert record["by"] == "alice@contoso.com" and record["reason"] == "stuck since Tuesday"


def test_an_operator_is_told_to_cancel_a_run_in_progress_before_releasing_its_lock() -> None:
    from shared.rollout.service import RunConflictError

    h = Harness({"linux": 1}, nodes_per_pool=2)
    run_id = h.start()
    with pytest.raises(RunConflictError, match="cancel it first"):
        RunService(h.deps).release_lock("test", by="function key")
    assert h.store.active_run("test") == run_id
    RunService(h.deps).release_lock("test", by="function key", force=True)
    assert h.store.active_run("test") is None


def test_releasing_a_free_cluster_says_there_was_no_lock() -> None:
    from shared.errors import NotFoundError

    h = Harness({"linux": 1}, nodes_per_pool=1)
    with pytest.raises(NotFoundError, match="no lock"):
        RunService(h.deps).release_lock("test", by="function key")
    assert h.store.list_records("lock-release") == []


def test_a_lock_freed_by_its_run_while_the_operator_releases_it_is_reported_gone_not_a_conflict() -> None:
    from shared.errors import ConcurrencyError, NotFoundError

    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.store.claim_cluster("test", "ghost", at=h.clock.now())
    real_release = h.store.release_cluster
    meanwhile: list[str] = []

    def freed_first(cluster: str, run_id: str) -> bool:
        # What a cancelled run's admission does between the operator's read and delete.
        if not meanwhile:
            meanwhile.append(run_id)
            assert real_release(cluster, run_id)
            if after == "taken":
                h.store.claim_cluster(cluster, "other", at=h.clock.now())
        return real_release(cluster, run_id)

    h.store.release_cluster = freed_first  # type: ignore[method-assign]
    after = "freed"
    with pytest.raises(NotFoundError, match="freed meanwhile"):
        RunService(h.deps).release_lock("test", by="function key")
    meanwhile.clear()
    h.store.claim_cluster("test", "ghost", at=h.clock.now())
    after = "taken"
    with pytest.raises(ConcurrencyError, match="look again"):
        RunService(h.deps).release_lock("test", by="function key")
    assert h.store.active_run("test") == "other"
    assert h.store.list_records("lock-release") == []
