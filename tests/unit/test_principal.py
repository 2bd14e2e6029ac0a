"""Decoding the caller App Service Authentication vouches for, and the role each route needs."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from functions.openapi_http import description
from shared.principal import (
    OPERATE_ROLE,
    PRINCIPAL_HEADER,
    PRINCIPAL_NAME_HEADER,
    READ_ROLE,
    ROUTE_ROLES,
    Principal,
    missing_role,
    required_role,
)


def _encoded(document: object) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


# What Easy Auth sets for an Entra ID access token (the shape of the platform's header).
ACCESS_TOKEN_PRINCIPAL = {
    "auth_typ": "aad",
    "name_typ": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
    "role_typ": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
    "claims": [
        {"typ": "aud", "val": "api://5a1f0d3e"},
        {"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": "0b6e-oid"},
        {"typ": "preferred_username", "val": "alice@contoso.example"},
        {"typ": "roles", "val": "Patcher.Read"},
        {"typ": "roles", "val": "Patcher.Operate"},
        {"typ": "groups", "val": "f08bbbea"},
    ],
}


def test_an_access_tokens_principal_gives_its_name_object_id_and_every_role() -> None:
    principal = Principal.from_headers({PRINCIPAL_HEADER: _encoded(ACCESS_TOKEN_PRINCIPAL)})
    assert principal == Principal(
        name="alice@contoso.example",
        id="0b6e-oid",
        identity_provider="aad",
        roles=frozenset({READ_ROLE, OPERATE_ROLE}),
    )


def test_the_platforms_name_header_wins_and_roles_under_role_typ_count() -> None:
    document = {
        **ACCESS_TOKEN_PRINCIPAL,
        "claims": [
            {"typ": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role", "val": "Patcher.Read"}
        ],
    }
    principal = Principal.from_headers(
        {PRINCIPAL_HEADER: _encoded(document), PRINCIPAL_NAME_HEADER: "alice@contoso.example"}
    )
    assert principal is not None
    assert (principal.name, principal.roles) == ("alice@contoso.example", frozenset({READ_ROLE}))


def test_an_apps_token_without_a_name_is_known_by_its_client_id() -> None:
    document = {
        "auth_typ": "aad",
        "claims": [{"typ": "appid", "val": "9c1d-client"}, {"typ": "roles", "val": "x"}],
    }
    principal = Principal.from_headers({PRINCIPAL_HEADER: _encoded(document)})
    assert principal is not None and principal.name == "9c1d-client"


def test_encoding_and_decoding_agree() -> None:
    principal = Principal(name="bob", id="oid-1", identity_provider="aad", roles=frozenset({READ_ROLE}))
    assert Principal.from_headers({PRINCIPAL_HEADER: principal.to_header_value()}) == principal


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("%%% not base64 %%%", "not base64"),
        (base64.b64encode(b"{not json").decode(), "not JSON"),
        (base64.b64encode(b"\xff\xfe").decode(), "not JSON"),
        (_encoded(["claims"]), "not an object with a claims list"),
        (_encoded({"claims": "roles"}), "not an object with a claims list"),
        (_encoded({"claims": [{"typ": "roles", "val": 7}]}), "no string val"),
        (_encoded({"claims": [{"val": "Patcher.Operate"}]}), "without a string typ"),
        (base64.b64encode(b"[" * 100_000).decode(), "longer than"),
        (base64.b64encode(b"[" * 20_000).decode(), "not JSON"),
    ],
)
def test_a_malformed_principal_is_no_principal_with_the_reason_logged(
    value: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.principal"):
        assert Principal.from_headers({PRINCIPAL_HEADER: value, PRINCIPAL_NAME_HEADER: "mallory"}) is None
    assert why in caplog.text
    assert value[:40] not in caplog.text  # the reason, never the header's value


def test_a_principal_naming_no_caller_is_no_principal(caplog: pytest.LogCaptureFixture) -> None:
    nameless = _encoded({"claims": [{"typ": "roles", "val": "Patcher.Operate"}]})
    with caplog.at_level(logging.WARNING, logger="shared.principal"):
        assert Principal.from_headers({PRINCIPAL_HEADER: nameless}) is None
    assert "names no caller" in caplog.text


def test_a_name_header_alone_is_not_a_principal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.principal"):
        assert Principal.from_headers({PRINCIPAL_NAME_HEADER: "mallory"}) is None
    assert "the platform always sets both" in caplog.text


def test_no_headers_is_no_principal() -> None:
    assert Principal.from_headers({}) is None


READER = Principal(name="rita", roles=frozenset({READ_ROLE}))
OPERATOR = Principal(name="otto", roles=frozenset({OPERATE_ROLE}))
NOBODY = Principal(name="nina")


@pytest.mark.parametrize(
    ("principal", "method", "route", "lacking"),
    [
        (READER, "GET", "/runs", None),
        (READER, "GET", "/runs/{id}", None),
        (READER, "POST", "/plans", None),
        (READER, "GET", "/gitops/syncs/{delivery}", None),
        (READER, "POST", "/runs", OPERATE_ROLE),
        (READER, "POST", "/runs/{id}/{action}", OPERATE_ROLE),
        (READER, "POST", "/runs/{id}/nodes/{node}/{action}", OPERATE_ROLE),
        (READER, "DELETE", "/clusters/{name}/lock", OPERATE_ROLE),
        (OPERATOR, "GET", "/runs/{id}/timeline", None),  # an operator also reads
        (OPERATOR, "POST", "/runs/{id}/{action}", None),
        (NOBODY, "GET", "/ui", READ_ROLE),
        (NOBODY, "POST", "/gitops/github", None),  # the webhook carries its own signature
        (None, "POST", "/runs", None),  # a function key alone: its key decided
    ],
)
def test_the_role_a_caller_lacks(
    principal: Principal | None, method: str, route: str, lacking: str | None
) -> None:
    assert missing_role(principal, method, route) == lacking


def test_a_route_without_a_role_is_a_mistake_not_an_open_door() -> None:
    with pytest.raises(LookupError, match="no role is defined for GET /secret"):
        required_role("get", "/secret")


def test_every_route_the_description_names_has_a_role_and_nothing_else() -> None:
    methods = {"get", "put", "post", "delete", "patch"}
    described = {
        (m.upper(), path) for path, item in description()["paths"].items() for m in item if m in methods
    }
    assert described == set(ROUTE_ROLES)


def test_every_operation_that_needs_a_role_documents_the_403() -> None:
    for (method, route), role in ROUTE_ROLES.items():
        responses = description()["paths"][route][method.lower()]["responses"]
        assert ("403" in responses) == (role is not None), (method, route)


def test_every_operation_documents_the_401_of_a_refused_token() -> None:
    for (method, route), _ in ROUTE_ROLES.items():
        assert "401" in description()["paths"][route][method.lower()]["responses"], (method, route)
