"""Operator endpoint: the plan of a run, before it starts (``POST /api/plans``)."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.auth import check_access
from functions.http_util import error, json_response, read_json

logger = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.function_name("plans")
@bp.route(route="plans", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def plans(req: func.HttpRequest) -> func.HttpResponse:
    """The same body as ``POST /api/runs``; answers what that run would do, touching nothing."""
    from shared.app import collaborators
    from shared.errors import ConfigError, PermanentError, TemporaryError, ValidationError
    from shared.rollout.requests import StartRequest
    from shared.rollout.service import RunService

    if (refusal := check_access(req, "/plans").refusal) is not None:
        return refusal
    try:
        request = StartRequest.from_json(read_json(req))
        return json_response(RunService(collaborators()).preview(request))
    except ValidationError as exc:
        return error(400, str(exc))
    except ConfigError as exc:
        logger.error("configuration error: %s", exc)
        return error(500, "the app is misconfigured; see its logs")
    except TemporaryError as exc:
        return error(503, f"could not look at the cluster now: {exc}")
    except PermanentError as exc:
        return error(502, f"could not look at the cluster: {exc}")
