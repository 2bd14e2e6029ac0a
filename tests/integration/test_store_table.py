"""The Azure Table backend keeps the store contract against Azurite, with the filters
evaluated by the service, and upgrades rows written before they had query columns."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from azure.data.tables import TableClient, TableServiceClient

from sandbox.azurite import Azurite
from shared.rollout.model import NodeState
from shared.rollout.store.base import NODE_PREFIX
from shared.rollout.store.table import TableRunStore
from tests.store_contract import StoreContract, make_run, move

pytestmark = pytest.mark.integration

_tables = itertools.count()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TableServiceClient]:
    with Azurite(tmp_path_factory.mktemp("azurite")) as azurite:
        yield TableServiceClient.from_connection_string(azurite.connection_string)


@pytest.fixture
def table(service: TableServiceClient) -> TableClient:
    name = f"runs{next(_tables)}"
    service.create_table_if_not_exists(name)
    return service.get_table_client(name)


class TestTableStore(StoreContract):
    @pytest.fixture
    def store(self, table: TableClient) -> TableRunStore:
        return TableRunStore(table)


def test_node_rows_carry_their_columns_and_pacer_rows_keys_are_valid(table: TableClient) -> None:
    store = TableRunStore(table)
    make_run(store, nodes=2)
    move(store, "run1", "node-002", NodeState.ADMITTED)
    entity = table.get_entity("run1", f"{NODE_PREFIX}node-002")
    assert (entity["state"], entity["pool"], entity["order"]) == ("admitted", "a", 0)
    store.commit(store.get_pacer("run1", "/subscriptions/s/resourceGroups/rg/x/virtualMachineScaleSets/v"))
    rows = [e["RowKey"] for e in table.query_entities("PartitionKey eq 'run1'")]
    pacer = [r for r in rows if r.startswith("pacer~")]
    assert len(pacer) == 1 and "/" not in pacer[0]


def test_a_row_written_before_the_batch_column_lists_no_batch(table: TableClient) -> None:
    from azure.data.tables import UpdateMode

    store = TableRunStore(table)
    make_run(store, nodes=2)
    entity = table.get_entity("run1", f"{NODE_PREFIX}node-002")
    assert entity["reimage_batch"] == ""
    old = {k: v for k, v in entity.items() if k != "reimage_batch"}
    table.update_entity(old, mode=UpdateMode.REPLACE)  # as the previous version wrote it
    assert "reimage_batch" not in table.get_entity("run1", f"{NODE_PREFIX}node-002")
    summaries = {s.name: s for s in store.node_summaries("run1")}
    assert summaries["node-002"].reimage_batch == "" and summaries["node-002"].state == NodeState.PENDING


def test_the_filter_is_evaluated_by_the_service(table: TableClient) -> None:
    seen: list[dict[str, Any]] = []
    original = table.query_entities

    def spy(query_filter: str, **kwargs: Any) -> Any:
        seen.append({"filter": query_filter, **kwargs})
        return original(query_filter, **kwargs)

    table.query_entities = spy  # type: ignore[method-assign]
    store = TableRunStore(table)
    make_run(store, nodes=3)
    seen.clear()
    assert len(store.pending_nodes("run1")) == 3
    query = seen[-1]
    assert "state eq @s0" in query["filter"] and query["parameters"]["s0"] == "pending"
    assert query["select"] == ["RowKey", "state", "pool", "order", "reimage_batch", "pdb_pods"]
    seen.clear()
    assert store.has_nodes("run1", states=[NodeState.PENDING])
    assert seen[-1]["results_per_page"] == 1


def test_rows_written_before_the_columns_existed_are_given_them(table: TableClient) -> None:
    store = TableRunStore(table)
    make_run(store, nodes=4)
    # As the previous version wrote them: the JSON only.
    for entity in table.query_entities("PartitionKey eq 'run1'"):
        if entity["RowKey"].startswith(NODE_PREFIX):
            legacy = {k: entity[k] for k in ("PartitionKey", "RowKey", "data0")}
            table.upsert_entity(legacy, mode="replace")
    assert table.get_entity("run1", f"{NODE_PREFIX}node-001").get("state") is None
    fresh = TableRunStore(table)
    assert [n.name for n in fresh.pending_nodes("run1")] == ["node-004", "node-003", "node-002", "node-001"]
    entity = table.get_entity("run1", f"{NODE_PREFIX}node-001")
    assert entity["state"] == "pending"
    assert json.loads(entity["data0"])["name"] == "node-001"


@pytest.mark.parametrize("run_id", ["../../x", "a\\b", "a#b", "q?x=1", "bell\x07", "x" * 2000])
def test_a_run_id_table_storage_cannot_hold_is_simply_not_found(table: TableClient, run_id: str) -> None:
    from shared.errors import NotFoundError

    store = TableRunStore(table)
    with pytest.raises(NotFoundError, match="not found"):
        store.get_run(run_id)
    with pytest.raises(NotFoundError, match="not part of run"):
        store.get_node("0123456789abcdef", run_id)
