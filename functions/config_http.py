"""GET /api/config: which configuration is in force, and any version refused (with why).

Answers whatever state the configuration is in, so that an operator who published a
broken version sees the refusal and the field it names without reading the logs."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.auth import check_access
from functions.http_util import error, json_response

bp = func.Blueprint()
logger = logging.getLogger(__name__)


@bp.function_name("config_status")
@bp.route(route="config", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def config_status(req: func.HttpRequest) -> func.HttpResponse:
    from shared.app import config_source
    from shared.errors import ConfigError

    if (refusal := check_access(req, "/config").refusal) is not None:
        return refusal
    try:
        source = config_source()
    except ConfigError as exc:  # the app settings themselves: nothing to read a version from
        logger.error("configuration error: %s", exc)
        return error(500, "the app is misconfigured; see its logs")
    return json_response(source.status())
