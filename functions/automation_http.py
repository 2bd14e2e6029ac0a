"""Azure Automation Update Management pre-script hook: POST the run context, get runs."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.http_util import error, json_response, read_json

logger = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.function_name("automation_update_run")
@bp.route(route="automation/update-run", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def automation_update_run(req: func.HttpRequest) -> func.HttpResponse:
    from shared.app import automation_client, collaborators
    from shared.errors import NotFoundError, TemporaryError, ValidationError
    from shared.events import AutomationRunContext
    from shared.intake import Intake

    try:
        context = AutomationRunContext.parse(read_json(req))
        outcome = Intake(collaborators()).automation_run(context, automation=automation_client())
    except ValidationError as exc:
        return error(400, str(exc))
    except NotFoundError as exc:
        return error(404, str(exc))
    except TemporaryError as exc:
        # The runbook should fail (and so stop the deployment) rather than patch unmanaged.
        logger.warning("automation run context not handled yet: %s", exc)
        return error(503, "try again shortly", retryable=True)
    status = 202 if outcome.action == "started" else (409 if outcome.action == "refused" else 200)
    return json_response(
        {"outcome": outcome.action, "detail": outcome.detail, "runs": list(outcome.runs)}, status
    )
