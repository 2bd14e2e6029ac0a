"""The App Service managed-identity endpoint and the bearer tokens ARM accepts."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sandbox.arm.faults import FaultInjector
from sandbox.arm.rbac import Principal
from sandbox.arm.replies import _Reply, arm_error

_ARM_RESOURCES = {"https://management.azure.com", "https://management.core.windows.net"}

_TOKEN_LIFETIME_S = 24 * 3600


@dataclass
class _Issued:
    resource: str
    expires_on: int
    # Whom ARM authorizes: the app's identity; None for the sandbox's scene-setting one.
    principal: Principal | None = None


class ManagedIdentity:
    """The identity endpoint's two identities and the tokens it issued.

    The app's identity (the default, as App Service's system-assigned one) is authorized
    by :class:`sandbox.arm.access.ArmAccess`; the scene-setter's (``client_id`` =
    ``admin_client_id``, a user-assigned identity of the sandbox) is never restricted."""

    def __init__(self) -> None:
        self.identity_header = secrets.token_urlsafe(24)
        self.client_id = str(uuid.uuid4())
        self.principal_id = str(uuid.uuid4())  # the app identity's object id
        self.admin_client_id = str(uuid.uuid4())
        self.tenant_id = str(uuid.uuid4())
        self._tokens: dict[str, _Issued] = {}
        self._token_lock = threading.Lock()

    def issued_tokens(self) -> list[str]:
        """Every token issued so far (a test looks for them where no secret may be)."""
        with self._token_lock:
            return list(self._tokens)

    def issue_token(self, resource: str = "https://management.azure.com/", *, admin: bool = False) -> str:
        """Mint a token as the identity endpoint would (for tests that bypass azure-identity):
        the app's, or with ``admin`` the unrestricted scene-setter's."""
        now = int(time.time())
        client_id = self.admin_client_id if admin else self.client_id
        object_id = client_id if admin else self.principal_id
        expires_on = now + _TOKEN_LIFETIME_S

        def b64(obj: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

        # JWT-shaped so tools that peek at claims see something plausible; it is not signed.
        token = ".".join(
            [
                b64({"typ": "JWT", "alg": "none"}),
                b64(
                    {
                        "aud": resource,
                        "iss": f"https://sts.windows.net/{self.tenant_id}/",
                        "iat": now,
                        "nbf": now,
                        "exp": expires_on,
                        "appid": client_id,
                        "oid": object_id,
                        "tid": self.tenant_id,
                        "jti": secrets.token_hex(8),
                    }
                ),
                secrets.token_urlsafe(16),
            ]
        )
        with self._token_lock:
            self._tokens[token] = _Issued(
                resource.rstrip("/"), expires_on, None if admin else Principal(client_id, object_id)
            )
        return token

    def principal(self, headers: dict[str, str]) -> Principal | None:
        """Whom an authenticated request is authorized as (None: unrestricted)."""
        token = headers.get("authorization", "").partition(" ")[2].strip()
        with self._token_lock:
            issued = self._tokens.get(token)
        return issued.principal if issued is not None else None

    def authenticate(self, headers: dict[str, str]) -> _Reply | None:
        challenge = {
            "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/'
            f'{self.tenant_id}", error="invalid_token", error_description="The authentication failed."'
        }
        auth = headers.get("authorization", "")
        if not auth:
            return _Reply(
                401,
                arm_error(
                    "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
                ),
                dict(challenge),
            )
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _Reply(
                401,
                arm_error(
                    "AuthenticationFailed", "Authentication failed. The 'Authorization' header is invalid."
                ),
                dict(challenge),
            )
        with self._token_lock:
            issued = self._tokens.get(token.strip())
        if issued is None:
            return _Reply(
                401,
                arm_error("InvalidAuthenticationToken", "The access token is invalid."),
                dict(challenge),
            )
        if issued.expires_on <= time.time():
            return _Reply(
                401,
                arm_error(
                    "ExpiredAuthenticationToken",
                    "The access token expiry UTC time is earlier than current UTC time.",
                ),
                dict(challenge),
            )
        if issued.resource not in _ARM_RESOURCES:
            return _Reply(
                401,
                arm_error(
                    "InvalidAuthenticationTokenAudience",
                    f"The access token has been obtained for wrong audience or resource '{issued.resource}'.",
                ),
                dict(challenge),
            )
        return None

    def serve_token_request(
        self, method: str, headers: dict[str, str], query: dict[str, str], faults: FaultInjector
    ) -> _Reply:
        """App Service managed identity protocol (api-version 2019-08-01)."""

        def fail(status: int, message: str) -> _Reply:
            return _Reply(
                status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())}
            )

        if method != "GET":
            return fail(405, "Only GET is supported.")
        secret = headers.get("x-identity-header")
        if not secret:
            return fail(400, "The X-IDENTITY-HEADER header is required.")
        if not secrets.compare_digest(secret, self.identity_header):
            return fail(401, "Unauthorized: the X-IDENTITY-HEADER value does not match.")
        fault = faults._take_request_fault("msi_token")
        if fault is not None:
            reply = fail(fault.status, f"Injected failure '{fault.code}' (injected by the sandbox).")
            if fault.retry_after is not None:
                reply.headers["Retry-After"] = str(fault.retry_after)
            return reply
        if not query.get("api-version"):
            return fail(400, "The api-version query parameter is required.")
        resource = query.get("resource")
        if not resource:
            return fail(400, "The resource query parameter is required.")
        wanted = query.get("client_id")
        if wanted and wanted not in (self.client_id, self.admin_client_id):
            return fail(400, f"No managed identity with client_id '{wanted}' is assigned to this app.")
        token = self.issue_token(resource, admin=wanted == self.admin_client_id)
        with self._token_lock:
            expires_on = self._tokens[token].expires_on
        return _Reply(
            200,
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": wanted or self.client_id,
            },
        )
