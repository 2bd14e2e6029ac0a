"""The GitOps webhook, queue trigger and status API, called as the host calls them: real
``HttpRequest`` and ``QueueMessage`` objects, in-memory store and clusters. Property-based
tests throw arbitrary headers and bodies at the webhook."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared.app import use_collaborators
from shared.gitops.github import PushEvent, sign
from shared.gitops.service import MemorySyncQueue, SyncMessage, use_sync_queue
from shared.rollout.ports import Collaborators
from tests.fakes_flux import NS, FakeCustomObjects, fleet, gitops_config, gitops_deps

PAYLOADS = Path(__file__).parent.parent / "payloads"
SECRET = "It's a Secret to Everybody"
NEXT_SECRET = "the next secret"
PUSH = json.loads((PAYLOADS / "github-push.json").read_text())
PUSH["commits"][0].update(added=["apps/web/deploy.yaml"], modified=[])
PUSH_BODY = json.dumps(PUSH).encode()


@pytest.fixture(autouse=True, scope="module")
def secrets_in_app_settings() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("GITHUB_WEBHOOK_SECRET", "GITHUB_WEBHOOK_SECRET_NEXT")}
    os.environ["GITHUB_WEBHOOK_SECRET"] = SECRET
    os.environ["GITHUB_WEBHOOK_SECRET_NEXT"] = NEXT_SECRET
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class World:
    """One app instance's view: a cluster with Flux objects, a store, the hand-off queue."""

    def __init__(self, **gitops: Any) -> None:
        self.cluster: FakeCustomObjects = fleet()
        config = gitops_config(**gitops)
        config["gitops"]["secrets"].append({"setting": "GITHUB_WEBHOOK_SECRET_NEXT"})
        self.deps: Collaborators = gitops_deps({"prod": self.cluster}, config)
        self.queue = MemorySyncQueue()

    def __enter__(self) -> World:
        use_collaborators(self.deps)
        use_sync_queue(self.queue)
        return self

    def __exit__(self, *_exc: object) -> None:
        use_collaborators(None)
        use_sync_queue(None)


@pytest.fixture
def world() -> Iterator[World]:
    with World() as w:
        yield w


def headers_for(
    body: bytes,
    *,
    event: str = "push",
    delivery: str = "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    secret: str = SECRET,
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(secret, body),
    }


def post(functions: dict[str, Any], body: bytes, headers: dict[str, str]) -> func.HttpResponse:
    req = func.HttpRequest(method="POST", url="/api/gitops/github", headers=headers, body=body)
    return functions["gitops_github"].get_user_function()(req)


def get(functions: dict[str, Any], name: str, **route: str) -> tuple[int, Any]:
    req = func.HttpRequest(method="GET", url="/api/gitops/syncs", body=b"", route_params=route)
    resp = functions[name].get_user_function()(req)
    return resp.status_code, json.loads(resp.get_body())


# ---- behaviour ----------------------------------------------------------------------------------


def test_a_signed_push_annotates_the_source_and_the_touched_kustomization(
    functions: dict, world: World
) -> None:
    resp = post(functions, PUSH_BODY, headers_for(PUSH_BODY))
    assert resp.status_code == 200, resp.get_body()
    body = json.loads(resp.get_body())
    assert body["clusters"]["prod"]["objects"] == [
        "GitRepository/flux-system/fleet",
        "Kustomization/flux-system/apps",
    ]
    assert world.cluster.annotation("gitrepositories", NS, "fleet") == body["requestedAt"]
    assert world.cluster.annotation("kustomizations", NS, "infra") is None


def test_the_second_secret_is_accepted_during_a_rotation(functions: dict, world: World) -> None:
    assert post(functions, PUSH_BODY, headers_for(PUSH_BODY, secret=NEXT_SECRET)).status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"X-Hub-Signature-256": None},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Hub-Signature-256": sign("wrong", PUSH_BODY)},
        {"X-Hub-Signature-256": None, "X-Hub-Signature": "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6"},
    ],
)
def test_a_missing_or_wrong_signature_gets_401_with_no_detail(
    functions: dict, world: World, change: dict
) -> None:
    headers = {k: v for k, v in {**headers_for(PUSH_BODY), **change}.items() if v is not None}
    resp = post(functions, PUSH_BODY, headers)
    assert resp.status_code == 401
    assert resp.get_body() == b""
    assert world.cluster.calls == []


