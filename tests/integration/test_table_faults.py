"""Table storage faults on the real HTTP path (sandbox/tableproxy.py in front of Azurite,
the real azure-data-tables client and its retry policy): a 503 on one write, and an
answer lost after a successful create. Each ends with the run closed and the cluster
free; first through the store alone, then in a rollout of the whole app."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient

from sandbox.azurite import ACCOUNT_NAME, Azurite
from sandbox.cluster import PoolSpec
from sandbox.stack import CLUSTER, Sandbox, SandboxOptions
from sandbox.tableproxy import TableFaultProxy
from shared.errors import TemporaryError
from shared.rollout.model import RunState
from shared.rollout.store.table import TableRunStore
from tests.integration.sandbox_helpers import Driver
from tests.store_contract import make_run

pytestmark = pytest.mark.integration

# The requests that matter, as the proxy sees them ("METHOD /account/table...", body).
CLAIM = (r"^POST /[^/]+/patchruns\w*$", r'"PartitionKey":\s*"cluster~')
RUN_CREATE = (r"^POST /[^/]+/patchruns\w*$", r'"RowKey":\s*"run"')
# The run record's update that ends the run: its data (JSON in a string) says so.
RUN_CLOSE = (
    r"^PUT /[^/]+/patchruns\w*\(PartitionKey='[^']+',RowKey='run'\)$",
    r'\\"state\\": \\"succeeded\\"',
)

_tables = itertools.count()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TableFaultProxy, TableServiceClient]]:
    with Azurite(tmp_path_factory.mktemp("azurite")) as azurite:
        proxy = TableFaultProxy(azurite.host, azurite.table_port)
        proxy.start()
        try:
            endpoint = proxy.endpoint(ACCOUNT_NAME)
            yield (
                proxy,
                TableServiceClient.from_connection_string(
                    azurite.connection_string_with(table_endpoint=endpoint)
                ),
            )
        finally:
            proxy.stop()


@pytest.fixture
def store(proxied: tuple[TableFaultProxy, TableServiceClient]) -> Iterator[TableRunStore]:
    proxy, service = proxied
    name = f"patchruns{next(_tables)}"
    service.create_table_if_not_exists(name)
    yield TableRunStore(service.get_table_client(name))
    proxy.faults.clear()


def faults_met(proxy: TableFaultProxy, since: int) -> list[tuple[str, int, str]]:
    return [(e["method"], e["status"], e["fault"]) for e in proxy.request_log[since:] if e["fault"]]


def test_a_503_on_one_write_outlasts_the_sdks_retries_and_only_that_write(
    proxied: tuple[TableFaultProxy, TableServiceClient], store: TableRunStore
) -> None:
    proxy, _ = proxied
    run = make_run(store, nodes=1)
    run.reason = "changed"
    proxy.faults.fail_write(r"^PUT .*RowKey='run'\)$")
    before = len(proxy.request_log)
    with pytest.raises(TemporaryError, match="503"):
        store.commit(run)
    assert faults_met(proxy, before) == [("PUT", 503, "failed")] * 4  # the SDK's try and 3 retries
    assert store.get_run("run1").reason == "test"
    store.commit(store.get_run("run1"))  # another write passes


def test_a_claim_whose_answer_was_lost_is_ours_when_the_sdk_retries_into_a_409(
    proxied: tuple[TableFaultProxy, TableServiceClient], store: TableRunStore
) -> None:
    proxy, _ = proxied
    proxy.faults.lose_answer(CLAIM[0], body=CLAIM[1])
    before = len(proxy.request_log)
    assert store.claim_cluster("c1", "run1") is None
    log = [(e["method"], e["status"], e["fault"]) for e in proxy.request_log[before:]]
    assert log[:2] == [("POST", 201, "answer lost"), ("POST", 409, "")]
    assert store.active_run("c1") == "run1"
    assert store.claim_cluster("c1", "run2") == "run1"  # and nobody else's


def test_a_claim_answered_by_a_closed_connection_is_found_ours_on_a_second_look(
    proxied: tuple[TableFaultProxy, TableServiceClient], store: TableRunStore
) -> None:
    proxy, _ = proxied
    proxy.faults.lose_answer(CLAIM[0], body=CLAIM[1], reply=None)
    with pytest.raises(TemporaryError, match="did not answer"):
        store.claim_cluster("c1", "run1")
    assert store.claim_cluster("c1", "run1") is None
    assert store.active_run("c1") == "run1"


def test_a_run_record_whose_answer_was_lost_is_taken_as_created(
    proxied: tuple[TableFaultProxy, TableServiceClient], store: TableRunStore
) -> None:
    proxy, _ = proxied
    proxy.faults.lose_answer(RUN_CREATE[0], body=RUN_CREATE[1])
    before = len(proxy.request_log)
    run = make_run(store, nodes=2)
    assert faults_met(proxy, before) == [("POST", 201, "answer lost")]
    assert run.etag and store.get_run("run1").etag == run.etag


# ---- a rollout through the whole app, with both faults ------------------------------------------


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A small sandbox of its own whose app reaches its tables through the fault proxy."""
    sb = Sandbox(
        SandboxOptions(
            state_dir=Path(tmp_path_factory.mktemp("faulty")),
            pools=PoolSpec.parse_list("gamma:linux:3"),
            runners=2,
            time_scale=0.01,
            max_unavailable=1,
            max_concurrent_nodes=1,
            table_faults=True,
        )
    )
    sb.start()
    yield sb
    sb.stop()


