"""What every run-state backend promises, as tests: subclass ``StoreContract`` with a
``store`` fixture (the memory backend in tests/unit, Azure Table on Azurite in
tests/integration)."""

from __future__ import annotations

import pytest

from shared.clock import iso
from shared.errors import ConcurrencyError, NotFoundError, ValidationError
from shared.rollout.model import NodeState, NodeWork, PacerRecord, Run, RunState
from shared.rollout.store.base import RunStore

SCALE_SET = "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/Pool-A"


def make_run(store: RunStore, run_id: str = "run1", nodes: int = 6) -> Run:
    run = Run(id=run_id, cluster="c1", reason="test", created_at="2026-01-01T00:00:00Z")
    # Names sort differently from plan order, so a result in row-key order shows.
    records = [
        NodeWork(
            run_id=run_id,
            name=f"node-{(nodes - i):03d}",
            pool="ab"[i % 2],
            scale_set_id=SCALE_SET,
            instance_id=str(i),
            order=i,
        )
        for i in range(nodes)
    ]
    store.create_run(run, records)
    return run


def move(store: RunStore, run_id: str, name: str, *states: NodeState) -> NodeWork:
    node = store.get_node(run_id, name)
    for state in states:
        node.move_to(state, reason="test", at="now")
    store.commit(node)
    return node


DAY = 86_400.0
T0 = 1_790_000_000.0  # 2026-09-21


def make_timed_run(
    store: RunStore, at: float, *, cluster: str = "c1", state: RunState = RunState.RUNNING, nodes: int = 1
) -> Run:
    """A run created at ``at`` (its id counts down with it), moved to ``state`` an hour later."""
    run = Run(id=Run.new_id(at=at), cluster=cluster, reason="test", created_at=iso(at))
    records = [
        NodeWork(run_id=run.id, name=f"n{i}", pool="a", scale_set_id=SCALE_SET, instance_id=str(i), order=i)
        for i in range(nodes)
    ]
    store.create_run(run, records)
    if state != RunState.PLANNED:
        run.move_to(state, reason="test", at=iso(at + 3600))
        store.commit(run)
    return run


