"""What a handler answers: ARM's reply and error bodies, and the parts of a request it reads."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_KNOWN_ERROR_MESSAGES = {
    "InternalExecutionError": "An internal execution error occurred. Please retry later.",
    "InternalServerError": "Encountered internal server error. Diagnostic information has been collected.",
    "ServiceUnavailable": "The service is currently unavailable. Please retry later.",
    "AllocationFailed": "Allocation failed. We do not have sufficient capacity for the requested VM size "
    "in this region.",
}


def _iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat()


def arm_error(
    code: str, message: str, *, target: str | None = None, details: list[dict] | None = None
) -> dict:
    err: dict[str, Any] = {"code": code, "message": message}
    if target is not None:
        err["target"] = target
    if details:
        err["details"] = details
    return {"error": err}


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    resource_group: str | None = None
    scale_set: str | None = None
    # No answer: hold the connection this long (or until the client leaves), then close it.
    drop_after: float | None = None
    fault: str | None = None  # the injected fault that shaped this answer, for the request log


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **kw: Any) -> None:
        super().__init__(message)
        self.reply = _Reply(status, arm_error(code, message, **kw))


@dataclass
class _Ctx:
    """What a handler needs from one HTTP request."""

    match: dict[str, str]
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    base_url: str
    api_version: str


def _resource_not_found(type_and_name: str, resource_group: str) -> _ApiError:
    return _ApiError(
        404,
        "ResourceNotFound",
        f"The Resource '{type_and_name}' under resource group '{resource_group}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def _parent_not_found(name: str) -> _ApiError:
    return _ApiError(
        404,
        "ParentResourceNotFound",
        f"Can not perform requested operation on nested resource. Parent resource '{name}' not found.",
    )


def _require_body(ctx: _Ctx) -> dict[str, Any]:
    if not isinstance(ctx.body, dict):
        raise _ApiError(
            400, "InvalidRequestContent", "The request content was invalid and could not be deserialized."
        )
    return ctx.body


def _get_ci(obj: dict[str, Any], key: str) -> Any:
    """A JSON member looked up case-insensitively (the REST example sends ``"Status": 6``)."""
    for k, v in obj.items():
        if k.lower() == key.lower():
            return v
    return None


def _int_query(ctx: _Ctx, name: str) -> int | None:
    raw = ctx.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise _ApiError(400, "BadRequest", f"The value of parameter {name} is invalid.", target=name)
    return value


def _filter_query(ctx: _Ctx, pattern: str, *, supported: str = "") -> re.Match[str] | None:
    """The request's ``$filter`` matched against the one form a list serves (None without
    one), or the 400 for any other; ``supported`` tells the caller what that form is."""
    flt = ctx.query.get("$filter")
    if not flt:
        return None
    m = re.fullmatch(pattern, flt, re.IGNORECASE)
    if m is None:
        raise _ApiError(
            400,
            "InvalidParameter",
            f"The value of parameter $filter is invalid{supported}: {flt}",
            target="$filter",
        )
    return m


def _injected_error(code: str, note: str) -> dict[str, Any]:
    """The error body of an injected fault: Azure's message for ``code``, marked as injected."""
    return arm_error(code, _KNOWN_ERROR_MESSAGES.get(code, f"Injected failure '{code}'.") + f" ({note})")


def _tracked_resource(
    resource_id: str,
    resource_type: str,
    *,
    name: str,
    location: str,
    tags: dict[str, str],
    properties: dict[str, Any],
) -> dict[str, Any]:
    """A tracked resource as ARM shows it, members in ARM's order."""
    return {
        "id": resource_id,
        "name": name,
        "type": resource_type,
        "location": location,
        "tags": dict(tags),
        "properties": properties,
    }
