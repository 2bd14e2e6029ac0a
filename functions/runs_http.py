"""Operator endpoints: start, list, inspect, pause, resume and cancel runs; retry or
release a failed node; release a cluster's lock."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import azure.functions as func

from functions.http_util import bad_route, error, json_response, read_json

if TYPE_CHECKING:
    from shared.runs import RunService

logger = logging.getLogger(__name__)
bp = func.Blueprint()

# Set by App Service Authentication (Easy Auth) when it fronts the app; without it the
# caller is known only as holding a function key.
PRINCIPAL_HEADER = "x-ms-client-principal-name"


def _service() -> RunService:
    from shared.app import collaborators
    from shared.runs import RunService

    return RunService(collaborators())


@bp.function_name("runs_collection")
@bp.route(route="runs", methods=["GET", "POST"], auth_level=func.AuthLevel.FUNCTION)
def runs_collection(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import ConfigError, TemporaryError, ValidationError
    from shared.runs import RunConflictError, StartRequest

    try:
        service = _service()
        if req.method == "GET":
            return json_response({"runs": service.list()})
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

    if (refused := bad_route(req)) is not None:
        return refused
    run_id, action = req.route_params["id"], req.route_params["action"]
    service = _service()
    actions = {"pause": service.pause, "resume": service.resume, "cancel": service.cancel}
    if action not in actions:
        return error(404, f"unknown action {action!r}; use one of {sorted(actions)}")
    by = req.headers.get(PRINCIPAL_HEADER) or "function key"
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
    from shared.runs import NodeActionRefusedError, NodeActionRequest, RunConflictError

    if (refused := bad_route(req)) is not None:
        return refused
    run_id, node, action = req.route_params["id"], req.route_params["node"], req.route_params["action"]
    if action not in NODE_ACTIONS:
        return error(404, f"unknown node action {action!r}; use one of {list(NODE_ACTIONS)}")
    try:
        body = read_json(req) if (req.get_body() or b"").strip() else None
        request = NodeActionRequest.from_json(body, principal=req.headers.get(PRINCIPAL_HEADER))
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
    from shared.runs import RunConflictError

    if (refused := bad_route(req)) is not None:
        return refused
    force = req.params.get("force", "").lower() in ("true", "1", "yes")
    by = req.headers.get(PRINCIPAL_HEADER) or "function key"
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
