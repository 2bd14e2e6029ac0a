"""Who is calling the operator API, and whether their app roles let them.

In Azure the API sits behind App Service Authentication (Easy Auth) as well as function
keys. Easy Auth validates the caller's Entra ID token and hands the app its claims in
headers it sets itself (clients cannot set them; the platform strips theirs):

* ``X-MS-CLIENT-PRINCIPAL``: base64 of ``{"auth_typ", "name_typ", "role_typ",
  "claims": [{"typ", "val"}, ...]}``; each app role the caller holds is one claim
  (``typ`` ``roles`` for an access token, or the ``role_typ`` the header names);
* ``X-MS-CLIENT-PRINCIPAL-NAME`` / ``-ID`` / ``-IDP``: the caller's name, object id and
  identity provider.

A request without a principal came in on a function key alone: the host has already
checked the key, and function keys are per function, so what such a caller may do is
decided by which functions' keys it holds (a reader's key opens only the read functions).

A principal that cannot be decoded is treated as none, with the reason logged: the
function key then still had to be right, and a broken header never becomes a 500.

``ROUTE_ROLES`` is the one place that says which role each route needs.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

logger = logging.getLogger(__name__)

READ_ROLE = "Patcher.Read"
OPERATE_ROLE = "Patcher.Operate"
# An operator may also look at what it acts on.
_IMPLIED_ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {OPERATE_ROLE: frozenset({READ_ROLE}), READ_ROLE: frozenset()}
)

PRINCIPAL_HEADER = "x-ms-client-principal"
PRINCIPAL_NAME_HEADER = "x-ms-client-principal-name"
PRINCIPAL_ID_HEADER = "x-ms-client-principal-id"
PRINCIPAL_IDP_HEADER = "x-ms-client-principal-idp"
# Easy Auth names the role claim type in role_typ, but puts an access token's app roles
# under their JWT name; either is taken.
ROLE_CLAIM_TYPES = frozenset({"roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"})
_NAME_CLAIM_TYPES = (
    "preferred_username",
    "name",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
    "appid",
    "azp",
)
_ID_CLAIM_TYPES = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
# Far more than any real token's claims; a bigger header is not the platform's.
MAX_PRINCIPAL_BYTES = 64 * 1024

# Routes as the OpenAPI description writes them (under /api), with the role each needs;
# None: open to any caller the host let in (the webhook checks its own signature).
ROUTE_ROLES: Mapping[tuple[str, str], str | None] = MappingProxyType(
    {
        ("GET", "/runs"): READ_ROLE,
        ("GET", "/runs/{id}"): READ_ROLE,
        ("GET", "/runs/{id}/timeline"): READ_ROLE,
        ("GET", "/ui"): READ_ROLE,
        ("GET", "/openapi.json"): READ_ROLE,
        ("GET", "/config"): READ_ROLE,
        ("POST", "/plans"): READ_ROLE,  # touches nothing
        ("GET", "/gitops/syncs"): READ_ROLE,
        ("GET", "/gitops/syncs/{delivery}"): READ_ROLE,
        ("POST", "/runs"): OPERATE_ROLE,  # also a dry run: readers ask POST /plans
        ("POST", "/runs/{id}/{action}"): OPERATE_ROLE,
        ("POST", "/runs/{id}/nodes/{node}/{action}"): OPERATE_ROLE,
        ("DELETE", "/clusters/{name}/lock"): OPERATE_ROLE,
        ("POST", "/gitops/github"): None,
        ("POST", "/automation/update-run"): None,
    }
)


class PrincipalError(ValueError):
    """The principal header is not what the platform sets."""


@dataclass(frozen=True)
class Principal:
    """A caller App Service Authentication vouched for."""

    name: str
    id: str = ""
    identity_provider: str = ""
    roles: frozenset[str] = field(default_factory=frozenset)

    def holds(self, role: str) -> bool:
        return any(role == held or role in _IMPLIED_ROLES.get(held, ()) for held in self.roles)

    @classmethod
    def decode(cls, encoded: str, *, name: str = "", id: str = "", identity_provider: str = "") -> Principal:
        """The principal in an ``X-MS-CLIENT-PRINCIPAL`` value; the ``-NAME``/``-ID``/``-IDP``
        headers, when given, win over the claims (they are what the platform chose)."""
        if len(encoded) > MAX_PRINCIPAL_BYTES:
            raise PrincipalError(f"longer than {MAX_PRINCIPAL_BYTES} characters")
        try:
            raw = base64.b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise PrincipalError("not base64") from None
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            raise PrincipalError("not JSON once decoded") from None
        if not isinstance(document, dict) or not isinstance(document.get("claims"), list):
            raise PrincipalError("not an object with a claims list")
        claims: list[tuple[str, str]] = []
        for claim in document["claims"]:
            if not isinstance(claim, dict) or not isinstance(claim.get("typ"), str):
                raise PrincipalError("a claim without a string typ")
            value = claim.get("val")
            if not isinstance(value, str):
                raise PrincipalError(f"claim {claim['typ'][:64]!r} has no string val")
            claims.append((claim["typ"], value))
        role_types = set(ROLE_CLAIM_TYPES)
        if isinstance(document.get("role_typ"), str):
            role_types.add(document["role_typ"])
        name_types = [document["name_typ"]] if isinstance(document.get("name_typ"), str) else []

        def first(types: list[str] | tuple[str, ...]) -> str:
            return next((value for typ in types for t, value in claims if t == typ and value.strip()), "")

        caller = (
            name.strip() or first([*name_types, *_NAME_CLAIM_TYPES]) or id.strip() or first(_ID_CLAIM_TYPES)
        )
        if not caller:
            raise PrincipalError("names no caller (no name header, name or object id claim)")
        auth_type = document.get("auth_typ")
        return cls(
            name=caller[:200],
            id=id.strip() or first(_ID_CLAIM_TYPES),
            identity_provider=identity_provider.strip() or (auth_type if isinstance(auth_type, str) else ""),
            roles=frozenset(value for typ, value in claims if typ in role_types),
        )

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Principal | None:
        """The caller the platform vouched for, or None (a function key alone, or a header
        that is not the platform's: logged with why, never its value)."""
        encoded = headers.get(PRINCIPAL_HEADER)
        if not encoded:
            if headers.get(PRINCIPAL_NAME_HEADER):
                logger.warning(
                    "%s without %s ignored: the platform always sets both",
                    PRINCIPAL_NAME_HEADER,
                    PRINCIPAL_HEADER,
                )
            return None
        try:
            return cls.decode(
                encoded,
                name=headers.get(PRINCIPAL_NAME_HEADER) or "",
                id=headers.get(PRINCIPAL_ID_HEADER) or "",
                identity_provider=headers.get(PRINCIPAL_IDP_HEADER) or "",
            )
        except PrincipalError as exc:
            logger.warning("%s ignored, treated as no principal: %s", PRINCIPAL_HEADER, exc)
            return None

    def to_header_value(self) -> str:
        """This principal as Easy Auth encodes it (for tests and stand-ins)."""
        claims: list[dict[str, Any]] = [{"typ": "name", "val": self.name}]
        if self.id:
            claims.append(
                {"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": self.id}
            )
        claims += [{"typ": "roles", "val": role} for role in sorted(self.roles)]
        document = {
            "auth_typ": self.identity_provider or "aad",
            "name_typ": "name",
            "role_typ": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
            "claims": claims,
        }
        return base64.b64encode(json.dumps(document).encode()).decode()


def required_role(method: str, route: str) -> str | None:
    """The role ``method`` on ``route`` (as in the OpenAPI description) needs."""
    try:
        return ROUTE_ROLES[(method.upper(), route)]
    except KeyError:
        raise LookupError(f"no role is defined for {method.upper()} {route}; add it to ROUTE_ROLES") from None


def missing_role(principal: Principal | None, method: str, route: str) -> str | None:
    """The role the caller lacks for this call, or None when it may make it."""
    role = required_role(method, route)
    if role is None or principal is None or principal.holds(role):
        return None
    return role
