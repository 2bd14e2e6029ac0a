"""Event Grid push delivery to the local Functions runner, as Event Grid does it.

Why it exists: the app's Event Grid trigger is reached at
``/runtime/webhooks/eventgrid?functionName=NAME`` of the Functions host. In Azure, Event
Grid posts there; in the sandbox, :class:`EventGridPublisher` does, with the same
protocol, so the runner (:mod:`sandbox.host`) and the app see what they would see in
Azure. The builders below make events shaped like the documented system events the app
subscribes to (the samples in ``shared/payloads``).

Delivery protocol (sources: azure-docs ``event-grid/webhook-event-delivery.md``,
``event-grid/includes/message-headers.md``, ``event-grid/cloud-event-schema.md``):

* Every request is a POST with ``aeg-event-type`` (``Notification``,
  ``SubscriptionValidation``), ``aeg-subscription-name`` (the subscription name, upper
  case), ``aeg-delivery-count`` (0 on the first attempt), ``aeg-metadata-version`` (the
  Event Grid schema's metadata version, or the CloudEvents ``specversion``),
  ``aeg-data-version`` (Event Grid schema only) and ``aeg-output-event-id``.
* Event Grid schema: the body is a JSON **array** (one event per request unless the
  subscription batches), ``Content-Type: application/json; charset=utf-8``.
* CloudEvents 1.0 schema: structured content mode, one event per request as a JSON
  **object**, ``Content-Type: application/cloudevents+json; charset=utf-8``; a batch is an
  array with ``application/cloudevents-batch+json; charset=utf-8``.
* Validation: Event Grid schema subscriptions POST a ``SubscriptionValidationEvent`` and
  expect 200 ``{"validationResponse": code}``; CloudEvents subscriptions send an HTTP
  OPTIONS with ``WebHook-Request-Origin`` and expect ``WebHook-Allowed-Origin`` back.

Functions' Event Grid webhook needs ``code=<eventgrid_extension key>`` in Azure; the local
runner does not check keys, so ``code`` is optional here.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from sandbox.arm import CANCELLATION_CUTOFF, IMAGE_VERSION_WRITE

__all__ = [
    "Delivery",
    "EventDeliveryError",
    "EventGridPublisher",
    "image_version_write_event",
    "maintenance_event",
    "subscription_validation_event",
    "to_cloudevent",
]

Schema = Literal["eventgrid", "cloudevents"]

PRE_MAINTENANCE = "Microsoft.Maintenance.PreMaintenanceEvent"
POST_MAINTENANCE = "Microsoft.Maintenance.PostMaintenanceEvent"
RESOURCE_WRITE_SUCCESS = "Microsoft.Resources.ResourceWriteSuccess"
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
_WRITE_STATUS = {
    "Microsoft.Resources.ResourceWriteSuccess": "Succeeded",
    "Microsoft.Resources.ResourceWriteFailure": "Failed",
    "Microsoft.Resources.ResourceWriteCancel": "Canceled",
}
_EVENT_GRID_JSON = "application/json; charset=utf-8"
_CLOUDEVENT_JSON = "application/cloudevents+json; charset=utf-8"
_CLOUDEVENT_BATCH_JSON = "application/cloudevents-batch+json; charset=utf-8"


class EventDeliveryError(RuntimeError):
    """The endpoint refused a validation handshake."""


@dataclass
class Delivery:
    """One HTTP request the publisher made, and its answer (for tests and logs)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    status: int
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""


# --------------------------------------------------------------------------- time formats