def test_ping_gets_200_and_other_events_202_with_a_reason(functions: dict, world: World) -> None:
    ping = (PAYLOADS / "github-ping.json").read_bytes()
    assert post(functions, ping, headers_for(ping, event="ping")).status_code == 200
    resp = post(functions, PUSH_BODY, headers_for(PUSH_BODY, event="pull_request"))
    assert resp.status_code == 202
    assert "pull_request" in json.loads(resp.get_body())["reason"]
    assert world.cluster.calls == []


def test_an_oversized_body_gets_413_before_anything_reads_it(functions: dict) -> None:
    with World(maxBodyBytes=4096) as w:
        big = b"{" + b" " * 5000 + b"}"
        assert post(functions, big, headers_for(big)).status_code == 413
        declared = {**headers_for(PUSH_BODY), "Content-Length": "99999999"}
        assert post(functions, PUSH_BODY, declared).status_code == 413
        assert w.cluster.calls == []


@pytest.mark.parametrize(
    ("body", "headers", "needle"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b'{"ref": "refs/heads/main"}', {}, "repository"),
        (PUSH_BODY, {"X-GitHub-Delivery": ""}, "X-GitHub-Delivery"),
        (PUSH_BODY, {"Content-Type": "application/x-www-form-urlencoded"}, "application/json"),
        (PUSH_BODY, {"Content-Length": "many"}, "Content-Length"),
    ],
)
def test_a_malformed_signed_push_gets_400_with_a_reason(
    functions: dict, world: World, body: bytes, headers: dict[str, str], needle: str
) -> None:
    resp = post(functions, body, {**headers_for(body), **headers})
    assert resp.status_code == 400
    assert needle in json.loads(resp.get_body())["error"]


def test_a_replayed_delivery_is_acknowledged_and_not_acted_on_twice(functions: dict, world: World) -> None:
    assert post(functions, PUSH_BODY, headers_for(PUSH_BODY)).status_code == 200
    patches = len(world.cluster.patches)
    again = post(functions, PUSH_BODY, headers_for(PUSH_BODY))
    assert again.status_code == 200 and json.loads(again.get_body())["status"] == "duplicate"
    assert len(world.cluster.patches) == patches


def test_the_app_refuses_webhooks_when_no_secret_is_configured(functions: dict, world: World) -> None:
    saved = os.environ.pop("GITHUB_WEBHOOK_SECRET"), os.environ.pop("GITHUB_WEBHOOK_SECRET_NEXT")
    try:
        resp = post(functions, PUSH_BODY, headers_for(PUSH_BODY))
    finally:
        os.environ["GITHUB_WEBHOOK_SECRET"], os.environ["GITHUB_WEBHOOK_SECRET_NEXT"] = saved
    assert resp.status_code == 500
    assert world.cluster.calls == []


