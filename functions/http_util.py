"""JSON responses and error mapping shared by the HTTP triggers."""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func

from shared import validation

logger = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, indent=None, sort_keys=False),
        status_code=status,
        mimetype="application/json",
        headers=headers,
    )


def error(status: int, message: str, **extra: Any) -> func.HttpResponse:
    return json_response({"error": message, **extra}, status)


# The limits and formats live in shared.validation, shared with the queue parsers.
MAX_JSON_DEPTH = validation.MAX_JSON_DEPTH
json_depth = validation.json_depth


def read_json(req: func.HttpRequest) -> Any:
    from shared.errors import ValidationError

    raw = req.get_body() or b""
    if not raw.strip():
        raise ValidationError("request body must be JSON")
    return validation.parse_json(raw, what="request body", max_bytes=validation.MAX_REQUEST_BYTES)


# Route parameters by name -> the identifier each must be. A value that cannot be one
# names nothing, so it is a 404 with the reason before any store, selector or log sees it.
ROUTE_IDENTIFIERS = {"id": "run", "node": "node", "name": "cluster", "delivery": "delivery"}


def bad_route(req: func.HttpRequest) -> func.HttpResponse | None:
    """The 404 for a route parameter that cannot name anything, or None if all can."""
    for param, kind in ROUTE_IDENTIFIERS.items():
        value = req.route_params.get(param)
        if value is not None and (problem := validation.format_problem(kind, value)):
            return error(404, f"not found: {problem}")
    return None
