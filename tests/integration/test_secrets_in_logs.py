"""No secret of the sandbox's reaches a log line or an answer of the app, across a whole
rollout and the GitHub webhook, read from what the runner processes wrote (the app's logs,
``runner-N.log`` in the state directory, as the Functions host would ship them).

The secrets are the sandbox's own: the GitHub webhook secret and the signatures made with
it, both API-server tokens (the admin's and the app's ServiceAccount's), the storage
account key, the managed-identity endpoint's header secret and every ARM token it minted
during the run, and a function key sent with every request (header and ``?code=``). The
runner also gets a forged log line (an event id carrying a newline) and must write it
escaped, on one line.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sandbox.azurite import ACCOUNT_KEY
from sandbox.stack import CLUSTER, Sandbox
from shared.gitops.github import sign
from tests.functional.test_secrets_stay_secret import leaks
from tests.integration.sandbox_helpers import Driver

pytestmark = pytest.mark.integration

PAYLOADS = Path(__file__).parent.parent / "payloads"
FUNCTION_KEY = "fk-" + uuid.uuid4().hex + uuid.uuid4().hex[:8]
FORGED = "evt\nERROR functions.runs_http: run forged succeeded\x1b[2J"


def call(
    sandbox: Sandbox, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    sep = "&" if "?" in path else "?"
    req = urllib.request.Request(
        f"{sandbox.functions_url}{path}{sep}code={FUNCTION_KEY}",
        data=body,
        method=method,
        headers={"Content-Type": "application/json", "x-functions-key": FUNCTION_KEY, **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def push(*, after: str) -> bytes:
    """A push to the repository the sandbox's cluster follows (its Flux objects are asked
    to reconcile)."""
    data: dict[str, Any] = json.loads((PAYLOADS / "github-push.json").read_text())
    commit = copy.deepcopy(data["commits"][0])
    commit.update(id=after)
    data.update(after=after, commits=[commit], head_commit=commit)
    return json.dumps(data).encode()


def runner_logs(sandbox: Sandbox) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(sandbox.state_dir.glob("runner-*.log")))


def test_a_rollout_and_the_webhook_echo_no_secret_and_forge_no_log_line(
    sandbox: Sandbox, driver: Driver
) -> None:
    assert sandbox.arm_server is not None
    logs_before = len(runner_logs(sandbox))
    answers: list[tuple[str, bytes]] = []
    signatures: list[str] = []

    # A whole rollout of one pool, started, watched and listed with the function key.
    driver.new_image(pools=["beta"])
    status, body = call(
        sandbox,
        "POST",
        "/api/runs",
        json.dumps({"cluster": CLUSTER, "pools": ["beta"], "reason": "t"}).encode(),
    )
    assert status == 202, body
    answers.append(("POST /api/runs", body))
    run_id = json.loads(body)["id"]

    # The webhook: a signed push the cluster follows, a ping, a wrong signature.
    secret = sandbox.github_webhook_secret
    for event, payload, key in (
        ("push", push(after=uuid.uuid4().hex + "0" * 8), secret),
        ("ping", json.dumps({"zen": "Keep it logically awesome."}).encode(), secret),
        ("push", push(after=uuid.uuid4().hex + "1" * 8), "not-the-secret"),
    ):
        signature = sign(key, payload)
        signatures.append(signature)
        status, body = call(
            sandbox,
            "POST",
            "/api/gitops/github",
            payload,
            **{
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": signature,
            },
        )
        assert status == 401 if key != secret else status in (200, 202), (event, status, body)
        answers.append((f"webhook {event}", body))

    # An event whose id would forge a log line of its own.
    forged = {
        "id": FORGED,
        "topic": "/subscriptions/x/resourceGroups/rg",
        "subject": "s",
        "eventType": "Microsoft.Unknown.Event",
        "eventTime": datetime.now(UTC).isoformat(),
        "data": {"nothing": "here"},
        "dataVersion": "1",
        "metadataVersion": "1",
    }
    # Event Grid's protocol, without the publisher's aeg-output-event-id header (no HTTP
    # header may hold a newline; the body may).
    status, _ = call(
        sandbox,
        "POST",
        "/runtime/webhooks/eventgrid?functionName=azure_events",
        json.dumps([forged]).encode(),
        **{"aeg-event-type": "Notification", "aeg-subscription-name": "VMSS-NODE-PATCHER"},
    )
    assert status == 202

    run = driver.wait(run_id, timeout=240)
    assert run["state"] == "succeeded", driver.explain(run)
    for path in ("/api/runs", f"/api/runs/{run_id}", "/api/gitops/syncs"):
        status, body = call(sandbox, "GET", path)
        assert status == 200
        answers.append((f"GET {path}", body))
    time.sleep(1)  # the runners' last lines reach their files

    # Everything the runners wrote, from their start-up on.
    logs = runner_logs(sandbox)
    assert run_id in logs[logs_before:], "the runners logged the rollout"
    secrets: dict[str, str] = {
        "the GitHub webhook secret": secret,
        "the admin's API-server token": sandbox.kube_token,
        "the app's API-server token": sandbox.app_kube_token,
        "the storage account key": ACCOUNT_KEY,
        "the managed-identity header": sandbox.arm_server.identity_header,
        "the function key": FUNCTION_KEY,
        **{f"signature {i}": s.removeprefix("sha256=") for i, s in enumerate(signatures)},
        # Every ARM token the identity endpoint minted (the app's and the scene-setter's).
        **{f"ARM token {i}": token for i, token in enumerate(sandbox.arm_server.identity.issued_tokens())},
    }
    assert len(secrets) > 9, "the rollout obtained ARM tokens"
    for what, value in secrets.items():
        assert not leaks(logs, value), f"the runners' logs hold part of {what}: {leaks(logs, value)}"
        for where, answer in answers:
            text = answer.decode(errors="replace")
            assert not leaks(text, value), f"{where} answered part of {what}"

    # The forged id is written escaped, on the line that names it; no line starts with it.
    assert "evt\\nERROR functions.runs_http: run forged succeeded\\x1b[2J" in logs
    assert not any(line.startswith("ERROR functions.runs_http: run forged") for line in logs.splitlines())
    assert "\x1b" not in logs
