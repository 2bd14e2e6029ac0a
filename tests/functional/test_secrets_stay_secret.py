"""No error message, node record, response or log line ever holds a setting's value.

Malformed secrets (a kubeconfig pasted base64-encoded, as one line of JSON, with a YAML
mistake on the line of its token, naming a context that is not there, with undecodable
certificate data; a broken storage connection string; a timeout that is no number) are
fed to every parser of a setting: directly, through the app's client cache, and through
the functions as the host calls them (``POST /api/runs``, a node's final failing
delivery, ``GET /api/runs`` and ``GET /api/runs/{id}``). Every output is searched for the
secret and for any 12 characters of it in a row.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage

from shared.adapters.kube import KubeClient
from shared.app import _ClientCache, use_collaborators
from shared.errors import ConfigError
from shared.settings import AppSettings
from tests.harness import Harness

TOKEN = "s3cr3t-TOKEN-7f1c9a2e4b6d8f0a1c3e5b7d9f2a4c6e"
CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJrVENCK3dJSkFPX2tjZXJ0"
GOOD = f"""apiVersion: v1
kind: Config
clusters: [{{name: prod, cluster: {{server: "https://10.0.0.1:443", certificate-authority-data: {CA}}}}}]
users: [{{name: patcher, user: {{token: {TOKEN}}}}}]
contexts: [{{name: prod, context: {{cluster: prod, user: patcher}}}}]
current-context: prod
"""

MALFORMED: dict[str, str] = {
    "base64-encoded by mistake": base64.b64encode(GOOD.encode()).decode(),
    "the bare token pasted": TOKEN,
    "one line of JSON, cut short": json.dumps({"apiVersion": "v1", "users": [{"user": {"token": TOKEN}}]})[
        :-2
    ],
    "a YAML mistake on the token's line": GOOD.replace(f"{{token: {TOKEN}}}", f"{{token: {TOKEN}: [}}"),
    "a tab before the token": GOOD.replace("users:", f"users:\n\t- token: {TOKEN}"),
    "a YAML list": f"- {TOKEN}\n- {TOKEN}\n",
    "a context that is not there": GOOD.replace("current-context: prod", f"current-context: {TOKEN}"),
    "undecodable certificate data": GOOD.replace(CA, f"{TOKEN}!!"),
    "the token where the server goes": GOOD.replace('"https://10.0.0.1:443"', f"[{TOKEN}]"),
}


def leaks(text: str, secret: str, window: int = 12) -> list[str]:
    """The parts of ``secret`` (any ``window`` characters in a row) that ``text`` holds."""
    found = {
        secret[i : i + window]
        for i in range(max(1, len(secret) - window + 1))
        if secret[i : i + window] in text
    }
    return sorted(found)[:3]


def everything_about(exc: BaseException) -> str:
    """What a log line with the traceback would show: messages, reprs and the whole chain."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


def assert_clean(text: str, secret: str, where: str) -> None:
    assert not leaks(text, secret), f"{where} holds part of the setting's value: {leaks(text, secret)}"
    assert not leaks(text, TOKEN), f"{where} holds part of the token"


