"""Work items on the Azure Storage queue: their shape, parsing, and sending with a delay.

A work item names a node of a run and the step sequence number it was sent for; the
node's record decides what the step is. Messages are base64 text, the Functions host's
default ``messageEncoding``, so messages put there by portal tools decode the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from shared.errors import ValidationError
from shared.validation import MAX_MESSAGE_BYTES, format_problem, parse_json

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
WORK_QUEUE = "node-work"  # the queue trigger binds this exact name
MAX_VISIBILITY_DELAY = 7 * 24 * 3600 - 1  # Azure queues refuse a longer invisibility


def message_json(body: str | bytes, *, what: str) -> Any:
    """A queue message's body as JSON; a ValidationError saying ``what`` is not JSON
    otherwise (the trigger dead-letters it: retrying cannot mend it)."""
    return parse_json(body, what=what, max_bytes=MAX_MESSAGE_BYTES)


@dataclass(frozen=True)
class WorkItem:
    """``kind`` "step": move ``node`` of ``run`` one step, if the record is still at ``seq``.
    ``kind`` "admit": start as many pending nodes of ``run`` as the budgets allow.
    ``kind`` "image": look again at gallery image version ``ref`` (still replicating)."""

    kind: str
    run: str
    node: str = ""
    seq: int = 0
    ref: str = ""  # kind "image": the gallery image version to re-check
    # When the sender meant it to run (epoch seconds; 0: not said). An item that arrives
    # well after it shows the workers are behind (see ``Workflow.step``).
    due: float = 0.0

    def to_json(self) -> str:
        body: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": self.kind, "run": self.run}
        if self.kind == "step":
            body.update(node=self.node, seq=self.seq)
            if self.due:
                body["due"] = round(self.due, 3)
        if self.kind == "image":
            body.update(ref=self.ref, seq=self.seq)
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def parse(cls, body: str | bytes) -> WorkItem:
        data = message_json(body, what="work item")
        if not isinstance(data, dict):
            raise ValidationError("work item must be a JSON object")
        if data.get("v") != SCHEMA_VERSION:
            raise ValidationError(f"unsupported work item version {data.get('v')!r}")
        kind, run = data.get("kind"), data.get("run")
        if kind == "image":
            ref = data.get("ref")
            if not isinstance(ref, str) or "/versions/" not in ref:
                raise ValidationError("image work item has no image version id")
            attempt = data.get("seq", 0)
            if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
                raise ValidationError("image work item has no valid seq")
            return cls(kind="image", run="", ref=ref, seq=attempt)
        if not isinstance(run, str) or not run:
            raise ValidationError("work item has no run id")
        if problem := format_problem("run", run):
            raise ValidationError(f"work item: {problem}")
        if kind == "admit":
            return cls(kind="admit", run=run)
        if kind == "step":
            node, seq = data.get("node"), data.get("seq")
            if not isinstance(node, str) or not node:
                raise ValidationError("step work item has no node")
            if problem := format_problem("node", node):
                raise ValidationError(f"step work item: {problem}")
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise ValidationError("step work item has no valid seq")
            due = data.get("due", 0.0)
            if not isinstance(due, int | float) or isinstance(due, bool) or due < 0:
                raise ValidationError("step work item has no valid due time")
            return cls(kind="step", run=run, node=node, seq=seq, due=float(due))
        raise ValidationError(f"unknown work item kind {kind!r}")


class WorkQueue(Protocol):
    def send(self, item: WorkItem, *, delay: float = 0.0) -> None: ...

    def dead_letter(self, body: str, *, reason: str) -> None: ...


class StorageWorkQueue:
    """The real queue (Azure Storage / Azurite)."""

    def __init__(self, queue: Any, poison: Any) -> None:
        self._queue = queue
        self._poison = poison

    @classmethod
    def from_settings(cls, settings: Any) -> StorageWorkQueue:
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        from shared.settings import storage_options

        def client(name: str) -> Any:
            kwargs: dict[str, Any] = {
                "message_encode_policy": TextBase64EncodePolicy(),
                "message_decode_policy": TextBase64DecodePolicy(),
                **storage_options(settings),
            }
            if settings.storage_connection_string:
                return QueueClient.from_connection_string(settings.storage_connection_string, name, **kwargs)
            from shared.settings import azure_credential

            return QueueClient(settings.queue_service_uri, name, credential=azure_credential(), **kwargs)

        return cls(client(WORK_QUEUE), client(f"{WORK_QUEUE}-poison"))

    def send(self, item: WorkItem, *, delay: float = 0.0) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        # Visibility is whole seconds; rounding up never wakes a step too early.
        visibility = min(MAX_VISIBILITY_DELAY, max(0, math.ceil(delay)))
        if item.kind == "step":
            item = replace(item, due=time.time() + max(0.0, delay))
        try:
            self._queue.send_message(item.to_json(), visibility_timeout=visibility or None)
        except ResourceNotFoundError:
            self._queue.create_queue()
            self._queue.send_message(item.to_json(), visibility_timeout=visibility or None)

    def dead_letter(self, body: str, *, reason: str) -> None:
        send_dead_letter(self._poison, body, reason=reason)


def send_dead_letter(poison: Any, body: str, *, reason: str) -> None:
    """Put a message no retry can fix on ``poison`` (a QueueClient) with why, in the
    envelope every queue of the app uses (``{"reason", "body"}``), creating the queue on
    first use."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    envelope = json.dumps({"reason": reason, "body": body})
    try:
        poison.send_message(envelope)
    except ResourceNotFoundError:
        with contextlib.suppress(ResourceExistsError):
            poison.create_queue()
        poison.send_message(envelope)


class MemoryWorkQueue:
    """For unit tests: remembers what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[WorkItem, float]] = []
        self.dead: list[tuple[str, str]] = []

    def send(self, item: WorkItem, *, delay: float = 0.0) -> None:
        self.sent.append((item, delay))

    def dead_letter(self, body: str, *, reason: str) -> None:
        self.dead.append((body, reason))

    def take(self) -> list[tuple[WorkItem, float]]:
        out, self.sent = self.sent, []
        return out
