"""The API's own description: GET /api/openapi.json (functions/openapi.yaml, as JSON)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import azure.functions as func

from functions.auth import check_access
from functions.http_util import json_response

bp = func.Blueprint()
DESCRIPTION = Path(__file__).with_name("openapi.yaml")


@functools.cache
def description() -> dict[str, Any]:
    import yaml

    document: dict[str, Any] = yaml.safe_load(DESCRIPTION.read_text(encoding="utf-8"))
    return document


@bp.function_name("openapi_description")
@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def openapi_description(req: func.HttpRequest) -> func.HttpResponse:
    if (refusal := check_access(req, "/openapi.json").refusal) is not None:
        return refusal
    return json_response(description())
