"""JSON responses and error mapping shared by the HTTP triggers."""

from __future__ import annotations

import json
import logging
import re
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


# No request of the API nests deeper than a few levels; far deeper bodies are refused
# before parsing (the decoder recurses, and so would everything that walks the result).
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_A_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth(raw: bytes, *, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep ``raw``'s arrays and objects nest (counting stops past ``limit``)."""
    depth = deepest = 0
    for bracket in _NOT_A_BRACKET.sub(b"", _JSON_STRING.sub(b"", raw)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
        if deepest > limit:
            break
    return deepest


def read_json(req: func.HttpRequest) -> Any:
    from shared.errors import ValidationError

    raw = req.get_body() or b""
    if not raw.strip():
        raise ValidationError("request body must be JSON")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ValidationError(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValidationError(f"request body is not valid JSON: {exc}") from None
