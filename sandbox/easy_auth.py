"""App Service Authentication (Easy Auth) and Entra ID, as the sandbox's front plays them.

In Azure the platform sits in front of the Functions host: it validates an Entra ID
bearer token when one is presented, and passes the caller on to the app in headers only
it may set (``X-MS-CLIENT-PRINCIPAL`` and ``-NAME``/``-ID``/``-IDP``), after stripping any
the client sent. infra/ configures it with ``unauthenticatedClientAction: AllowAnonymous``
(function-key callers and webhooks carry no token), so here too:

* no ``Authorization: Bearer``: the request goes on without a principal;
* a token this issuer minted, unexpired, for the app registration: the principal headers
  are set from its claims (``roles`` one claim per app role, as for an access token);
* any other bearer token (bad signature, expired, another audience): 401 with a
  ``WWW-Authenticate`` challenge, and the app never sees the request.

The issuer stands in for Entra ID: it signs tokens with a key kept in the state
directory (HS256; the runners verify with the same key), so tests, ``python -m sandbox
token`` and the CLI can have tokens for named users with chosen roles.

The principal header is built here from the platform's documented shape, independently
of the app's decoder (shared/principal.py), so that the two are checked against each
other rather than sharing a mistake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What Easy Auth owns: a client's own values for these never reach the app.
_PLATFORM_HEADER_PREFIXES = ("x-ms-client-principal", "x-ms-token-")
_ROLE_TYPE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
DEFAULT_LIFETIME_SECONDS = 3600


class UnauthenticatedError(Exception):
    """A bearer token the platform would refuse; ``response`` is its 401."""

    def __init__(self, reason: str, response: tuple[int, list[tuple[str, str]], bytes]) -> None:
        super().__init__(reason)
        self.response = response


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class EasyAuth:
    """The app registration's token issuer and the platform's check of its tokens."""

    signing_key: bytes
    client_id: str
    tenant_id: str

    @classmethod
    def create(cls, *, tenant_id: str | None = None) -> EasyAuth:
        return cls(secrets.token_bytes(32), str(uuid.uuid4()), tenant_id or str(uuid.uuid4()))

    @classmethod
    def load(cls, path: Path) -> EasyAuth:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(bytes.fromhex(data["signingKey"]), data["clientId"], data["tenantId"])

    def save(self, path: Path) -> None:
        text = json.dumps(
            {"signingKey": self.signing_key.hex(), "clientId": self.client_id, "tenantId": self.tenant_id}
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)

    @property
    def issuer(self) -> str:
        return f"https://login.microsoftonline.com/{self.tenant_id}/v2.0"

    @property
    def audiences(self) -> frozenset[str]:
        """infra/ allows the client id and its Application ID URI (``api://CLIENT_ID``)."""
        return frozenset({self.client_id, f"api://{self.client_id}"})

    def mint(
        self,
        user: str,
        roles: Sequence[str] = (),
        *,
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
        object_id: str | None = None,
        audience: str | None = None,
    ) -> str:
        """An access token for ``user`` holding ``roles``, as Entra ID issues it for the app."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": audience or f"api://{self.client_id}",
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "oid": object_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-user:{user}")),
            "tid": self.tenant_id,
            "name": user,
            "preferred_username": user,
            "ver": "2.0",
        }
        if roles:
            claims["roles"] = list(roles)
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode())
            for part in ({"alg": "HS256", "typ": "JWT"}, claims)
        )
        signature = hmac.new(self.signing_key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; ValueError with the reason if the platform would refuse it."""
        parts = token.split(".")
        if len(parts) != 3:
            raise ValueError("the token is not a JWT")
        expected = hmac.new(self.signing_key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            signature = _unb64url(parts[2])
            header = json.loads(_unb64url(parts[0]))
            claims = json.loads(_unb64url(parts[1]))
        except ValueError:
            raise ValueError("the token is not a JWT") from None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            raise ValueError("the token's signature is invalid")
        if not hmac.compare_digest(signature, expected):
            raise ValueError("the token's signature is invalid")
        now = time.time()
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
            raise ValueError("the token is expired")
        if isinstance(claims.get("nbf"), int) and claims["nbf"] > now + 300:
            raise ValueError("the token is not valid yet")
        if claims.get("iss") != self.issuer:
            raise ValueError("the token's issuer is not the tenant's")
        if claims.get("aud") not in self.audiences:
            raise ValueError("the token's audience is not this app")
        return claims

    def principal_headers(self, claims: dict[str, Any]) -> list[tuple[str, str]]:
        """What Easy Auth passes to the app for a validated token's claims."""
        listed: list[dict[str, str]] = []
        for typ, value in claims.items():
            for item in value if isinstance(value, list) else [value]:
                listed.append({"typ": typ, "val": str(item)})
        document = {"auth_typ": "aad", "claims": listed, "name_typ": "name", "role_typ": _ROLE_TYPE}
        name = str(claims.get("preferred_username") or claims.get("name") or claims.get("oid") or "")
        return [
            ("X-MS-CLIENT-PRINCIPAL", base64.b64encode(json.dumps(document).encode()).decode()),
            ("X-MS-CLIENT-PRINCIPAL-NAME", name),
            ("X-MS-CLIENT-PRINCIPAL-ID", str(claims.get("oid", ""))),
            ("X-MS-CLIENT-PRINCIPAL-IDP", "aad"),
        ]

    def front(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The request's headers as the app gets them; UnauthenticatedError for a refused token."""
        kept = [(k, v) for k, v in headers if not k.lower().startswith(_PLATFORM_HEADER_PREFIXES)]
        authorization = next((v for k, v in kept if k.lower() == "authorization"), "")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return kept
        try:
            claims = self.verify(token.strip())
        except ValueError as exc:
            challenge = (
                f'Bearer realm="sandbox", error="invalid_token", error_description="{exc}", '
                f'authorization_uri="https://login.microsoftonline.com/{self.tenant_id}'
                '/oauth2/v2.0/authorize", '
                f'resource_id="{self.client_id}"'
            )
            body = b"You do not have permission to view this directory or page."
            raise UnauthenticatedError(
                str(exc), (401, [("WWW-Authenticate", challenge), ("Content-Type", "text/plain")], body)
            ) from None
        return kept + self.principal_headers(claims)
