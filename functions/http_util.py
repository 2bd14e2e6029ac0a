"""JSON responses and error mapping shared by the HTTP triggers."""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func

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


def read_json(req: func.HttpRequest) -> Any:
    from shared.errors import ValidationError

    raw = req.get_body() or b""
    if not raw.strip():
        raise ValidationError("request body must be JSON")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValidationError(f"request body is not valid JSON: {exc}") from None
