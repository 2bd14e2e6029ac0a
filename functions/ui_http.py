"""What operators look at: a run's timeline as SVG, and the status page.

Both are function-level routes like the rest of the operator API. The host accepts the
key as ``?code=``, which is what a browser can send: an ``<img>`` carries no header, so
the page passes the ``code`` it was opened with on to every call it makes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import azure.functions as func

from functions.auth import check_access
from functions.http_util import bad_route, error

logger = logging.getLogger(__name__)
bp = func.Blueprint()

PAGE = Path(__file__).with_name("ui") / "index.html"
# The key travels in the page's address: no Referer may carry it anywhere.
# An SVG opened on its own is a document: it may show, never run anything.
_SVG_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
_COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@bp.function_name("run_timeline")
@bp.route(route="runs/{id}/timeline", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def run_timeline(req: func.HttpRequest) -> func.HttpResponse:
    from shared.app import collaborators
    from shared.errors import NotFoundError
    from shared.rollout.timeline import render_svg

    if (refusal := check_access(req, "/runs/{id}/timeline").refusal) is not None:
        return refusal
    if (refused := bad_route(req)) is not None:
        return refused
    deps = collaborators()
    run_id = req.route_params["id"]
    try:
        run = deps.store.get_run(run_id)
    except NotFoundError as exc:
        return error(404, str(exc))
    svg = render_svg(run, deps.store.list_nodes(run_id), now=deps.clock.now())
    return func.HttpResponse(
        svg,
        status_code=200,
        mimetype="image/svg+xml",
        charset="utf-8",
        headers={**_COMMON_HEADERS, "Content-Security-Policy": _SVG_POLICY},
    )


@bp.function_name("status_page")
@bp.route(route="ui", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status_page(req: func.HttpRequest) -> func.HttpResponse:
    if (refusal := check_access(req, "/ui").refusal) is not None:
        return refusal
    return func.HttpResponse(
        PAGE.read_bytes(), status_code=200, mimetype="text/html", charset="utf-8", headers=_COMMON_HEADERS
    )