class StoreContract:
    # ---- runs: pages newest first, filtered where the rows are stored --------------------
    def test_runs_page_newest_first_with_a_continuation(self, store: RunStore) -> None:
        made = [make_timed_run(store, T0 + i * 60) for i in range(7)]
        newest_first = [r.id for r in reversed(made)]
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = store.list_runs_page(limit=3, next=token)
            assert len(page.runs) <= 3
            seen += [r.id for r in page.runs]
            pages += 1
            if not page.next:
                break
            token = page.next
        assert seen == newest_first
        assert pages in (3, 4)  # a last page may be empty when the previous one ended exactly
        assert [r.id for r in store.list_runs_page(limit=500).runs] == newest_first

    def test_runs_filter_by_cluster_and_state(self, store: RunStore) -> None:
        a1 = make_timed_run(store, T0, cluster="a", state=RunState.SUCCEEDED)
        b1 = make_timed_run(store, T0 + 1, cluster="b", state=RunState.FAILED)
        a2 = make_timed_run(store, T0 + 2, cluster="a", state=RunState.RUNNING)
        a3 = make_timed_run(store, T0 + 3, cluster="a", state=RunState.FAILED)
        assert [r.id for r in store.list_runs_page(cluster="a", limit=10).runs] == [a3.id, a2.id, a1.id]
        failed = store.list_runs_page(states=[RunState.FAILED], limit=10).runs
        assert [r.id for r in failed] == [a3.id, b1.id]
        ended_in_a = store.list_runs_page(cluster="a", states=[RunState.FAILED, RunState.SUCCEEDED], limit=1)
        assert [r.id for r in ended_in_a.runs] == [a3.id] and ended_in_a.next
        rest = store.list_runs_page(
            cluster="a", states=[RunState.FAILED, RunState.SUCCEEDED], limit=1, next=ended_in_a.next
        )
        assert [r.id for r in rest.runs] == [a1.id]
        assert store.list_runs_page(cluster="nowhere", limit=10).runs == []
        assert store.list_runs_page(states=[], limit=10).runs == []

    def test_a_state_change_moves_a_run_between_state_filters(self, store: RunStore) -> None:
        run = make_timed_run(store, T0)
        assert [r.id for r in store.list_runs_page(states=[RunState.RUNNING], limit=5).runs] == [run.id]
        run.move_to(RunState.CANCELLED, reason="test", at=iso(T0 + 10))
        store.commit(run)
        assert store.list_runs_page(states=[RunState.RUNNING], limit=5).runs == []
        assert [r.id for r in store.list_runs_page(states=[RunState.CANCELLED], limit=5).runs] == [run.id]

    @pytest.mark.parametrize(
        "token",
        [
            "not a token",
            "e30",  # {}
            "WzFd",  # [1]
            "eyJhIjoxfQ",  # {"a": 1}
            "%%%",
            "eyJQYXJ0aXRpb25LZXkiOiAiYSJ9",  # {"PartitionKey": "a"}: no RowKey
            "eyJQYXJ0aXRpb25LZXkiOiAiYVxuIiwgIlJvd0tleSI6ICJydW4ifQ",  # a newline in a key
        ],
    )
    def test_a_continuation_it_did_not_give_out_is_refused(self, store: RunStore, token: str) -> None:
        with pytest.raises(ValidationError, match="next"):
            store.list_runs_page(limit=5, next=token)

    def test_ended_runs_are_those_ended_before_the_cutoff(self, store: RunStore) -> None:
        old = make_timed_run(store, T0, state=RunState.SUCCEEDED)
        old_running = make_timed_run(store, T0 + 60)
        make_timed_run(store, T0 + 10 * DAY, state=RunState.FAILED)
        ended = store.ended_runs(before=iso(T0 + 5 * DAY), limit=10)
        assert [r.id for r in ended] == [old.id]
        assert old_running.id not in [r.id for r in store.ended_runs(before=iso(T0 + 50 * DAY), limit=10)]
        assert len(store.ended_runs(before=iso(T0 + 50 * DAY), limit=1)) == 1

    def test_a_run_is_open_from_before_its_records_until_settled(self, store: RunStore) -> None:
        run = make_timed_run(store, T0, state=RunState.SUCCEEDED)
        assert store.open_runs() == {run.id: T0}
        store.settle_run(run.id)
        store.settle_run(run.id)  # twice is harmless
        assert store.open_runs() == {}
        assert store.get_run(run.id).id == run.id

    def test_deleting_a_run_deletes_its_nodes_and_pacers(self, store: RunStore) -> None:
        run = make_timed_run(store, T0, state=RunState.SUCCEEDED, nodes=130)
        store.commit(store.get_pacer(run.id, SCALE_SET))
        kept = make_timed_run(store, T0 + 1, nodes=2)
        assert store.delete_run(run.id) == 132
        with pytest.raises(NotFoundError):
            store.get_run(run.id)
        assert store.list_nodes(run.id) == []
        assert store.get_pacer(run.id, SCALE_SET).etag is None
        assert run.id not in store.open_runs()
        assert len(store.list_nodes(kept.id)) == 2
        assert store.delete_run(run.id) == 1  # again: nothing left, nothing raised

    def test_list_nodes_without_states_is_every_node_in_plan_order(self, store: RunStore) -> None:
        make_run(store)
        store.commit(store.get_pacer("run1", SCALE_SET))
        nodes = store.list_nodes("run1")
        assert [n.order for n in nodes] == list(range(6))
        assert all(isinstance(n, NodeWork) for n in nodes)

    def test_state_filters_see_each_write(self, store: RunStore) -> None:
        make_run(store)
        move(store, "run1", "node-006", NodeState.ADMITTED)
        move(store, "run1", "node-005", NodeState.ADMITTED, NodeState.DRAINING)
        move(store, "run1", "node-004", NodeState.ADMITTED, NodeState.FAILED)
        holding = {NodeState.ADMITTED, NodeState.DRAINING, NodeState.REIMAGING, NodeState.BOOTING}
        assert [n.name for n in store.list_nodes("run1", states=holding)] == ["node-006", "node-005"]
        assert [n.name for n in store.list_nodes("run1", states=[NodeState.FAILED])] == ["node-004"]
        assert store.list_nodes("run1", states=[NodeState.SUCCEEDED]) == []
        assert store.list_nodes("run1", states=[]) == []
        pending = store.pending_nodes("run1")
        assert [(n.name, n.order, n.pool) for n in pending] == [
            ("node-003", 3, "b"),
            ("node-002", 4, "a"),
            ("node-001", 5, "b"),
        ]
        assert all(n.state == NodeState.PENDING for n in pending)

    def test_summaries_carry_the_columns_and_the_records_etag(self, store: RunStore) -> None:
        make_run(store)
        move(store, "run1", "node-003", NodeState.ADMITTED)
        summaries = {s.name: s for s in store.node_summaries("run1")}
        assert len(summaries) == 6
        assert summaries["node-003"].state == NodeState.ADMITTED
        for name, summary in summaries.items():
            record = store.get_node("run1", name)
            assert (summary.pool, summary.order, summary.etag) == (record.pool, record.order, record.etag)
        assert len(store.node_summaries("run1", states=[NodeState.PENDING], limit=2)) == 2
        assert {s.reimage_batch for s in summaries.values()} == {""}
        started = store.get_node("run1", "node-003")
        started.reimage_batch = "b1"
        store.commit(started)
        listed = store.node_summaries("run1", states=[NodeState.ADMITTED])
        assert [(s.name, s.reimage_batch) for s in listed] == [("node-003", "b1")]

    def test_has_nodes_answers_whether_any_node_is_in_the_states(self, store: RunStore) -> None:
        make_run(store)
        assert store.has_nodes("run1", states=[NodeState.PENDING])
        assert not store.has_nodes("run1", states=[NodeState.BOOTING, NodeState.FAILED])
        assert not store.has_nodes("run1", states=[])
        move(store, "run1", "node-001", NodeState.ADMITTED, NodeState.FAILED)
        assert store.has_nodes("run1", states=[NodeState.BOOTING, NodeState.FAILED])

    def test_queries_stay_inside_the_run(self, store: RunStore) -> None:
        make_run(store, "run1", nodes=3)
        make_run(store, "run2", nodes=4)
        assert len(store.list_nodes("run1")) == 3
        assert len(store.pending_nodes("run2")) == 4
        assert {r.id for r in store.list_runs()} == {"run1", "run2"}

    def test_get_nodes_reads_the_named_records_in_plan_order(self, store: RunStore) -> None:
        make_run(store, nodes=40)
        names = [f"node-{i:03d}" for i in range(1, 41, 2)] + ["node-999"]  # more than one filter's worth
        found = store.get_nodes("run1", names)
        assert [n.name for n in found] == sorted(names[:-1], key=lambda n: 40 - int(n[-3:]))
        assert store.get_nodes("run1", []) == []

    def test_a_pacer_is_created_once_then_updated_on_its_etag(self, store: RunStore) -> None:
        make_run(store)
        pacer = store.get_pacer("run1", SCALE_SET)
        assert (pacer.etag, pacer.tokens, pacer.scale_set) == (None, None, SCALE_SET.lower())
        pacer.tokens, pacer.updated = 11.0, 100.0
        store.commit(pacer)
        assert pacer.etag
        # A second leader that also saw no pacer loses the create.
        rival = PacerRecord(run_id="run1", scale_set=SCALE_SET.lower(), tokens=11.0, updated=100.0)
        with pytest.raises(ConcurrencyError):
            store.commit(rival)
        again = store.get_pacer("run1", SCALE_SET.upper())
        assert (again.tokens, again.updated, again.etag) == (11.0, 100.0, pacer.etag)
        again.tokens = 10.0
        store.commit(again)
        pacer.tokens = 9.0  # read before the update above
        with pytest.raises(ConcurrencyError):
            store.commit(pacer)
        assert store.get_pacer("run1", SCALE_SET).tokens == 10.0

    def test_a_pacer_commits_atomically_with_nodes_and_never_shows_as_a_node(self, store: RunStore) -> None:
        run = make_run(store)
        leader = store.get_node("run1", "node-006")
        stale_peer = store.get_node("run1", "node-005")
        move(store, "run1", "node-005", NodeState.ADMITTED)
        pacer = store.get_pacer("run1", SCALE_SET)
        pacer.tokens = 5.0
        leader.reason = "leads"
        with pytest.raises(ConcurrencyError):
            store.commit(pacer, leader, stale_peer)
        assert store.get_pacer("run1", SCALE_SET).etag is None
        assert store.get_node("run1", "node-006").reason == ""
        pacer.etag = None  # nothing was written: still to be created
        store.commit(pacer, leader, store.get_node("run1", "node-005"), run)
        assert store.get_pacer("run1", SCALE_SET).tokens == 5.0
        assert len(store.list_nodes("run1")) == 6
        assert len(store.node_summaries("run1")) == 6
        assert [r.id for r in store.list_runs()] == ["run1"]

    def test_a_pacer_per_scale_set(self, store: RunStore) -> None:
        make_run(store)
        first = store.get_pacer("run1", SCALE_SET)
        first.tokens = 1.0
        second = store.get_pacer("run1", SCALE_SET + "-other")
        second.tokens = 2.0
        store.commit(first, second)
        assert store.get_pacer("run1", SCALE_SET).tokens == 1.0
        assert store.get_pacer("run1", SCALE_SET + "-other").tokens == 2.0
        assert store.get_pacer("run2", SCALE_SET).etag is None

    # ---- keyed records: create-if-absent, and writes conditional on what was read ----
    def test_a_record_is_created_once_and_its_twin_is_told(self, store: RunStore) -> None:
        assert store.create_record("event", "e|1", {"outcome": "in-progress"}) is True
        assert store.create_record("event", "e|1", {"outcome": "other"}) is False
        data, etag = store.get_record_entry("event", "e|1") or ({}, "")
        assert data == {"key": "e|1", "outcome": "in-progress"} and etag
        assert store.get_record_entry("event", "e|2") is None

    def test_a_record_is_replaced_or_deleted_only_as_it_was_read(self, store: RunStore) -> None:
        store.create_record("event", "k", {"n": 1})
        _, etag = store.get_record_entry("event", "k") or ({}, "")
        new_etag = store.replace_record("event", "k", {"n": 2}, etag=etag)
        assert new_etag and new_etag != etag
        assert store.replace_record("event", "k", {"n": 3}, etag=etag) is None  # changed since
        assert store.delete_record("event", "k", etag=etag) is False
        assert store.get_record("event", "k") == {"key": "k", "n": 2}
        assert store.delete_record("event", "k", etag=new_etag) is True
        assert store.get_record("event", "k") is None
        assert store.replace_record("event", "k", {"n": 4}, etag=new_etag) is None  # gone

    # ---- listed records: newest first, paged, filtered, moved when written again ----------
    def test_listed_records_page_newest_first_and_filter_by_repository(self, store: RunStore) -> None:
        for i in range(5):
            repo = "org/a" if i % 2 == 0 else "org/b"
            store.put_listed_record(
                "sync",
                f"d-{i}",
                {"n": i, "repository": repo},
                at=T0 + i,
                summary={"n": i, "repository": repo},
            )
        seen, token = [], ""
        while True:
            page, token = store.list_listed_records("sync", limit=2, next=token)
            seen += [r["n"] for r in page]
            if not token:
                break
        assert seen == [4, 3, 2, 1, 0]
        only_a, _ = store.list_listed_records("sync", where={"repository": "org/a"}, limit=10)
        assert [r["n"] for r in only_a] == [4, 2, 0]
        assert all(r["key"].startswith("d-") for r in only_a)
        assert sorted(r["n"] for r in store.list_records("sync")) == [0, 1, 2, 3, 4]  # records only
        with pytest.raises(ValidationError):
            store.list_listed_records("sync", limit=2, next="nope")

    def test_a_listed_record_written_again_at_another_time_is_listed_once(self, store: RunStore) -> None:
        store.put_listed_record("sync", "d", {"v": 1}, at=T0, summary={"v": 1})
        store.put_listed_record("sync", "d", {"v": 2}, at=T0, summary={"v": 2})
        store.put_listed_record("sync", "d", {"v": 3}, at=T0 + 60, summary={"v": 3})
        listed, _ = store.list_listed_records("sync", limit=10)
        assert [r["v"] for r in listed] == [3]
        assert (store.get_record("sync", "d") or {})["v"] == 3

    def test_listed_records_before_a_time_are_found_bounded_and_deleted(self, store: RunStore) -> None:
        for i in range(4):
            store.put_listed_record("sync", f"d-{i}", {"n": i}, at=T0 + i * DAY, summary={"n": i})
        found = store.listed_before("sync", before=T0 + 2.5 * DAY, limit=2)
        assert len(found) == 2 and {f["n"] for f in found} <= {0, 1, 2}
        for summary in found:
            store.delete_listed("sync", summary)
        for summary in store.listed_before("sync", before=T0 + 2.5 * DAY, limit=2):
            store.delete_listed("sync", summary)
        assert store.listed_before("sync", before=T0 + 2.5 * DAY, limit=2) == []
        assert [r["n"] for r in store.list_listed_records("sync", limit=10)[0]] == [3]
        assert [store.get_record("sync", f"d-{i}") is None for i in range(4)] == [True, True, True, False]
        store.discard_record("sync", "d-3")
        store.discard_record("sync", "d-3")  # gone already: done
        assert store.get_record("sync", "d-3") is None