@pytest.mark.parametrize("value", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_kubeconfig_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        KubeClient.from_kubeconfig(value)
    assert "kubeconfig" in str(exc.value)
    assert_clean(everything_about(exc.value), value, "the error")


def test_a_base64_encoded_kubeconfig_is_named_as_such() -> None:
    with pytest.raises(ConfigError, match="base64"):
        KubeClient.from_kubeconfig(MALFORMED["base64-encoded by mistake"])


def test_a_yaml_mistake_is_located_by_line_and_column_only() -> None:
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        KubeClient.from_kubeconfig(MALFORMED["a YAML mistake on the token's line"])


@pytest.fixture
def real_kube(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """The harness, with clusters built by the app's own client cache from the setting."""

    def use(value: str) -> None:
        monkeypatch.setenv("KUBECONFIG_TEST", value)
        cache = _ClientCache(AppSettings(config_path="unused"), harness.config)
        use_collaborators(dataclasses.replace(harness.deps, kube=cache.kube))

    yield use
    use_collaborators(harness.deps)


def http(functions: dict[str, Any], name: str, method: str, url: str, body: Any = None, **route: str) -> Any:
    req = func.HttpRequest(
        method=method,
        url=url,
        headers={"Content-Type": "application/json"},
        body=json.dumps(body).encode() if body is not None else b"",
        route_params=route,
    )
    return functions[name].get_user_function()(req)


@pytest.mark.parametrize("value", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_kubeconfig_reaches_no_log_record_or_response(
    functions: dict[str, Any],
    harness: Harness,
    real_kube: Callable[[str], None],
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[tuple[str, str]] = []

    # A run planned while the setting is broken.
    real_kube(value)
    started = http(functions, "runs_start", "POST", "/api/runs", {"cluster": "test", "reason": "t"})
    outputs.append(("POST /api/runs", started.get_body().decode()))

    # A run planned while the setting was fine, whose node then meets the broken setting
    # on every delivery up to the last, which records the reason on the node.
    use_collaborators(harness.deps)
    run_id = harness.start(pools=["linux"])
    item = harness.queue.take()[0][0]
    real_kube(value)
    for attempt in (1, 5):
        msg = QueueMessage(id=f"m{attempt}", body=item.to_json().encode(), dequeue_count=attempt)
        try:
            functions["node_work"].get_user_function()(msg)
        except Exception as exc:
            outputs.append((f"delivery {attempt}", everything_about(exc)))
    node = harness.store.get_node(run_id, item.node)
    assert node.reason or node.last_error, "the node records why it failed"
    outputs.append(("the node record", json.dumps(dataclasses.asdict(node), default=str)))
    outputs.append(("dead letters", json.dumps(harness.queue.dead)))
    outputs.append(("queued items", repr(harness.queue.sent)))
    listing = http(functions, "runs_list", "GET", "/api/runs")
    outputs.append(("GET /api/runs", listing.get_body().decode()))
    one = http(functions, "run_item", "GET", f"/api/runs/{run_id}", id=run_id)
    outputs.append(("GET /api/runs/{id}", one.get_body().decode()))
    outputs.append(
        (
            "the log",
            caplog.text
            + "".join(
                everything_about(r.exc_info[1]) for r in caplog.records if r.exc_info and r.exc_info[1]
            ),
        )
    )

    for where, text in outputs:
        assert_clean(text, value, where)
    assert "KUBECONFIG_TEST" in caplog.text + node.reason + node.last_error, "the setting is named"


@pytest.mark.parametrize(
    "value",
    [
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={TOKEN}",  # no endpoints suffix
        f"AccountKey={TOKEN};;;=",
        f"{TOKEN}",
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={TOKEN};TableEndpoint=::{TOKEN}",
    ],
)
def test_a_malformed_storage_connection_string_is_refused_without_echoing_it(value: str) -> None:
    from shared.adapters.workqueue import StorageWorkQueue
    from shared.rollout.store.table import TableRunStore

    settings = AppSettings.from_env({"PATCHER_CONFIG_PATH": "x", "AzureWebJobsStorage": value})
    for build in (TableRunStore.from_settings, StorageWorkQueue.from_settings):
        try:
            build(settings)
        except Exception as exc:
            assert_clean(everything_about(exc), value, build.__qualname__)


@pytest.mark.parametrize("name", ["PATCHER_CONNECT_TIMEOUT", "PATCHER_READ_TIMEOUT"])
def test_a_malformed_timeout_setting_is_refused_without_echoing_it(name: str) -> None:
    value = f"30s-{TOKEN}"
    with pytest.raises(ConfigError) as exc:
        AppSettings.from_env(
            {"PATCHER_CONFIG_PATH": "x", "AzureWebJobsStorage": "UseDevelopmentStorage=true", name: value}
        )
    assert name in str(exc.value)
    assert_clean(everything_about(exc.value), value, "the error")
