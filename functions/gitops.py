"""GitHub push webhook -> Flux reconcile requests; the hand-off queue; the sync status API.

The webhook checks, in this order and before anything reads the payload: size (413),
configuration (500), signature (401, with no detail). Then the event type (``ping`` 200,
others 202), the delivery id and the JSON (400), and hands off to
``shared.gitops.service``. Secrets and signatures are never logged.
"""

from __future__ import annotations

import json
import logging
import os

import azure.functions as func

from functions.auth import check_access
from functions.http_util import bad_route, error, json_response
from shared import validation

logger = logging.getLogger(__name__)
bp = func.Blueprint()

# host.json extensions.queues.maxDequeueCount: the final delivery records the failure.
MAX_DEQUEUE_COUNT = int(os.environ.get("PATCHER_MAX_DEQUEUE_COUNT", "5"))


def _printable(value: str, limit: int = 64) -> str:
    """A header value safe to put into a log line (it is attacker-controlled text)."""
    return "".join(ch if ch.isprintable() else "?" for ch in value[:limit])


@bp.function_name("gitops_github")
@bp.route(route="gitops/github", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def gitops_github(req: func.HttpRequest) -> func.HttpResponse:
    from shared.app import collaborators
    from shared.errors import ConfigError, TemporaryError, ValidationError
    from shared.gitops.github import (
        DELIVERY_HEADER,
        EVENT_HEADER,
        SIGNATURE_HEADER,
        PushEvent,
        resolve_secrets,
        verify_signature,
    )
    from shared.gitops.service import GitOpsService

    try:
        deps = collaborators()
    except ConfigError as exc:
        logger.error("configuration error: %s", exc)
        return error(500, "the app is misconfigured; see its logs")

    # Size first: neither the HMAC nor the parser should ever see an oversized body.
    limit = deps.config.gitops.max_body_bytes
    declared = req.headers.get("Content-Length")
    if declared is not None:
        try:
            length = int(declared.strip())
        except ValueError:
            return error(400, "Content-Length is not a number")
        if length > limit:
            return error(413, f"the body is larger than {limit} bytes")
    body = req.get_body() or b""
    if len(body) > limit:
        return error(413, f"the body is larger than {limit} bytes")

    secrets = resolve_secrets((ref.setting for ref in deps.config.gitops.secrets), os.environ)
    if not secrets:
        logger.error("GitHub webhook refused: no secret configured (gitops.secrets and their app settings)")
        return error(500, "the app is misconfigured; see its logs")
    delivery = (req.headers.get(DELIVERY_HEADER) or "").strip()
    if not verify_signature(body, req.headers.get(SIGNATURE_HEADER), secrets):
        logger.warning(
            "GitHub webhook with a missing or wrong signature refused (delivery %r)", _printable(delivery)
        )
        return func.HttpResponse(status_code=401)

    event = (req.headers.get(EVENT_HEADER) or "").strip()
    if event == "ping":
        return json_response({"status": "pong"})
    if event != "push":
        return json_response(
            {"status": "ignored", "reason": f"event {_printable(event)!r} is not handled; only push"}, 202
        )
    if not delivery:
        return error(400, f"the {DELIVERY_HEADER} header is required")
    if problem := validation.format_problem("delivery", delivery):
        return error(400, f"the {DELIVERY_HEADER} header: {problem}")
    content_type = (req.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
    if content_type != "application/json":
        return error(400, "configure the webhook with content type application/json")
    try:
        push = PushEvent.from_json(json.loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return error(400, "the body is not valid JSON")
    except ValidationError as exc:
        return error(400, str(exc))

    try:
        answer = GitOpsService(deps).handle_push(delivery, push)
    except TemporaryError as exc:
        logger.error("delivery %s: %s", delivery, exc)
        return error(503, "state storage is unavailable; redeliver later")
    return json_response(answer.body, answer.status)


@bp.function_name("gitops_sync")
@bp.queue_trigger(arg_name="msg", queue_name="gitops-sync", connection="AzureWebJobsStorage")
def gitops_sync(msg: func.QueueMessage) -> None:
    from shared.app import collaborators
    from shared.errors import ValidationError
    from shared.gitops.service import GitOpsService, SyncMessage, sync_queue

    body = msg.get_body().decode("utf-8", errors="replace")
    try:
        message = SyncMessage.parse(body)
    except ValidationError as exc:
        # Retrying cannot fix a malformed message: dead-letter it with the reason at once.
        logger.error("gitops sync message %s dead-lettered: %s", msg.id, exc)
        sync_queue().dead_letter(body, reason=str(exc))
        return
    final = (msg.dequeue_count or 1) >= MAX_DEQUEUE_COUNT
    outcome = GitOpsService(collaborators()).sync_cluster(message, final_attempt=final)
    logger.info("gitops sync %s on %s: %s", message.delivery, message.cluster, outcome)


@bp.function_name("gitops_syncs")
@bp.route(route="gitops/syncs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def gitops_syncs(req: func.HttpRequest) -> func.HttpResponse:
    from shared.app import collaborators
    from shared.errors import TemporaryError, ValidationError
    from shared.gitops.service import GitOpsService
    from shared.rollout.listing import SyncQuery

    if (refusal := check_access(req, "/gitops/syncs").refusal) is not None:
        return refusal
    try:
        return json_response(GitOpsService(collaborators()).list_syncs(SyncQuery.from_query(req.params)))
    except ValidationError as exc:
        return error(400, str(exc))
    except TemporaryError as exc:  # the store, for a moment
        return error(503, f"try again: {exc}")


@bp.function_name("gitops_sync_item")
@bp.route(route="gitops/syncs/{delivery}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def gitops_sync_item(req: func.HttpRequest) -> func.HttpResponse:
    from shared.app import collaborators
    from shared.errors import NotFoundError
    from shared.gitops.service import GitOpsService

    if (refusal := check_access(req, "/gitops/syncs/{delivery}").refusal) is not None:
        return refusal
    if (refused := bad_route(req)) is not None:
        return refused
    try:
        return json_response(GitOpsService(collaborators()).get_sync(req.route_params["delivery"]))
    except NotFoundError as exc:
        return error(404, str(exc))