def test_no_secret_or_signature_is_logged(
    functions: dict, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    post(functions, PUSH_BODY, headers_for(PUSH_BODY, delivery="a"))
    post(
        functions, PUSH_BODY, {**headers_for(PUSH_BODY, delivery="b"), "X-Hub-Signature-256": sign("x", b"")}
    )
    text = caplog.text
    for secret in (SECRET, NEXT_SECRET, sign(SECRET, PUSH_BODY)[7:], sign("x", b"")[7:]):
        assert secret not in text


def test_status_endpoints_list_the_sync_and_show_flux_results(functions: dict, world: World) -> None:
    token = json.loads(post(functions, PUSH_BODY, headers_for(PUSH_BODY, delivery="d-1")).get_body())[
        "requestedAt"
    ]
    world.cluster.reconcile_all()
    status, listed = get(functions, "gitops_syncs")
    assert status == 200 and [s["delivery"] for s in listed["syncs"]] == ["d-1"]
    status, item = get(functions, "gitops_sync_item", delivery="d-1")
    assert status == 200
    assert item["commit"] == PUSH["after"] and item["ref"] == "refs/heads/main"
    objects = item["results"]["prod"]["objects"]
    assert {o["flux"]["lastHandledReconcileAt"] for o in objects} == {token}
    assert get(functions, "gitops_sync_item", delivery="nope")[0] == 404


def test_the_queue_trigger_finishes_a_handed_off_cluster(functions: dict, world: World) -> None:
    from shared.gitops.service import GitOpsService

    answer = GitOpsService(world.deps, queue=lambda: world.queue, max_inline_objects=1).handle_push(
        "d-q", PushEvent.from_json(PUSH)
    )
    assert answer.status == 202 and world.queue.sent == [SyncMessage("d-q", "prod")]
    msg = QueueMessage(id="m1", body=world.queue.sent[0].to_json().encode(), dequeue_count=1)
    functions["gitops_sync"].get_user_function()(msg)
    assert world.cluster.annotation("kustomizations", NS, "apps") == answer.body["requestedAt"]
    _, item = get(functions, "gitops_sync_item", delivery="d-q")
    assert item["results"]["prod"]["state"] == "done"


def test_a_malformed_queue_message_is_dropped_without_retry(functions: dict, world: World) -> None:
    functions["gitops_sync"].get_user_function()(QueueMessage(id="m2", body=b"\xff", dequeue_count=1))
    assert world.cluster.calls == []


# ---- properties ------------------------------------------------------------------------------------

HEADER_NAMES = st.sampled_from(
    [
        "X-Hub-Signature-256",
        "X-Hub-Signature",
        "X-GitHub-Event",
        "X-GitHub-Delivery",
        "Content-Length",
        "Content-Type",
        "User-Agent",
    ]
) | st.text(min_size=1, max_size=20)
HEADER_VALUES = st.text(max_size=80) | st.sampled_from(
    ["push", "ping", "sha256=", "application/json", "0", "-1"]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
PUSH_KEYS = st.sampled_from([*sorted(PUSH), "commits", "size", "distinct_size"])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "push-mutated", "push"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    data = json.loads(PUSH_BODY)
    if kind == "push-mutated":
        for key, value in draw(st.dictionaries(PUSH_KEYS, JSON, min_size=1, max_size=3)).items():
            data[key] = value
        if draw(st.booleans()):
            data["commits"] = [
                draw(st.dictionaries(st.sampled_from(["id", "added", "removed", "modified"]), JSON))
            ]
    return json.dumps(data).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies(), headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=6), forge=st.integers(0, 3)
)
def test_no_request_without_a_valid_signature_reaches_any_cluster(
    functions: dict, body: bytes, headers: dict[str, str], forge: int
) -> None:
    headers = {k: v for k, v in headers.items() if k.lower() != "x-hub-signature-256"}
    if forge == 1:
        headers["X-Hub-Signature-256"] = sign("a guess", body)
    elif forge == 2:
        headers["X-Hub-Signature-256"] = sign(SECRET, body + b"tampered")
    elif forge == 3:
        headers["X-Hub-Signature-256"] = sign(SECRET, body).upper()
    with World() as w:
        resp = post(functions, body, headers)
        event(f"status {resp.status_code}")
        assert resp.status_code in (400, 401, 413), resp.get_body()
        assert w.cluster.calls == []
        assert w.deps.store.list_records("delivery") == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies(),
    # Mostly pushes with GitHub-like delivery ids, so that most examples reach the sync.
    event_type=st.one_of(
        st.just("push"),
        st.just("push"),
        st.just("push"),
        st.sampled_from(["ping", "create", ""]),
        st.text(max_size=10),
    ),
    delivery=st.uuids().map(str) | st.text(max_size=40),
    extra=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=3),
)
def test_no_signed_input_crashes_the_webhook(
    functions: dict, body: bytes, event_type: str, delivery: str, extra: dict[str, str]
) -> None:
    extra = {k: v for k, v in extra.items() if k.lower() not in ("x-hub-signature-256", "content-length")}
    headers = {**extra, **headers_for(body, event=event_type, delivery=delivery)}
    with World() as w:
        resp = post(functions, body, headers)
        event(f"status {resp.status_code}")
        assert resp.status_code in (200, 202, 400), resp.get_body()
        if resp.status_code == 400:
            assert w.cluster.patches == []
