"""The sweeper over Azure Table storage (Azurite): what one sweep asks the service does
not grow with the number of ended runs, and retention deletes through the same table."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sandbox.azurite import Azurite
from shared.rollout.model import RunState
from shared.rollout.store.table import TableRunStore
from shared.rollout.sweeper import sweep
from tests.harness import Harness
from tests.store_contract import make_timed_run

pytestmark = pytest.mark.integration

DAY = 86_400.0
_tables = itertools.count()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with Azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


class Requests:
    """Every HTTP request the Table client sends (azure-core's raw_request_hook)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, request: Any) -> None:
        self.sent.append(f"{request.http_request.method} {request.http_request.url}")


def harness_over_table(azurite: Azurite, requests: Requests) -> Harness:
    service = TableServiceClient.from_connection_string(azurite.connection_string, raw_request_hook=requests)
    name = f"sweep{next(_tables)}"
    service.create_table_if_not_exists(name)
    return Harness(
        {"a": 1},
        nodes_per_pool=2,
        store=TableRunStore(service.get_table_client(name)),
        extra_config={"retention": "720h"},
    )


def requests_of_a_settled_sweep(azurite: Azurite, ended: int) -> list[str]:
    requests = Requests()
    h = harness_over_table(azurite, requests)
    for i in range(ended):
        make_timed_run(h.store, h.clock.now() - DAY + i, cluster="test", state=RunState.SUCCEEDED, nodes=3)
    h.start()
    sweep(h.deps)  # the first one settles the ended runs
    requests.sent.clear()
    report = sweep(h.deps)
    assert report.runs_checked == 1
    return requests.sent


def test_a_sweep_asks_the_same_whether_5_or_40_runs_have_ended(azurite: Azurite) -> None:
    few = requests_of_a_settled_sweep(azurite, 5)
    many = requests_of_a_settled_sweep(azurite, 40)
    assert len(many) == len(few), (few, many)
    assert len(many) <= 15, many


def test_retention_deletes_old_runs_through_the_table(azurite: Azurite) -> None:
    h = harness_over_table(azurite, Requests())
    old = make_timed_run(h.store, h.clock.now() - 40 * DAY, cluster="test", state=RunState.FAILED, nodes=120)
    recent = make_timed_run(h.store, h.clock.now() - 2 * DAY, cluster="test", state=RunState.FAILED)
    assert sweep(h.deps).deleted == [old.id]
    assert h.store.list_nodes(old.id) == []
    assert [r.id for r in h.store.list_runs_page(limit=10).runs] == [recent.id]
