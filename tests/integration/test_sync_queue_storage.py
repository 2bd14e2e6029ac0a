"""The gitops-sync queue against Azurite: a message no retry can fix is dead-lettered to
``gitops-sync-poison`` (created on first use) with its reason and its text, where the host
puts the ones that failed every delivery."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from azure.storage.queue import QueueClient

from sandbox.azurite import Azurite
from shared.gitops.service import StorageSyncQueue

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with Azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


def test_a_malformed_sync_message_is_dead_lettered_with_its_reason(azurite: Azurite) -> None:
    queue = StorageSyncQueue.from_settings(
        SimpleNamespace(storage_connection_string=azurite.connection_string)
    )
    body = '{"v": 1, "delivery": "d-1", "cluster": "a,b!=c"}'
    queue.dead_letter(body, reason="gitops sync message: cluster 'a,b!=c' is not lower-case letters")
    poison = QueueClient.from_connection_string(azurite.connection_string, "gitops-sync-poison")
    (message,) = list(poison.receive_messages(max_messages=32))
    # Base64 text, the host's default encoding, like every message of the app's queues.
    envelope = json.loads(base64.b64decode(message.content))
    assert envelope == {
        "reason": "gitops sync message: cluster 'a,b!=c' is not lower-case letters",
        "body": body,
    }