def _as_utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _seconds_z(value: datetime | str) -> str:
    """``2023-05-09T15:00:00Z``, as the maintenance events' window fields are written."""
    return _as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_time(value: datetime | None = None) -> str:
    """Event Grid's ``eventTime``: seven fractional digits, ``Z`` (``...14:25:00.3717473Z``)."""
    return _as_utc(value or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


# --------------------------------------------------------------------------- builders


def maintenance_event(
    kind: Literal["pre", "post"],
    config_id: str,
    correlation_id: str,
    start: datetime | str,
    end: datetime | str,
    *,
    cutoff: datetime | str | None = None,
    status: str | None = None,
    subscription_ids: Sequence[str] | None = None,
    pascal_case: bool = False,
    time: datetime | None = None,
) -> dict[str, Any]:
    """An Update Manager ``Pre``/``PostMaintenanceEvent`` in the Event Grid schema.

    As documented (event-schema-maintenance-configuration.md): ``id`` is the run id (the
    same as ``data.correlationId``), ``topic`` the configuration id, ``subject`` the bare
    configuration name. The pre-event carries ``cancellationCutOffDateTime`` (default
    start - 10 minutes), the post-event ``status`` (default ``Succeeded``).
    ``resourceSubscriptionIds`` defaults to the configuration's subscription.
    ``pascal_case`` writes the data keys as the rendered docs page shows them
    (``CorrelationId``...), a variant handlers must accept.
    """
    if kind not in ("pre", "post"):
        raise ValueError(f"kind must be 'pre' or 'post', got {kind!r}")
    config_name = config_id.rstrip("/").rsplit("/", 1)[-1]
    if subscription_ids is None:
        parts = config_id.strip("/").split("/")
        subscription_ids = [parts[1]] if len(parts) > 1 and parts[0].lower() == "subscriptions" else []
    data: dict[str, Any] = {
        "correlationId": correlation_id,
        "maintenanceConfigurationId": config_id,
    }
    if kind == "post":
        data["status"] = status or "Succeeded"
    data["startDateTime"] = _seconds_z(start)
    data["endDateTime"] = _seconds_z(end)
    if kind == "pre":
        data["cancellationCutOffDateTime"] = _seconds_z(
            cutoff if cutoff is not None else _as_utc(start) - CANCELLATION_CUTOFF
        )
        if status is not None:
            data["status"] = status
    data["resourceSubscriptionIds"] = list(subscription_ids)
    if pascal_case:
        data = {k[:1].upper() + k[1:]: v for k, v in data.items()}
    return {
        "id": correlation_id,
        "topic": config_id,
        "subject": config_name,
        "data": data,
        "eventType": PRE_MAINTENANCE if kind == "pre" else POST_MAINTENANCE,
        "eventTime": event_time(time),
        "dataVersion": "1.0",
        "metadataVersion": "1",
    }


def image_version_write_event(
    version_id: str,
    *,
    subscription_id: str,
    tenant_id: str,
    correlation_id: str | None = None,
    operation_name: str = IMAGE_VERSION_WRITE,
    event_type: str = RESOURCE_WRITE_SUCCESS,
    api_version: str = "2026-03-03",
    principal_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """An ARM ``ResourceWrite*`` event for a gallery image version, as the resource-group
    system topic publishes it (event-schema-resource-groups.md; ``dataVersion`` "2")."""
    parts = version_id.strip("/").split("/")
    if len(parts) < 4 or parts[0].lower() != "subscriptions" or parts[2].lower() != "resourcegroups":
        raise ValueError(f"not a resource id: {version_id!r}")
    topic = f"/subscriptions/{subscription_id}/resourceGroups/{parts[3]}"
    principal = principal_id or str(uuid.uuid4())
    return {
        "subject": version_id,
        "eventType": event_type,
        "eventTime": event_time(time),
        "id": str(uuid.uuid4()),
        "data": {
            "authorization": {
                "scope": version_id,
                "action": operation_name,
                "evidence": {
                    "role": "Contributor",
                    "roleAssignmentScope": topic,
                    "roleAssignmentId": uuid.uuid4().hex,
                    "roleDefinitionId": "b24988ac618042a0ab8820f7382dd24c",
                    "principalId": principal.replace("-", ""),
                    "principalType": "ServicePrincipal",
                },
            },
            "claims": {
                "aud": "https://management.core.windows.net/",
                "iss": f"https://sts.windows.net/{tenant_id}/",
                "appid": principal,
                "http://schemas.microsoft.com/identity/claims/objectidentifier": principal,
                "http://schemas.microsoft.com/identity/claims/tenantid": tenant_id,
                "ver": "1.0",
            },
            "correlationId": correlation_id or str(uuid.uuid4()),
            "httpRequest": {
                "clientRequestId": str(uuid.uuid4()),
                "clientIpAddress": "20.50.2.10",
                "method": "PUT",
                "url": f"https://management.azure.com{version_id}?api-version={api_version}",
            },
            "resourceProvider": parts[5] if len(parts) > 5 else "Microsoft.Compute",
            "resourceUri": version_id,
            "operationName": operation_name,
            "status": _WRITE_STATUS.get(event_type, "Succeeded"),
            "subscriptionId": subscription_id,
            "tenantId": tenant_id,
        },
        "dataVersion": "2",
        "metadataVersion": "1",
        "topic": topic,
    }


def subscription_validation_event(code: str | None = None, *, topic: str | None = None) -> dict[str, Any]:
    """The ``SubscriptionValidationEvent`` Event Grid sends when a subscription is created."""
    code = code or str(uuid.uuid4())
    stamp = event_time()
    return {
        "id": str(uuid.uuid4()),
        "topic": topic or f"/subscriptions/{uuid.uuid4()}",
        "subject": "",
        "data": {
            "validationCode": code,
            "validationUrl": "https://rp-westeurope.eventgrid.azure.net:553/eventsubscriptions/"
            f"sandbox/validate?id={code}&t={quote(stamp)}&apiVersion=2018-05-01-preview&token=sandbox",
        },
        "eventType": SUBSCRIPTION_VALIDATION,
        "eventTime": stamp,
        "metadataVersion": "1",
        "dataVersion": "2",
    }


def to_cloudevent(event: Mapping[str, Any]) -> dict[str, Any]:
    """The CloudEvents 1.0 form Event Grid delivers for an Event Grid-schema event.

    ``topic`` becomes ``source``, ``eventType`` ``type``, ``eventTime`` ``time``;
    ``dataVersion`` and ``metadataVersion`` have no equivalent and are dropped.
    """
    if "specversion" in event:
        return dict(event)
    cloud: dict[str, Any] = {
        "id": event["id"],
        "source": event.get("topic"),
        "specversion": "1.0",
        "type": event["eventType"],
    }
    if event.get("subject") is not None:
        cloud["subject"] = event["subject"]
    if event.get("eventTime") is not None:
        cloud["time"] = event["eventTime"]
    if "data" in event:
        cloud["data"] = event["data"]
    return cloud


# --------------------------------------------------------------------------- publisher


class EventGridPublisher:
    """Posts events to a Functions host's Event Grid webhook the way Event Grid does."""

    def __init__(
        self,
        functions_url: str,
        function_name: str = "azure_events",
        *,
        subscription_name: str = "vmss-node-patcher",
        code: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.functions_url = functions_url.rstrip("/")
        self.function_name = function_name
        self.subscription_name = subscription_name.upper()
        self.code = code
        self.timeout = timeout
        self.deliveries: list[Delivery] = []

    @property
    def url(self) -> str:
        url = f"{self.functions_url}/runtime/webhooks/eventgrid?functionName={quote(self.function_name)}"
        return url + (f"&code={quote(self.code)}" if self.code else "")

    def deliver(
        self, events: Sequence[Mapping[str, Any]], *, schema: Schema = "eventgrid", delivery_count: int = 0
    ) -> int:
        """Deliver ``events`` in one request; returns the HTTP status.

        Event Grid schema: one JSON array. CloudEvents: one event as a JSON object
        (structured mode), several as a batch array. Event Grid-schema events are
        converted with :func:`to_cloudevent` when the CloudEvents schema is asked for.
        ``delivery_count`` is what a redelivery would say in ``aeg-delivery-count``.
        """
        if not events:
            raise ValueError("Event Grid never delivers an empty batch")
        headers = {
            "aeg-event-type": "Notification",
            "aeg-subscription-name": self.subscription_name,
            "aeg-delivery-count": str(delivery_count),
        }
        payload: Any
        if schema == "eventgrid":
            payload = [dict(e) for e in events]
            first = payload[0]
            headers.update(
                {
                    "Content-Type": _EVENT_GRID_JSON,
                    "aeg-metadata-version": str(first.get("metadataVersion", "1")),
                    "aeg-data-version": str(first.get("dataVersion", "")),
                    "aeg-output-event-id": str(first.get("id", "")),
                }
            )
        elif schema == "cloudevents":
            cloud = [to_cloudevent(e) for e in events]
            payload = cloud[0] if len(cloud) == 1 else cloud
            headers.update(
                {
                    "Content-Type": _CLOUDEVENT_JSON if len(cloud) == 1 else _CLOUDEVENT_BATCH_JSON,
                    "aeg-metadata-version": str(cloud[0].get("specversion", "1.0")),
                    "aeg-output-event-id": str(cloud[0].get("id", "")),
                }
            )
        else:
            raise ValueError(f"schema must be 'eventgrid' or 'cloudevents', got {schema!r}")
        return self._send("POST", headers, _compact(payload)).status

    def validate(self, *, schema: Schema = "eventgrid", code: str | None = None) -> str:
        """Run the subscription handshake; returns what the endpoint answered.

        Event Grid schema: the ``validationResponse`` of the 200 answer (it must equal
        the code sent). CloudEvents: the ``WebHook-Allowed-Origin`` of the OPTIONS answer.
        Raises :class:`EventDeliveryError` when the endpoint does not complete it.
        """
        if schema == "cloudevents":
            origin = "eventgrid.azure.net"
            delivery = self._send("OPTIONS", {"WebHook-Request-Origin": origin}, b"")
            allowed = {k.lower(): v for k, v in delivery.response_headers.items()}.get(
                "webhook-allowed-origin"
            )
            if delivery.status != 200 or allowed not in (origin, "*"):
                raise EventDeliveryError(
                    f"CloudEvents handshake refused: {delivery.status}, WebHook-Allowed-Origin={allowed!r}"
                )
            return str(allowed)
        event = subscription_validation_event(code)
        headers = {
            "Content-Type": _EVENT_GRID_JSON,
            "aeg-event-type": "SubscriptionValidation",
            "aeg-subscription-name": self.subscription_name,
            "aeg-delivery-count": "0",
            "aeg-metadata-version": "1",
            "aeg-data-version": str(event["dataVersion"]),
            "aeg-output-event-id": str(event["id"]),
        }
        delivery = self._send("POST", headers, _compact([event]))
        if delivery.status != 200:
            raise EventDeliveryError(f"validation answered {delivery.status} (Event Grid needs 200)")
        try:
            answer = json.loads(delivery.response_body)["validationResponse"]
        except (ValueError, KeyError, TypeError) as exc:
            raise EventDeliveryError(f"no validationResponse in {delivery.response_body[:200]!r}") from exc
        if answer != event["data"]["validationCode"]:
            raise EventDeliveryError(f"validationResponse {answer!r} does not match the code sent")
        return str(answer)

    def _send(self, method: str, headers: dict[str, str], body: bytes) -> Delivery:
        request = urllib.request.Request(
            self.url, data=body if method != "OPTIONS" else None, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, answer_headers, answer = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            status, answer_headers, answer = err.code, dict(err.headers or {}), err.read()
        delivery = Delivery(method, self.url, dict(headers), body, status, answer_headers, answer)
        self.deliveries.append(delivery)
        return delivery


def _compact(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def cutoff_for(start: datetime | str) -> datetime:
    """The default cancellation cut-off of a run starting at ``start`` (T-10 minutes)."""
    return _as_utc(start) - CANCELLATION_CUTOFF
