"""Operator endpoints: start, list, inspect, pause, resume and cancel runs; retry or
release a failed node; release a cluster's lock."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import azure.functions as func

from functions.auth import check_access
from functions.http_util import bad_route, error, json_response, read_json

if TYPE_CHECKING:
    from shared.rollout.service import RunService

logger = logging.getLogger(__name__)
bp = func.Blueprint()


def _service() -> RunService:
    from shared.app import collaborators
    from shared.rollout.service import RunService

    return RunService(collaborators())


# Reading and acting are separate functions, even on one route: function keys are per
# function, so a key given only to the read functions cannot act.
@bp.function_name("runs_list")
@bp.route(route="runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def runs_list(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import ConfigError, TemporaryError, ValidationError
    from shared.rollout.listing import RunQuery

    if (refusal := check_access(req, "/runs").refusal) is not None:
        return refusal
    try:
        return json_response(_service().list_page(RunQuery.from_query(req.params)))
    except ValidationError as exc:
        return error(400, str(exc))
    except ConfigError as exc:
        logger.error("configuration error: %s", exc)
        return error(500, "the app is misconfigured; see its logs")
    except TemporaryError as exc:  # the store, for a moment
        return error(503, f"try again: {exc}")


@bp.function_name("runs_start")
@bp.route(route="runs", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def runs_start(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import ConfigError, TemporaryError, ValidationError
    from shared.rollout.requests import StartRequest
    from shared.rollout.service import RunConflictError

    if (refusal := check_access(req, "/runs").refusal) is not None:
        return refusal
    try:
        service = _service()
        request = StartRequest.from_json(read_json(req))
        if request.dry_run:
            return json_response(service.preview(request))
        run = service.start(request)
    except RunConflictError as exc:
        return error(409, str(exc), activeRun=exc.active_run)
    except ValidationError as exc:
        return error(400, str(exc))
    except ConfigError as exc:
        logger.error("configuration error: %s", exc)
        return error(500, "the app is misconfigured; see its logs")
    except TemporaryError as exc:  # the cluster, ARM or the store, for a moment
        return error(503, f"try again: {exc}")
    # A deferred run says until when and why (outside its window, notBefore) at once.
    summary = service.summary(run)
    return json_response(
        {
            "id": run.id,
            "state": str(run.state),
            "notBefore": summary["notBefore"],
            "stateReason": run.state_reason,
        },
        202,
        headers={"Location": f"/api/runs/{run.id}"},
    )


@bp.function_name("run_item")
@bp.route(route="runs/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def run_item(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import NotFoundError

    if (refusal := check_access(req, "/runs/{id}").refusal) is not None:
        return refusal
    if (refused := bad_route(req)) is not None:
        return refused
    try:
        return json_response(_service().get(req.route_params["id"]))
    except NotFoundError as exc:
        return error(404, str(exc))


@bp.function_name("run_action")
@bp.route(route="runs/{id}/{action}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def run_action(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import NotFoundError, ValidationError

    access = check_access(req, "/runs/{id}/{action}")
    if access.refusal is not None:
        return access.refusal
    if (refused := bad_route(req)) is not None:
        return refused
    run_id, action = req.route_params["id"], req.route_params["action"]
    service = _service()
    actions = {"pause": service.pause, "resume": service.resume, "cancel": service.cancel}
    if action not in actions:
        return error(404, f"unknown action {action!r}; use one of {sorted(actions)}")
    by = access.who
    try:
        run = actions[action](run_id, by=by)
    except NotFoundError as exc:
        return error(404, str(exc))
    except ValidationError as exc:
        return error(409, str(exc))
    logger.info("run %s: %s by %s", run.id, action, by)
    return json_response({"id": run.id, "state": str(run.state), "stateReason": run.state_reason}, 202)


NODE_ACTIONS = ("release", "retry")


@bp.function_name("run_node_action")
@bp.route(route="runs/{id}/nodes/{node}/{action}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def run_node_action(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import ConcurrencyError, NotFoundError, TemporaryError, ValidationError
    from shared.rollout.requests import NodeActionRequest
    from shared.rollout.service import NodeActionRefusedError, RunConflictError

    access = check_access(req, "/runs/{id}/nodes/{node}/{action}")
    if access.refusal is not None:
        return access.refusal
    if (refused := bad_route(req)) is not None:
        return refused
    run_id, node, action = req.route_params["id"], req.route_params["node"], req.route_params["action"]
    if action not in NODE_ACTIONS:
        return error(404, f"unknown node action {action!r}; use one of {list(NODE_ACTIONS)}")
    try:
        body = read_json(req) if (req.get_body() or b"").strip() else None
        request = NodeActionRequest.from_json(
            body, principal=access.principal.name if access.principal else None
        )
    except ValidationError as exc:
        return error(400, str(exc))
    service = _service()
    try:
        if action == "retry":
            return json_response(service.retry_node(run_id, node, request), 202)
        return json_response(service.release_node(run_id, node, request))
    except NotFoundError as exc:
        return error(404, str(exc))
    except RunConflictError as exc:
        return error(409, str(exc), activeRun=exc.active_run)
    except (NodeActionRefusedError, ConcurrencyError) as exc:
        return error(409, str(exc))
    except ValidationError as exc:  # a new run for the node could not be planned
        return error(400, str(exc))
    except TemporaryError as exc:  # the API server or the store, for a moment; a retry carries on
        return error(503, f"try again: {exc}")


@bp.function_name("cluster_lock")
@bp.route(route="clusters/{name}/lock", methods=["DELETE"], auth_level=func.AuthLevel.FUNCTION)
def cluster_lock(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import ConcurrencyError, NotFoundError
    from shared.rollout.service import RunConflictError

    access = check_access(req, "/clusters/{name}/lock")
    if access.refusal is not None:
        return access.refusal
    if (refused := bad_route(req)) is not None:
        return refused
    force = req.params.get("force", "").lower() in ("true", "1", "yes")
    by = access.who
    try:
        record = _service().release_lock(
            req.route_params["name"], by=by, reason=req.params.get("reason", ""), force=force
        )
    except NotFoundError as exc:
        return error(404, str(exc))
    except RunConflictError as exc:
        return error(409, str(exc), activeRun=exc.active_run)
    except ConcurrencyError as exc:
        return error(409, str(exc))
    return json_response(record)
