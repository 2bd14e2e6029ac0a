"""Who may do what, as infra/ deploys it: App Service Authentication on the function app
(Entra ID, letting function-key callers and webhooks through for the app to judge), and the
app registration's role definitions, whose values are the ones the app checks."""

from __future__ import annotations

import json
import uuid
from typing import Any

from shared.principal import OPERATE_ROLE, READ_ROLE, ROUTE_ROLES
from tests.infra import derive
from tests.infra.derive import INFRA


def _auth_settings() -> dict[str, Any]:
    resources = derive.parse_bicep(INFRA / "app" / "auth.bicep")["resources"]
    (settings,) = [
        r["config"]
        for r in resources.values()
        if r["type"] == "Microsoft.Web/sites/config" and r["config"]["name"] == "authsettingsV2"
    ]
    return dict(settings["properties"])


def test_the_function_app_gets_easy_auth_v2_with_entra_id_when_a_client_id_is_given() -> None:
    main = derive.parse_bicep(INFRA / "main.bicep")
    module = main["modules"]["auth"]
    assert module["detail"]["path"] == "app/auth.bicep"
    assert module["config"]["config"]["params"]["clientId"] == "authClientId"
    assert "authClientId" in json.dumps(module["config"]["condition"])  # deployed only with one
    assert main["parameters"]["authClientId"]["default"] == ""

    settings = _auth_settings()
    assert settings["platform"]["enabled"] is True
    entra = settings["identityProviders"]["azureActiveDirectory"]
    assert entra["enabled"] is True and entra["registration"]["clientId"] == "clientId"
    assert entra["registration"]["openIdIssuer"].endswith("/v2.0")
    assert set(entra["validation"]["allowedAudiences"]) == {"clientId", "api://${clientId}"}


def test_function_key_callers_and_webhooks_are_let_through_for_the_app_to_judge() -> None:
    validation = _auth_settings()["globalValidation"]
    # Return401 would shut out automation with function keys and the webhooks, which
    # carry no Entra ID token; the app refuses a principal without the role instead.
    assert validation["unauthenticatedClientAction"] == "AllowAnonymous"
    assert validation["requireAuthentication"] is False
    assert ROUTE_ROLES[("POST", "/gitops/github")] is None


def test_no_token_is_stored() -> None:
    assert _auth_settings()["login"]["tokenStore"]["enabled"] is False


def test_the_app_registrations_roles_are_the_ones_the_app_checks() -> None:
    roles = json.loads((INFRA / "app-roles.json").read_text(encoding="utf-8"))
    assert sorted(r["value"] for r in roles) == sorted({READ_ROLE, OPERATE_ROLE})
    assert {role for role in ROUTE_ROLES.values() if role} == {READ_ROLE, OPERATE_ROLE}
    ids = [str(uuid.UUID(r["id"])) for r in roles]
    assert len(set(ids)) == len(ids)
    for role in roles:
        assert role["isEnabled"] is True and role["description"] and role["displayName"]
        # People sign in as users; automation as an app (client credentials).
        assert set(role["allowedMemberTypes"]) == {"User", "Application"}
