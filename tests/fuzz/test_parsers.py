"""Property-based fuzzing of every payload parser the app's entry points use: whatever the
bytes, a parser answers a value or its one clear error (``ValidationError``), never any
other exception. Counts the inputs it tried and prints them at the end."""

from __future__ import annotations

import contextlib
import json
import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.adapters.workqueue import WorkItem
from shared.errors import ConfigError, ValidationError
from shared.gitops.github import PushEvent
from shared.gitops.service import SyncMessage
from shared.log_hygiene import escape_control_characters
from shared.rollout.requests import NodeActionRequest, StartRequest
from shared.triggers.events import EventEnvelope, MaintenanceEvent, ResourceWriteEvent
from shared.validation import FORMATS, MAX_REQUEST_BYTES, format_problem, label_term_ok, parse_json

EXAMPLES = int(os.environ.get("PATCHER_FUZZ_EXAMPLES", "12500"))
TRIED: Counter[str] = Counter()

# JSON values, nested, with the keys the parsers look for mixed into random ones.
KEYS = st.sampled_from(
    [
        "cluster",
        "pools",
        "nodes",
        "reason",
        "dryRun",
        "notBefore",
        "immediate",
        "requestedBy",
        "v",
        "kind",
        "run",
        "node",
        "seq",
        "ref",
        "delivery",
        "ref",
        "before",
        "after",
        "created",
        "deleted",
        "forced",
        "commits",
        "head_commit",
        "repository",
        "url",
        "clone_url",
        "ssh_url",
        "added",
        "modified",
        "removed",
        "id",
        "maintenanceConfigurationId",
        "correlationId",
        "startDateTime",
        "endDateTime",
        "cancellationCutOffDateTime",
        "resourceUri",
        "operationName",
        "status",
    ]
) | st.text(max_size=12)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=8),
    max_leaves=30,
)
RAW = st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200))


class _Event:
    """What the Functions worker hands the Event Grid trigger."""

    def __init__(self, data: Any, event_id: Any, event_type: Any) -> None:
        self.id, self.event_type, self._data = event_id, event_type, data
        self.topic, self.subject = "/subscriptions/x", "s"

    def get_json(self) -> Any:
        if isinstance(self._data, bytes):
            return json.loads(self._data)
        return self._data


def _events(data: Any, event_id: Any, event_type: Any) -> None:
    envelope = EventEnvelope.from_trigger(_Event(data, event_id, event_type))
    for view in (MaintenanceEvent, ResourceWriteEvent):
        with contextlib.suppress(ValidationError):
            view.from_envelope(envelope)


PARSERS: dict[str, tuple[st.SearchStrategy[Any], Callable[..., Any]]] = {
    "work item": (RAW, WorkItem.parse),
    "gitops sync message": (RAW, SyncMessage.parse),
    "GitHub push": (JSON, PushEvent.from_json),
    "POST /api/runs": (JSON, StartRequest.from_json),
    "node action": (JSON, lambda body: NodeActionRequest.from_json(body, principal=None)),
}


def _request_body(raw: bytes) -> None:
    parse_json(raw, what="request body", max_bytes=MAX_REQUEST_BYTES)


def _identifier(text: str) -> None:
    """Every identifier check answers a reason or accepts, and what it accepts can be a
    Table key, a selector term's value and one log line."""
    for kind in FORMATS:
        if not format_problem(kind, text):
            assert not any(c in text for c in "/\\#?,=!\n\r\x00") and text.isprintable(), (kind, text)
    label_term_ok(text, text)


PARSERS["request body"] = (RAW, _request_body)
PARSERS["identifiers"] = (st.text(max_size=80), _identifier)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_a_parser_answers_a_value_or_a_validation_error(name: str) -> None:
    strategy, parse = PARSERS[name]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(strategy)
    def run(value: Any) -> None:
        TRIED[name] += 1
        with contextlib.suppress(ValidationError):
            parse(value)

    run()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    data=st.one_of(JSON, RAW),
    event_id=st.one_of(st.none(), st.text(max_size=20)),
    event_type=st.one_of(
        st.none(),
        st.text(max_size=60),
        st.sampled_from(
            [
                "Microsoft.Maintenance.PreMaintenanceEvent",
                "Microsoft.Maintenance.PostMaintenanceEvent",
                "Microsoft.Resources.ResourceWriteSuccess",
            ]
        ),
    ),
)
def test_an_event_grid_event_parses_or_is_a_validation_error(
    data: Any, event_id: Any, event_type: Any
) -> None:
    TRIED["Event Grid envelope"] += 1
    with contextlib.suppress(ValidationError):
        _events(data, event_id, event_type)


@settings(max_examples=EXAMPLES // 5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.dictionaries(KEYS, JSON, max_size=6))
def test_a_configuration_loads_or_is_a_config_error(data: dict[str, Any]) -> None:
    from shared.config import parse_config

    TRIED["configuration"] += 1
    with contextlib.suppress(ConfigError):
        parse_config(data)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.text(max_size=80))
def test_an_escaped_log_text_holds_no_control_character(text: str) -> None:
    TRIED["log escaping"] += 1
    escaped = escape_control_characters(text)
    assert not [c for c in escaped if unicodedata.category(c) == "Cc" or c in "\u2028\u2029"], repr(escaped)


@pytest.fixture(scope="session", autouse=True)
def report() -> Iterator[None]:
    yield
    total = sum(TRIED.values())
    lines = "\n".join(f"  {name}: {count}" for name, count in sorted(TRIED.items()))
    print(f"\nfuzz: {total} inputs tried, 0 unhandled exceptions (a failure above would name one)\n{lines}")
