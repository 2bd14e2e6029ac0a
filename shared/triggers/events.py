"""Typed, read-only views over the events the app receives (Event Grid and CloudEvents 1.0).

The documented maintenance payloads disagree on key casing (camelCase in the docs repo,
PascalCase on the rendered page), so ``data`` is read case-insensitively. Through the
Functions Event Grid trigger a CloudEvent arrives without its type (the worker's
binding reads Event Grid field names), so the type is inferred from the data's shape
when it is missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import ValidationError
from shared.validation import shown

PRE_MAINTENANCE = "Microsoft.Maintenance.PreMaintenanceEvent"
POST_MAINTENANCE = "Microsoft.Maintenance.PostMaintenanceEvent"
RESOURCE_WRITE_SUCCESS = "Microsoft.Resources.ResourceWriteSuccess"
IMAGE_VERSION_WRITE = "microsoft.compute/galleries/images/versions/write"
MAX_RESOURCE_ID = 2048
_RESOURCE_ID = re.compile(r"/[^?#\\\x00-\x1f\x7f-\x9f]*")


class CaseInsensitive(Mapping[str, Any]):
    """A mapping whose keys match regardless of case; nested mappings too."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = {str(k).lower(): v for k, v in data.items()}

    def __getitem__(self, key: str) -> Any:
        value = self._data[key.lower()]
        return CaseInsensitive(value) if isinstance(value, Mapping) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class EventEnvelope:
    id: str
    type: str | None
    source: str
    subject: str
    data: CaseInsensitive

    @classmethod
    def from_trigger(cls, event: Any) -> EventEnvelope:
        """From ``func.EventGridEvent`` or ``func.CloudEvent`` (whichever the worker gave)."""
        event_id = getattr(event, "id", None)
        if not event_id:
            raise ValidationError("event has no id")
        try:
            data = event.get_json()
        except ValueError as exc:
            raise ValidationError(f"event {event_id}: data is not JSON: {exc}") from None
        if not isinstance(data, Mapping):
            raise ValidationError(f"event {event_id}: data must be a JSON object, got {type(data).__name__}")
        kind = getattr(event, "event_type", None) or getattr(event, "type", None)
        source = getattr(event, "topic", None) or getattr(event, "source", None) or ""
        return cls(
            id=str(event_id),
            type=str(kind) if kind else None,
            source=str(source),
            subject=str(getattr(event, "subject", None) or ""),
            data=CaseInsensitive(data),
        )

    @property
    def effective_type(self) -> str | None:
        return self.type or infer_type(self.data)


def infer_type(data: Mapping[str, Any]) -> str | None:
    """The event type from the data's shape, for CloudEvents delivered without one."""
    if "maintenanceconfigurationid" in data and "startdatetime" in data:
        return (
            POST_MAINTENANCE
            if "status" in data and "cancellationcutoffdatetime" not in data
            else PRE_MAINTENANCE
        )
    if (
        "operationname" in data
        and "resourceuri" in data
        and str(data.get("status", "")).lower() == "succeeded"
    ):
        return RESOURCE_WRITE_SUCCESS
    return None


def _time(data: Mapping[str, Any], key: str, *, required: bool = True) -> datetime | None:
    value = data.get(key)
    if value in (None, ""):
        if required:
            raise ValidationError(f"maintenance event has no {key}")
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"maintenance event field {key} is not an ISO-8601 time: {value!r}") from None


@dataclass(frozen=True)
class MaintenanceEvent:
    correlation_id: str
    configuration_id: str
    start: datetime
    end: datetime
    cancellation_cutoff: datetime | None
    status: str

    @classmethod
    def from_envelope(cls, envelope: EventEnvelope) -> MaintenanceEvent:
        data = envelope.data
        correlation = str(data.get("correlationId") or envelope.id)
        configuration = str(data.get("maintenanceConfigurationId") or envelope.source or "")
        if not configuration:
            raise ValidationError("maintenance event has no maintenanceConfigurationId")
        start, end = _time(data, "startDateTime"), _time(data, "endDateTime")
        assert start is not None and end is not None
        if end <= start:
            raise ValidationError(f"maintenance window ends ({end}) before it starts ({start})")
        return cls(
            correlation_id=correlation,
            configuration_id=configuration,
            start=start,
            end=end,
            cancellation_cutoff=_time(data, "cancellationCutOffDateTime", required=False),
            status=str(data.get("status") or ""),
        )


@dataclass(frozen=True)
class ResourceWriteEvent:
    operation_name: str
    resource_uri: str
    correlation_id: str

    @classmethod
    def from_envelope(cls, envelope: EventEnvelope) -> ResourceWriteEvent:
        data = envelope.data
        uri = str(data.get("resourceUri") or envelope.subject or "")
        if not uri:
            raise ValidationError("resource event has no resourceUri or subject")
        # The id becomes ARM request paths and Table keys: an ARM resource id has neither
        # a query, a fragment, a backslash nor a control character.
        if len(uri) > MAX_RESOURCE_ID or not _RESOURCE_ID.fullmatch(uri):
            raise ValidationError(f"resource event's resourceUri is not an ARM resource id: {shown(uri)}")
        return cls(
            operation_name=str(data.get("operationName") or ""),
            resource_uri=uri,
            correlation_id=str(data.get("correlationId") or ""),
        )

    @property
    def is_image_version_write(self) -> bool:
        return self.operation_name.lower() == IMAGE_VERSION_WRITE
