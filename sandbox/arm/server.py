"""The simulated ARM's HTTP face: authentication, routing, api-version checks, faults, request log."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sandbox.arm.access import ArmAccess
from sandbox.arm.faults import _AcceptedFault
from sandbox.arm.http import _Server
from sandbox.arm.identity import ManagedIdentity
from sandbox.arm.replies import _ApiError, _Ctx, _injected_error, _Reply, arm_error
from sandbox.arm.routes import RouteMatch, route
from sandbox.arm.state import ComputeState
from sandbox.httpserver import LOOPBACK, ServerThread, server_url
from sandbox.tls import SandboxTLS

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    query: dict[str, str]
    lquery: dict[str, str]  # names lower-cased: ARM reads api-version in any case
    route: RouteMatch
    client: tuple[str, int] | None
    client_gone: Callable[[], bool] | None


class ArmServer:
    """HTTPS front for a ComputeState (one per subscription it serves), plus the
    managed-identity token endpoint.

    The identity endpoint issues tokens for two identities: the app's (the default, as
    App Service's system-assigned identity), authorized against the role assignments
    ``infra/`` declares for ``deployment`` (main.bicep's parameters; by default covering
    every resource served), and the scene-setter's (``client_id=admin_client_id``, a
    user-assigned identity of the sandbox: image pipelines, tests), never restricted."""

    def __init__(
        self,
        state: ComputeState,
        *,
        tls: SandboxTLS | None = None,
        subscriptions: Iterable[ComputeState] = (),
        deployment: dict[str, Any] | None = None,
    ) -> None:
        self.state = state
        self.states = {s.subscription_id.lower(): s for s in (state, *subscriptions)}
        self.identity = ManagedIdentity()
        # What the app's settings and the tests read, under the names they always had.
        self.identity_header, self.client_id = self.identity.identity_header, self.identity.client_id
        self.principal_id, self.admin_client_id = self.identity.principal_id, self.identity.admin_client_id
        self.tenant_id = self.identity.tenant_id
        self.access = ArmAccess(
            self.states,
            principal_id=self.identity.principal_id,
            deployment=deployment,
            app_subscription=state.subscription_id,
        )
        self.request_log: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        self._httpd = _Server(LOOPBACK, self, tls.server_context() if tls else None)
        self.url = server_url(self._httpd.server_address, tls=tls is not None)
        self.identity_endpoint = self.url + "/msi/token"
        self._serving = ServerThread(self._httpd, name="sandbox-arm")

    def start(self) -> None:
        self._serving.start()

    def stop(self) -> None:
        self._serving.stop()

    def __enter__(self) -> ArmServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def issue_token(self, resource: str = "https://management.azure.com/", *, admin: bool = False) -> str:
        """Mint a token as the identity endpoint would (for tests that bypass azure-identity):
        the app's, or with ``admin`` the unrestricted scene-setter's."""
        return self.identity.issue_token(resource, admin=admin)

    # ---------------------------------------------------------------- dispatch

    def _log(self, **entry: Any) -> None:
        with self._log_lock:
            self.request_log.append(entry)

    def _dispatch(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        raw: bytes,
        *,
        client: tuple[str, int] | None = None,
        client_gone: Callable[[], bool] | None = None,
    ) -> _Reply:
        parts = urlsplit(target)
        path = unquote(parts.path).rstrip("/") or "/"
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        lquery = {k.lower(): v for k, v in query.items()}
        started = time.time()
        if path.lower() == "/msi/token":
            reply = self.identity.serve_token_request(method, headers, lquery, self.state.faults)
            self._log(
                t=started,
                method=method,
                path=path,
                query=query,
                status=reply.status,
                operation="msi_token",
                write=False,
                resource_group=None,
                scale_set=None,
            )
            return reply

        found = route(method, path)
        operation, write, match = found.operation, found.write, found.match

        # ARM assigns the correlation id before the provider sees the request (resource
        # events carry it as data.correlationId), so handlers get it in their headers.
        corr = headers.get("x-ms-correlation-request-id") or str(uuid.uuid4())
        headers = {**headers, "x-ms-correlation-request-id": corr}
        reply = self._serve_arm(
            _Request(method, path, headers, raw, query, lquery, found, client, client_gone)
        )
        reply.headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        reply.headers["x-ms-correlation-request-id"] = corr
        reply.headers["x-ms-routing-request-id"] = (
            f"{self.state.location.upper()}:{datetime.now(UTC):%Y%m%dT%H%M%SZ}:{corr}"
        )
        if reply.status != 401:
            kind = "writes" if write else "reads"
            reply.headers[f"x-ms-ratelimit-remaining-subscription-{kind}"] = "1199" if write else "11999"
        reply.headers.update({"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "-1"})
        entry: dict[str, Any] = {}
        if reply.fault is not None:
            entry["fault"] = reply.fault
        self._log(
            t=started,
            method=method,
            path=path,
            query=query,
            # 0: the client got no answer (a dropped connection, or a held write abandoned).
            status=0 if reply.drop_after is not None else reply.status,
            operation=operation,
            write=write,
            resource_group=match.get("rg"),
            scale_set=match.get("vmss"),
            **entry,
        )
        return reply

    def _serve_arm(self, request: _Request) -> _Reply:
        headers, route_match = request.headers, request.route
        denied = self.identity.authenticate(headers)
        if denied is not None:
            return denied
        # Each subscription's resources are their own state; an unknown one answers
        # SubscriptionNotFound from the first.
        state = self.states.get(route_match.match.get("sub", "").lower(), self.state)
        api_version = request.lquery.get("api-version", "")
        if not api_version:
            return _Reply(
                400,
                arm_error(
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                ),
            )
        if route_match.handler is None or route_match.operation is None:
            if route_match.path_known:
                return _Reply(
                    405,
                    arm_error(
                        "MethodNotAllowed",
                        f"The HTTP method '{request.method}' is not supported at '{request.path}'.",
                    ),
                )
            return _Reply(
                404, arm_error("NotFound", f"No HTTP resource was found that matches '{request.path}'.")
            )

        principal = self.identity.principal(headers)
        if principal is not None:
            refused = self.access.check(
                principal, request.method, request.path, route_match.match, request.raw
            )
            if refused is not None:
                return _Reply(refused[0], refused[1])

        fault = state.faults._take_request_fault(route_match.operation)
        if fault is not None:
            reply = _Reply(
                fault.status,
                _injected_error(fault.code, "injected by the sandbox"),
            )
            if fault.retry_after is not None:
                reply.headers["Retry-After"] = str(fault.retry_after)
            return reply

        body: Any = None
        if request.raw.strip():
            try:
                body = json.loads(request.raw)
            except ValueError:
                return _Reply(
                    400,
                    arm_error(
                        "InvalidRequestContent",
                        "The request content was invalid and could not be deserialized.",
                    ),
                )
        ctx = _Ctx(
            match=route_match.match,
            query={k if not k.startswith("$") else k.lower(): v for k, v in request.query.items()},
            body=body,
            headers=headers,
            base_url=self.url,
            api_version=api_version,
        )
        hold = state.faults._take_hold(route_match.operation)
        if hold is not None:
            port = int(self._httpd.server_address[1])
            if not state.faults._hold(
                hold,
                route_match.operation,
                request.client or ("", 0),
                port,
                request.client_gone or (lambda: False),
            ):
                # The client is gone: ARM never saw the request, and nobody reads an answer.
                return _Reply(0, drop_after=0.0, fault="held_abandoned")
        try:
            with state._transaction():
                answer: _Reply = getattr(state, route_match.handler)(ctx)
        except _ApiError as err:
            return err.reply
        except Exception:
            logger.exception("sandbox ARM handler %s failed", route_match.handler)
            return _Reply(500, arm_error("InternalServerError", "The sandbox failed to process the request."))
        if answer.status < 300:
            accepted = state.faults._take_accepted_fault(route_match.operation)
            if accepted is not None:
                return self._ambiguous_answer(accepted, answer)
        return answer

    @staticmethod
    def _ambiguous_answer(fault: _AcceptedFault, accepted: _Reply) -> _Reply:
        """What the client gets for a write ARM accepted, under an ``accept_then_*`` fault."""
        request_id = accepted.headers.get("x-ms-request-id")
        if fault.status is None:
            reply = _Reply(0, drop_after=fault.drop_after, fault="accept_then_drop")
        else:
            reply = _Reply(
                fault.status,
                _injected_error(fault.code, "injected by the sandbox after accepting the request"),
                fault="accept_then_fail",
            )
        if request_id:
            reply.headers["x-ms-request-id"] = request_id
        return reply
