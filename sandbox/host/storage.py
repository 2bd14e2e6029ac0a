"""The host's storage clients: queues and blobs of one connection string."""

from __future__ import annotations

import contextlib
import threading
from typing import Any


class _Storage:
    """Queue and blob clients for one connection string, with pools sized for a busy host."""

    def __init__(self, connection_string: str) -> None:
        import requests
        from azure.core.pipeline.transport import RequestsTransport
        from azure.storage.blob import BlobServiceClient
        from azure.storage.queue import QueueServiceClient

        self.connection_string = connection_string
        self._sessions: list[requests.Session] = []

        def transport() -> RequestsTransport:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._sessions.append(session)
            return RequestsTransport(session=session, session_owner=False)

        # Few, quick retries: the host's own polling loop is the retry mechanism, and a
        # long SDK retry would delay shutdown when storage goes away first.
        common: dict[str, Any] = {
            "retry_total": 2,
            "retry_backoff_factor": 0.2,
            "connection_timeout": 5,
            "read_timeout": 30,
        }
        self.queues = QueueServiceClient.from_connection_string(
            connection_string, transport=transport(), **common
        )
        self.blobs = BlobServiceClient.from_connection_string(
            connection_string, transport=transport(), **common
        )
        self._created: set[str] = set()
        self._lock = threading.Lock()

    def send(self, queue_name: str, content: str) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        client = self.queues.get_queue_client(queue_name)
        try:
            client.send_message(content)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            client.send_message(content)

    def close(self) -> None:
        for session in self._sessions:
            session.close()
