"""The storage work queue against Azurite: delays become whole-second visibility, and a
step item says when it was due, so a worker can tell it arrived behind a backlog."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from sandbox.azurite import Azurite
from shared.adapters.workqueue import StorageWorkQueue, WorkItem

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageWorkQueue]:
    with Azurite(tmp_path_factory.mktemp("azurite")) as azurite:
        yield StorageWorkQueue.from_settings(
            SimpleNamespace(storage_connection_string=azurite.connection_string)
        )


def test_a_delayed_step_item_becomes_visible_whole_seconds_later_and_says_when_it_was_due(
    queue: StorageWorkQueue,
) -> None:
    sent_at = time.time()
    queue.send(WorkItem("step", "run1", "node-a", 4), delay=0.4)
    queue.send(WorkItem("admit", "run1"))
    client = queue._queue
    first = [WorkItem.parse(m.content) for m in client.receive_messages(max_messages=32)]
    assert [i.kind for i in first] == ["admit"]  # the step is invisible for a whole second
    assert first[0].due == 0.0
    time.sleep(1.2)
    (msg,) = list(client.receive_messages(max_messages=32))
    item = WorkItem.parse(msg.content)
    assert (item.kind, item.node, item.seq) == ("step", "node-a", 4)
    assert item.due == pytest.approx(sent_at + 0.4, abs=0.3)
