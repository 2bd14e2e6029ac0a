"""Who may do what, through the sandbox's front, which stands in for App Service
Authentication: real HTTP to the runners, Entra ID-shaped bearer tokens the sandbox
issues, the principal headers the platform sets (and strips when a client sends them)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.stack import CLUSTER, Sandbox
from shared.principal import OPERATE_ROLE, READ_ROLE, Principal
from tests.integration.sandbox_helpers import run_cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def api(
    sandbox: Sandbox,
    method: str,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> requests.Response:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return requests.request(method, f"{sandbox.functions_url}/api{path}", json=body, headers=sent, timeout=30)


@pytest.fixture
def planned_run(sandbox: Sandbox) -> Iterator[str]:
    """A run that waits for a notBefore an hour away: acted on, it never touches a node.
    Cancelled afterwards by a function-key caller so that the cluster is free again."""
    later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    body = {"cluster": CLUSTER, "pools": ["beta"], "reason": "roles", "notBefore": later}
    deadline = time.monotonic() + 60
    while True:
        started = api(
            sandbox,
            "POST",
            "/runs",
            token=sandbox.user_token("otto@contoso.example", [OPERATE_ROLE]),
            body=body,
        )
        # The sweeper frees the cluster of the previous test's cancelled run within a sweep or two.
        if started.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert started.status_code == 202, started.text
    run_id = str(started.json()["id"])
    yield run_id
    assert api(sandbox, "POST", f"/runs/{run_id}/cancel").status_code in (202, 409)
    # The cancel frees the cluster through a queued admission, a moment later: free it now
    # (or find it free, 404), so that the next test's start is not refused with a 409.
    freed = api(sandbox, "DELETE", f"/clusters/{CLUSTER}/lock?reason=test+teardown")
    assert freed.status_code in (200, 404), freed.text


def test_a_reader_lists_and_shows_runs_and_gets_403_on_every_action(
    sandbox: Sandbox, planned_run: str
) -> None:
    reader = sandbox.user_token("rita@contoso.example", [READ_ROLE])
    listed = api(sandbox, "GET", "/runs", token=reader)
    assert listed.status_code == 200 and planned_run in [r["id"] for r in listed.json()["runs"]]
    shown = api(sandbox, "GET", f"/runs/{planned_run}", token=reader)
    assert shown.status_code == 200 and shown.json()["state"] == "planned"

    for method, path, body in [
        ("POST", "/runs", {"cluster": CLUSTER}),
        ("POST", f"/runs/{planned_run}/pause", None),
        ("POST", f"/runs/{planned_run}/cancel", None),
        ("POST", f"/runs/{planned_run}/nodes/any-node/retry", None),
        ("POST", f"/runs/{planned_run}/nodes/any-node/release", None),
        ("DELETE", f"/clusters/{CLUSTER}/lock", None),
    ]:
        refused = api(sandbox, method, path, token=reader, body=body)
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.json()["missingRole"] == OPERATE_ROLE
        assert "rita@contoso.example does not hold the app role Patcher.Operate" in refused.json()["error"]
    assert api(sandbox, "GET", f"/runs/{planned_run}", token=reader).json()["state"] == "planned"


def test_an_operator_acts_and_the_run_records_who_asked(sandbox: Sandbox, planned_run: str) -> None:
    operator = sandbox.user_token("otto@contoso.example", [OPERATE_ROLE])
    paused = api(sandbox, "POST", f"/runs/{planned_run}/pause", token=operator)
    assert (paused.status_code, paused.json()["stateReason"]) == (202, "paused by otto@contoso.example")
    cancelled = api(sandbox, "POST", f"/runs/{planned_run}/cancel", token=operator)
    assert cancelled.status_code == 202
    run = api(sandbox, "GET", f"/runs/{planned_run}", token=operator).json()
    assert (run["state"], run["stateReason"]) == ("cancelled", "cancelled by otto@contoso.example")


def test_principal_headers_a_client_sends_are_stripped_and_never_who_asked(
    sandbox: Sandbox, planned_run: str
) -> None:
    # What a forger would send: a whole principal as the platform encodes it, and a name.
    forged_reader = Principal(name="mallory@evil.example", roles=frozenset({READ_ROLE}))
    forged = {
        "X-MS-CLIENT-PRINCIPAL": forged_reader.to_header_value(),
        "X-MS-CLIENT-PRINCIPAL-NAME": "mallory@evil.example",
        "X-MS-CLIENT-PRINCIPAL-ID": "00000000-0000-0000-0000-000000000000",
    }
    # Alone, they are dropped: the caller is known only by its function key (and the
    # forged reader role, which would have refused the pause, is not applied either).
    paused = api(sandbox, "POST", f"/runs/{planned_run}/pause", headers=forged)
    assert (paused.status_code, paused.json()["stateReason"]) == (202, "paused by function key")
    # Beside a real token they are dropped too: the token's principal is the caller.
    resumed = api(
        sandbox,
        "POST",
        f"/runs/{planned_run}/resume",
        headers=forged,
        token=sandbox.user_token("otto@contoso.example", [OPERATE_ROLE]),
    )
    assert (resumed.status_code, resumed.json()["stateReason"]) == (202, "resumed by otto@contoso.example")
    reader_with_forged_name = api(
        sandbox,
        "POST",
        f"/runs/{planned_run}/pause",
        headers={"X-MS-CLIENT-PRINCIPAL-NAME": "otto@contoso.example"},
        token=sandbox.user_token("rita@contoso.example", [READ_ROLE]),
    )
    assert reader_with_forged_name.status_code == 403
    assert "rita@contoso.example" in reader_with_forged_name.json()["error"]


@pytest.mark.parametrize("kind", ["expired", "foreign-signature", "other-audience", "not-a-jwt"])
def test_a_token_the_platform_would_refuse_is_401_and_reaches_no_function(
    sandbox: Sandbox, planned_run: str, kind: str
) -> None:
    from sandbox.easy_auth import EasyAuth

    token = {
        "expired": lambda: sandbox.user_token("otto", [OPERATE_ROLE], lifetime=-60),
        "foreign-signature": lambda: EasyAuth.create(tenant_id=sandbox.easy_auth.tenant_id).mint(
            "otto", [OPERATE_ROLE]
        ),
        "other-audience": lambda: sandbox.user_token("otto", [OPERATE_ROLE], audience="api://someone-else"),
        "not-a-jwt": lambda: "opaque",
    }[kind]()
    refused = api(sandbox, "POST", f"/runs/{planned_run}/pause", token=token)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith('Bearer realm="sandbox", error="invalid_token"')
    assert api(sandbox, "GET", f"/runs/{planned_run}").json()["state"] == "planned"


def test_the_cli_sends_a_token_minted_by_python_m_sandbox_token(sandbox: Sandbox, planned_run: str) -> None:
    mint = ["token", "--state-dir", str(sandbox.state_dir), "--user", "rita", "--role", READ_ROLE]
    minted = subprocess.run(
        [sys.executable, "-m", "sandbox", *mint],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = minted.stdout.strip()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(sandbox, *args, token=token, timeout=60)

    shown = cli("show", planned_run, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    refused = cli("pause", planned_run)
    assert refused.returncode == 1
    assert (
        "HTTP 403" in refused.stderr and "rita does not hold the app role Patcher.Operate" in refused.stderr
    )
    bad = cli("--token", "Bearer x", "runs")
    assert bad.returncode == 2 and "without 'Bearer '" in bad.stderr
