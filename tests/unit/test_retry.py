"""The one conflict-retry helper, and the callers that must not give up silently."""

from __future__ import annotations

import pytest

from shared.errors import ConcurrencyError
from shared.retry import retry_on_conflict
from shared.rollout.model import NodeState
from shared.rollout.service import RunService
from tests.harness import Harness


def test_a_conflict_is_retried_until_the_write_goes_through() -> None:
    calls: list[int] = []

    def write() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConcurrencyError("etag")
        return "written"

    assert retry_on_conflict(write, attempts=5) == "written"
    assert len(calls) == 3


def test_exhausted_conflicts_raise_the_last_one() -> None:
    calls: list[int] = []

    def write() -> None:
        calls.append(1)
        raise ConcurrencyError(f"etag {len(calls)}")

    with pytest.raises(ConcurrencyError, match="etag 4"):
        retry_on_conflict(write, attempts=4)
    assert len(calls) == 4


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def write() -> None:
        calls.append(1)
        raise ValueError("bug")

    with pytest.raises(ValueError):
        retry_on_conflict(write)
    assert len(calls) == 1


def test_cancel_that_keeps_conflicting_says_so_instead_of_leaving_nodes_pending() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=4)
    run_id = h.start()
    real_commit = h.store.commit

    def conflicting(*records):  # type: ignore[no-untyped-def]
        if any(getattr(r, "state", None) == NodeState.CANCELLED and hasattr(r, "pool") for r in records):
            raise ConcurrencyError("somebody else wrote first")
        return real_commit(*records)

    h.store.commit = conflicting  # type: ignore[method-assign]
    with pytest.raises(ConcurrencyError):
        RunService(h.deps).cancel(run_id)
    h.store.commit = real_commit  # type: ignore[method-assign]
    # A repeated cancel finishes the job.
    RunService(h.deps).cancel(run_id)
    assert NodeState.PENDING not in {n.state for n in h.store.list_nodes(run_id)}


def test_backoff_doubles_from_the_initial_wait_up_to_the_maximum_with_bounded_jitter() -> None:
    from shared.retry import backoff

    for attempt, low in [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (10_000, 60.0)]:
        waits = {backoff(attempt, initial=2.0, maximum=60.0) for _ in range(50)}
        assert all(low <= w <= min(60.0, low + 0.5) for w in waits), (attempt, sorted(waits)[:3])
        if low < 60.0:
            assert len(waits) > 1, "waiters that failed together would come back together"