def wait_until_free(sandbox: Sandbox, *, timeout: float = 30.0) -> TableRunStore:
    store = TableRunStore(
        TableServiceClient.from_connection_string(sandbox.storage_connection_string).get_table_client(
            "patchruns"
        )
    )
    deadline = time.monotonic() + timeout
    while store.active_run(CLUSTER) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert store.active_run(CLUSTER) is None
    return store


def closed_by_the_sweeper(sandbox: Sandbox, run_id: str) -> bool:
    logs = "".join(p.read_text(errors="replace") for p in sandbox.state_dir.glob("runner-*.log"))
    return f"run {run_id} had every node ended but was still open; closed" in logs


def test_a_rollout_whose_closing_write_met_a_503_is_closed_by_the_sweeper(faulty: Sandbox) -> None:
    proxy = faulty.table_proxy
    assert proxy is not None
    driver = Driver(faulty)
    driver.new_image()
    proxy.faults.fail_write(RUN_CLOSE[0], body=RUN_CLOSE[1])
    run = driver.wait(driver.start(), timeout=120)
    assert run["state"] == "succeeded", driver.explain(run)
    assert proxy.faults.pending() == 0
    wait_until_free(faulty)
    assert closed_by_the_sweeper(faulty, run["id"])


def test_a_rollout_meeting_both_table_faults_ends_with_the_run_closed_and_the_cluster_free(
    faulty: Sandbox,
) -> None:
    proxy = faulty.table_proxy
    assert proxy is not None
    driver = Driver(faulty)
    driver.new_image()
    before = len(proxy.request_log)
    proxy.faults.lose_answer(CLAIM[0], body=CLAIM[1])  # the SDK retries the claim: 409 for itself
    proxy.faults.fail_write(RUN_CLOSE[0], body=RUN_CLOSE[1])  # 503 on the admission that ends it
    run = driver.wait(driver.start(), timeout=240)
    assert run["state"] == "succeeded", driver.explain(run)
    assert {n["state"] for n in run["nodes"]} == {"succeeded"}
    assert proxy.faults.pending() == 0
    met = {(method, fault) for method, _, fault in faults_met(proxy, before)}
    assert met == {("POST", "answer lost"), ("PUT", "failed")}
    store = wait_until_free(faulty)
    assert store.get_run(run["id"]).state == RunState.SUCCEEDED
    assert closed_by_the_sweeper(faulty, run["id"])
