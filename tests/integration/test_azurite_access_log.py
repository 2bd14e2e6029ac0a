"""Azurite's access log counts every Storage request the real SDKs make, by service: the
benchmark's Storage transactions per node come from it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from sandbox.azurite import Azurite, AzuriteError

pytestmark = pytest.mark.integration


def test_each_sdk_request_is_one_logged_transaction_of_its_service(tmp_path: Path) -> None:
    with Azurite(tmp_path / "azurite", access_log=True) as azurite:
        conn = azurite.connection_string
        before = azurite.log_offset()
        queue = QueueClient.from_connection_string(conn, "work")
        queue.create_queue()  # 1 queue
        queue.send_message("a")  # 2
        queue.send_message("b")  # 3
        for _ in range(2):
            message = queue.receive_message()  # 4, 6
            assert message is not None
            queue.delete_message(message)  # 5, 7
        tables = TableServiceClient.from_connection_string(conn)
        table = tables.create_table_if_not_exists("runs")  # 1 table
        table.create_entity({"PartitionKey": "r", "RowKey": "1", "state": "planned"})  # 2
        table.update_entity({"PartitionKey": "r", "RowKey": "1", "state": "running"})  # 3
        assert len(list(table.query_entities("PartitionKey eq 'r'"))) == 1  # 4
        blobs = BlobServiceClient.from_connection_string(conn)
        container = blobs.create_container("config")  # 1 blob
        container.upload_blob("patcher.yaml", b"clusters: []\n")  # 2
        assert container.download_blob("patcher.yaml").readall() == b"clusters: []\n"  # 3
        mid = azurite.log_offset()
        queue.send_message("c")
        after = azurite.log_offset()

        counted = Counter(r.service for r in azurite.storage_requests(since=before, until=mid))
        assert counted == {"queue": 7, "table": 4, "blob": 3}
        last = azurite.storage_requests(since=mid, until=after)
        assert [(r.method, r.service, r.status) for r in last] == [("POST", "queue", 201)]


def test_asking_for_requests_without_the_log_is_an_error(tmp_path: Path) -> None:
    with Azurite(tmp_path / "azurite") as azurite, pytest.raises(AzuriteError, match="access_log=True"):
        azurite.storage_requests()
