"""The sandbox's stand-in for App Service Authentication, without a network: what it lets
through, what it strips, what it refuses, and that the app reads what it sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.easy_auth import EasyAuth, UnauthenticatedError
from shared.principal import OPERATE_ROLE, READ_ROLE, Principal

AUTH = EasyAuth.create()


def _as_app_sees(headers: list[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in AUTH.front(headers)}


def test_a_valid_token_becomes_the_principal_the_app_decodes() -> None:
    token = AUTH.mint("alice@contoso.example", [READ_ROLE, OPERATE_ROLE], object_id="oid-1")
    seen = _as_app_sees([("Authorization", f"Bearer {token}"), ("Accept", "application/json")])
    assert Principal.from_headers(seen) == Principal(
        name="alice@contoso.example",
        id="oid-1",
        identity_provider="aad",
        roles=frozenset({READ_ROLE, OPERATE_ROLE}),
    )
    assert seen["authorization"] == f"Bearer {token}" and seen["accept"] == "application/json"


def test_headers_only_the_platform_may_set_are_stripped() -> None:
    forged = [
        (
            "X-MS-CLIENT-PRINCIPAL",
            Principal(name="mallory", roles=frozenset({OPERATE_ROLE})).to_header_value(),
        ),
        ("x-ms-client-principal-name", "mallory"),
        ("X-MS-CLIENT-PRINCIPAL-ID", "0"),
        ("X-MS-TOKEN-AAD-ACCESS-TOKEN", "stolen"),
        ("x-functions-key", "k3y"),
    ]
    assert _as_app_sees(forged) == {"x-functions-key": "k3y"}
    token = AUTH.mint("rita", [READ_ROLE])
    seen = _as_app_sees([*forged, ("Authorization", f"Bearer {token}")])
    assert seen["x-ms-client-principal-name"] == "rita"
    assert Principal.from_headers(seen) == Principal(
        name="rita",
        id=seen["x-ms-client-principal-id"],
        identity_provider="aad",
        roles=frozenset({READ_ROLE}),
    )


def test_other_authorization_schemes_pass_untouched_without_a_principal() -> None:
    assert _as_app_sees([("Authorization", "Basic dTpw")]) == {"authorization": "Basic dTpw"}


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (AUTH.mint("otto", lifetime=-1), "expired"),
        (EasyAuth.create(tenant_id=AUTH.tenant_id).mint("otto"), "signature"),
        (AUTH.mint("otto", audience="api://another-app"), "audience"),
        (EasyAuth(AUTH.signing_key, AUTH.client_id, "another-tenant").mint("otto"), "issuer"),
        ("not.a.jwt!", "not a JWT"),
        ("opaque", "not a JWT"),
        ("", "not a JWT"),
    ],
)
def test_a_token_the_platform_would_refuse_is_a_401_with_a_challenge(token: str, reason: str) -> None:
    with pytest.raises(UnauthenticatedError, match=reason) as refused:
        AUTH.front([("Authorization", f"Bearer {token}")])
    status, headers, _ = refused.value.response
    assert status == 401
    assert dict(headers)["WWW-Authenticate"].startswith('Bearer realm="sandbox", error="invalid_token"')


def test_the_key_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "easy-auth.json"
    AUTH.save(path)
    assert EasyAuth.load(path) == AUTH
    assert path.stat().st_mode & 0o077 == 0  # the signing key is a secret


def test_python_m_sandbox_token_mints_only_roles_the_app_registration_defines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sandbox.__main__ import main

    with pytest.raises(SystemExit) as no_sandbox:
        main(["token", "--state-dir", str(tmp_path), "--user", "rita", "--role", READ_ROLE])
    assert no_sandbox.value.code == 2 and "start the sandbox first" in capsys.readouterr().err
    AUTH.save(tmp_path / "easy-auth.json")
    with pytest.raises(SystemExit) as typo:
        main(["token", "--state-dir", str(tmp_path), "--user", "rita", "--role", "Patcher.Reed"])
    assert typo.value.code == 2
    assert "defines only ['Patcher.Operate', 'Patcher.Read']" in capsys.readouterr().err
    assert main(["token", "--state-dir", str(tmp_path), "--user", "rita", "--role", READ_ROLE]) == 0
    claims = AUTH.verify(capsys.readouterr().out.strip())
    assert (claims["preferred_username"], claims["roles"]) == ("rita", [READ_ROLE])
