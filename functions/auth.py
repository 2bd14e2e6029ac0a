"""The operator API's role check, as each HTTP trigger uses it (the rules: shared/principal.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import azure.functions as func

from functions.http_util import error
from shared.principal import Principal, missing_role

logger = logging.getLogger(__name__)

FUNCTION_KEY_CALLER = "function key"


@dataclass(frozen=True)
class Access:
    principal: Principal | None
    refusal: func.HttpResponse | None

    @property
    def who(self) -> str:
        """Who asked, as recorded with an action."""
        return self.principal.name if self.principal else FUNCTION_KEY_CALLER


def check_access(req: func.HttpRequest, route: str) -> Access:
    """Whether the caller may make this call; ``route`` as the OpenAPI description writes it."""
    principal = Principal.from_headers(req.headers)
    lacking = missing_role(principal, req.method, route)
    if principal is None or lacking is None:
        return Access(principal, None)
    logger.warning("%s %s refused to %r: lacks app role %s", req.method, route, principal.name, lacking)
    return Access(
        principal,
        error(
            403,
            f"{principal.name} does not hold the app role {lacking}, "
            f"which {req.method.upper()} /api{route} needs",
            missingRole=lacking,
        ),
    )
