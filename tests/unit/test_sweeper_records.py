"""The sweeper reads only the runs it still has work for, and deletes what is past
retention: never a run with work left, nor one holding its cluster's lock."""

from __future__ import annotations

from shared.clock import iso
from shared.errors import NotFoundError
from shared.rollout.model import NodeState, Run, RunState
from shared.rollout.store.memory import MemoryRunStore
from shared.rollout.sweeper import RETENTION_RUNS_PER_SWEEP, sweep
from tests.harness import Harness
from tests.store_contract import SCALE_SET, make_timed_run

DAY = 86_400.0


def harness(**config: object) -> Harness:
    return Harness({"a": 1}, nodes_per_pool=2, extra_config=config or None)


def ended_runs(h: Harness, count: int, *, days_ago: float, nodes: int = 1) -> list[Run]:
    at = h.clock.now() - days_ago * DAY
    return [
        make_timed_run(h.store, at + i, cluster="test", state=RunState.SUCCEEDED, nodes=nodes)
        for i in range(count)
    ]


def exists(h: Harness, run_id: str) -> bool:
    try:
        h.store.get_run(run_id)
    except NotFoundError:
        return False
    return True


def test_a_sweep_over_many_ended_runs_and_one_active_reads_one_run_record() -> None:
    h = harness()
    ended_runs(h, 40, days_ago=1)
    active = h.start()
    sweep(h.deps)  # settles the ended runs once
    store = h.store
    assert isinstance(store, MemoryRunStore)
    store.run_reads = 0
    report = sweep(h.deps)
    assert report.runs_checked == 1
    # The active run's record, and its record again for its cluster's lock.
    assert store.run_reads <= 2, store.run_reads
    assert set(store.open_runs()) == {active}


def test_a_cancelled_run_with_a_node_in_flight_stays_in_sight_until_it_ends() -> None:
    h = harness()
    run = make_timed_run(h.store, h.clock.now() - 3600, cluster="test", state=RunState.CANCELLED, nodes=2)
    node = h.store.get_node(run.id, "n0")
    node.move_to(NodeState.ADMITTED, reason="test", at=iso(h.clock.now()))
    node.move_to(NodeState.DRAINING, reason="test", at=iso(h.clock.now()))
    node.updated_at = iso(h.clock.now() - 3600)  # stalled: nobody stepped it for an hour
    h.store.commit(node)
    report = sweep(h.deps)
    assert report.resumed == [f"{run.id}/n0"]
    assert run.id in h.store.open_runs()
    node = h.store.get_node(run.id, "n0")
    node.move_to(NodeState.CANCELLED, reason="test", at=iso(h.clock.now()))
    h.store.commit(node)
    sweep(h.deps)
    assert run.id not in h.store.open_runs()


def test_an_open_run_never_written_is_dropped_after_the_grace_only() -> None:
    h = harness()
    ghost = Run(id=Run.new_id(at=h.clock.now()), cluster="test", reason="died", created_at=iso(h.clock.now()))
    h.store.reopen_run(ghost)
    sweep(h.deps)
    assert ghost.id in h.store.open_runs()  # being written right now looks the same
    h.clock.advance(601)
    sweep(h.deps)
    assert ghost.id not in h.store.open_runs()


def test_runs_written_before_the_open_runs_index_are_found_once() -> None:
    h = harness()
    ended_runs(h, 1, days_ago=0)
    running = make_timed_run(h.store, h.clock.now() - 60, cluster="test", state=RunState.RUNNING)
    for run_id in list(h.store.open_runs()):
        h.store.settle_run(run_id)  # as an app that never opened runs left them
    sweep(h.deps)
    assert set(h.store.open_runs()) == {running.id}


def test_runs_past_retention_are_deleted_with_their_records_a_bounded_number_per_sweep() -> None:
    h = harness(retention="720h")
    old = ended_runs(h, RETENTION_RUNS_PER_SWEEP + 3, days_ago=31, nodes=3)
    for run in old:
        h.store.commit(h.store.get_pacer(run.id, SCALE_SET))
    recent = ended_runs(h, 2, days_ago=29)
    first = sweep(h.deps)
    assert len(first.deleted) == RETENTION_RUNS_PER_SWEEP
    second = sweep(h.deps)
    assert sorted(first.deleted + second.deleted) == sorted(r.id for r in old)
    for run in old:
        assert not exists(h, run.id)
        assert h.store.list_nodes(run.id) == []
        assert h.store.get_pacer(run.id, SCALE_SET).etag is None
    assert all(exists(h, r.id) for r in recent)
    assert sweep(h.deps).deleted == []


def test_retention_spares_a_run_with_work_left_and_one_holding_its_lock() -> None:
    h = harness(retention="24h")
    long_ago = h.clock.now() - 10 * DAY
    busy = make_timed_run(h.store, long_ago, cluster="test", state=RunState.CANCELLED, nodes=2)
    node = h.store.get_node(busy.id, "n0")
    node.move_to(NodeState.ADMITTED, reason="test", at=iso(long_ago))
    node.lease_until = h.clock.now() + 3600  # a worker holds it: in flight, not stalled
    h.store.commit(node)
    still_running = make_timed_run(h.store, long_ago, cluster="test", state=RunState.RUNNING)
    # A cluster taken out of the configuration keeps its lock until released by hand.
    locked = make_timed_run(h.store, long_ago, cluster="gone", state=RunState.FAILED)
    assert h.store.claim_cluster("gone", locked.id, at=long_ago) is None
    report = sweep(h.deps)
    assert report.deleted == []
    assert exists(h, busy.id) and exists(h, still_running.id) and exists(h, locked.id)
    h.store.release_cluster("gone", locked.id)
    assert sweep(h.deps).deleted == [locked.id]


def test_runs_recorded_before_ids_counted_down_with_time_are_deleted_past_retention_too() -> None:
    h = harness(retention="24h")
    long_ago = h.clock.now() - 10 * DAY
    # Random ids, as runs were named before: "0…" sorts before every id made from a time.
    older = [Run(id=f"0{i:015x}", cluster="test", reason="old", created_at=iso(long_ago)) for i in range(2)]
    for run in older:
        h.store.create_run(run, [])
        run.move_to(RunState.SUCCEEDED, reason="test", at=iso(long_ago + 60))
        h.store.commit(run)
        h.store.settle_run(run.id)  # as an app that never opened runs left them
    recent = Run(id="0fffffffffffffff", cluster="test", reason="old", created_at=iso(h.clock.now() - 60))
    h.store.create_run(recent, [])
    recent.move_to(RunState.FAILED, reason="test", at=iso(h.clock.now() - 30))
    h.store.commit(recent)
    assert h.store.ended_runs(before=iso(h.clock.now() - DAY), limit=10) == []  # not by their ids
    report = sweep(h.deps)
    assert sorted(report.deleted) == sorted(r.id for r in older)
    assert exists(h, recent.id)
    assert sweep(h.deps).deleted == []


def test_retention_must_be_an_hour_at_least() -> None:
    import pytest

    from shared.config import parse_config
    from shared.errors import ConfigError
    from tests.harness import config_dict

    with pytest.raises(ConfigError, match=r"retention.*at least 1h.*got 90"):
        parse_config({**config_dict({"a": 1}), "retention": 90})
    assert parse_config(config_dict({"a": 1})).retention.days == 90
