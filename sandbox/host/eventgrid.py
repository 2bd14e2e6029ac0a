"""The Event Grid trigger: the webhook's ``aeg-event-type`` protocol and the event binding."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import azure.functions as func

from sandbox.host.bindings import HttpResult, _json_response

if TYPE_CHECKING:
    from sandbox.host.runner import FunctionsRunner


def _parse_event_time(value: Any) -> datetime | None:
    from azure.functions.eventgrid import EventGridEventInConverter

    return EventGridEventInConverter._parse_datetime(value) if value is not None else None


def _event_grid_binding(event: dict[str, Any], *, isolate_dependencies: bool) -> Any:
    if isolate_dependencies:
        # The app's own azure-functions library decodes the event, as in Azure with
        # PYTHON_ISOLATE_WORKER_DEPENDENCIES=1.
        from azure.functions import meta
        from azure.functions.eventgrid import EventGridEventInConverter

        return EventGridEventInConverter.decode(meta.Datum(json.dumps(event), "json"), trigger_metadata=None)
    # The worker's bundled library reads Event Grid field names only, so CloudEvents
    # arrive with topic/event_type/event_time/data_version set to None.
    return func.EventGridEvent(
        id=event.get("id"),  # type: ignore[arg-type]
        data=event.get("data"),  # type: ignore[arg-type]
        topic=event.get("topic"),  # type: ignore[arg-type]
        subject=event.get("subject"),  # type: ignore[arg-type]
        event_type=event.get("eventType"),  # type: ignore[arg-type]
        event_time=_parse_event_time(event.get("eventTime")),
        data_version=event.get("dataVersion"),  # type: ignore[arg-type]
    )


def eventgrid_webhook(
    runner: FunctionsRunner, method: str, query: str, headers: Any, body: bytes
) -> HttpResult:
    """``/runtime/webhooks/eventgrid?functionName=NAME``: the handshakes, and a notification
    run as one concurrent invocation per event (500 if any fails, so Event Grid redelivers)."""
    if method == "OPTIONS":
        # CloudEvents abuse-protection handshake.
        origin = headers.get("WebHook-Request-Origin")
        return 200, ([("WebHook-Allowed-Origin", origin)] if origin else []), b""
    if method != "POST":
        return 405, [], b""
    wanted = dict(parse_qsl(query)).get("functionName", "")
    fn = next(
        (
            f
            for f in runner.functions
            if f.trigger_type == "eventGridTrigger" and f.name.lower() == wanted.lower()
        ),
        None,
    )
    if fn is None:
        return 404, [], b""
    kind = (headers.get("aeg-event-type") or "").strip().lower()
    if kind not in ("subscriptionvalidation", "notification", "unsubscribe"):
        return 400, [], b""
    if kind == "unsubscribe":
        return 202, [], b""
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        return 400, [], b""
    events = payload if isinstance(payload, list) else [payload]
    if not all(isinstance(e, dict) for e in events):
        return 400, [], b""
    if kind == "subscriptionvalidation":
        code = ((events[0] if events else {}).get("data") or {}).get("validationCode")
        if code is None:
            return 400, [], b""
        return _json_response(200, {"validationResponse": code})
    isolate = runner._isolate_dependencies()
    assert runner._dispatch_pool
    futures = [
        runner._dispatch_pool.submit(runner._invoke, fn, _event_grid_binding(e, isolate_dependencies=isolate))
        for e in events
    ]
    ok = all(f.result().ok for f in futures)
    return (202, [], b"") if ok else (500, [], b"")
