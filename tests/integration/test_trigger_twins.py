"""Twin deliveries of one signal, racing for real against Azure Table storage (Azurite):
the create-if-absent claim lets exactly one plan the maintenance run, and its twin is
told to come back instead of finding the cluster busy and cancelling that run."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sandbox.azurite import Azurite
from shared.errors import TemporaryError
from shared.rollout.model import RunState
from shared.rollout.store.table import TableRunStore
from shared.triggers.events import PRE_MAINTENANCE
from shared.triggers.intake import Intake
from tests.harness import Harness
from tests.unit.test_intake import envelope, events_config, maintenance_data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TableServiceClient]:
    with Azurite(tmp_path_factory.mktemp("azurite")) as azurite:
        yield TableServiceClient.from_connection_string(azurite.connection_string)


def table_store(service: TableServiceClient, name: str) -> TableRunStore:
    service.create_table_if_not_exists(name)
    return TableRunStore(service.get_table_client(name))


@pytest.mark.parametrize("round_", range(3))
def test_twin_pre_maintenance_deliveries_plan_one_run_and_never_cancel_it(
    service: TableServiceClient, round_: int
) -> None:
    h = Harness(
        {"linux": 1, "win": 1},
        nodes_per_pool=2,
        extra_config=events_config(),
        store=table_store(service, f"twins{round_}"),
    )
    event = envelope(PRE_MAINTENANCE, maintenance_data(h, start_in=1800), event_id=f"mr-{round_}")
    # Both deliveries leave the gate together; each then makes its own HTTP calls.
    gate = threading.Barrier(2, timeout=10)
    # On a look at the cluster, each waits (briefly) for the other to have looked too.
    both_looking = threading.Barrier(2, timeout=2)
    list_nodes = h.kube.list_nodes

    def lockstep_list_nodes(*args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_looking.wait()
        return list_nodes(*args, **kwargs)

    h.kube.list_nodes = lockstep_list_nodes  # type: ignore[method-assign]
    answers: list[str] = []

    def deliver() -> None:
        gate.wait()
        try:
            answers.append(Intake(h.deps).handle_event(event).action)
        except TemporaryError:
            answers.append("redeliver")  # the function raises: Event Grid delivers it again

    twins = [threading.Thread(target=deliver) for _ in range(2)]
    for t in twins:
        t.start()
    for t in twins:
        t.join(30)
    assert sorted(answers) == ["redeliver", "started"]
    assert h.compute.arm_calls == []  # the maintenance run was never cancelled
    (run,) = h.store.list_runs()
    assert run.state == RunState.PLANNED and h.store.active_run("test") == run.id
    # The redelivery finds the outcome its twin recorded.
    assert Intake(h.deps).handle_event(event).action == "duplicate"
    assert len(h.store.list_runs()) == 1
