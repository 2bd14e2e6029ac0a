"""Request headers as App Service Authentication sets them for a signed-in caller."""

from __future__ import annotations

from shared.principal import OPERATE_ROLE, PRINCIPAL_HEADER, PRINCIPAL_NAME_HEADER, Principal


def easy_auth_headers(name: str, *roles: str, object_id: str = "") -> dict[str, str]:
    principal = Principal(name=name, id=object_id, identity_provider="aad", roles=frozenset(roles))
    return {PRINCIPAL_HEADER: principal.to_header_value(), PRINCIPAL_NAME_HEADER: name}


def operator_headers(name: str) -> dict[str, str]:
    return easy_auth_headers(name, OPERATE_ROLE)
