"""The configuration read from a blob (``PATCHER_CONFIG_BLOB``) through the real
azure-storage-blob client against Azurite, and the app's triggers on top of it: a new
version is taken when its ETag changes, an invalid one is refused with the field and value
named while the last good one stays in force, and the status endpoints answer either way."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
import yaml
from azure.storage.blob import BlobServiceClient

from sandbox.azurite import Azurite
from shared import app
from shared.errors import ConfigError
from tests.app_functions import app_functions
from tests.harness import config_dict

pytestmark = pytest.mark.integration

CONTAINER, NAME = "patcher-config", "patcher.yaml"
REFRESH = 0.2


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with Azurite(tmp_path_factory.mktemp("azurite")) as az:
        BlobServiceClient.from_connection_string(az.connection_string).create_container(CONTAINER)
        yield az


def _reset_app() -> None:
    for cached in (
        app.settings,
        app.config_source,
        app._storage,
        app._client_cache,
        app._real_collaborators,
    ):
        cached.cache_clear()
    app._latest = None
    app.use_collaborators(None)


@pytest.fixture
def blob(azurite: Azurite, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A blob of its own per test, and the app reading it as in Azure (app settings only)."""
    name = f"{request.node.name[:40]}/{NAME}"
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_blob_client(
        CONTAINER, name
    )
    monkeypatch.delenv("PATCHER_CONFIG_PATH", raising=False)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("PATCHER_CONFIG_BLOB", f"{CONTAINER}/{name}")
    monkeypatch.setenv("PATCHER_CONFIG_REFRESH", str(REFRESH))
    monkeypatch.setenv("KUBECONFIG_TEST", "unused")
    _reset_app()
    yield client
    _reset_app()


def upload(client: Any, config: dict[str, Any] | str) -> str:
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    return str(client.upload_blob(text.encode(), overwrite=True)["etag"])


def valid(max_concurrent: int = 10) -> dict[str, Any]:
    return config_dict({"linux": 1}, maxConcurrentNodes=max_concurrent)


def invalid() -> dict[str, Any]:
    config = valid()
    config["clusters"][0]["pools"][0]["maxUnavailable"] = "lots"
    return config


def call(name: str, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    req = func.HttpRequest(
        method=method,
        url=url,
        body=json.dumps(body).encode() if body is not None else b"",
        headers={"content-type": "application/json"},
    )
    resp = app_functions()[name].get_user_function()(req)
    return resp.status_code, json.loads(resp.get_body())


def settle() -> None:
    time.sleep(REFRESH * 1.5)


def test_a_new_version_is_in_force_once_its_etag_changes(blob: Any) -> None:
    first = upload(blob, valid(10))
    assert app.collaborators().config.clusters[0].max_concurrent_nodes == 10
    second = upload(blob, valid(4))
    assert second != first
    settle()
    assert app.collaborators().config.clusters[0].max_concurrent_nodes == 4
    status, answer = call("config_status", "GET", "/api/config")
    assert status == 200
    assert answer["state"] == "ok" and answer["acting"] is True
    assert answer["inForce"]["etag"] == second and answer["refused"] is None


def test_an_invalid_version_is_refused_naming_field_and_value_and_the_last_good_stays(
    blob: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good = upload(blob, valid(7))
    assert app.collaborators().config.clusters[0].max_concurrent_nodes == 7
    bad = upload(blob, invalid())
    settle()
    with caplog.at_level(logging.ERROR, logger="shared.config_source"):
        deps = app.collaborators()
    assert deps.config.clusters[0].max_concurrent_nodes == 7
    assert "clusters[0].pools[0].maxUnavailable" in caplog.text and "'lots'" in caplog.text
    assert f"version {good} stays in force" in caplog.text
    _, answer = call("config_status", "GET", "/api/config")
    assert answer["state"] == "refused" and answer["acting"] is True
    assert answer["inForce"]["etag"] == good
    assert answer["refused"]["etag"] == bad
    assert "clusters[0].pools[0].maxUnavailable" in answer["refused"]["reason"]
    assert "'lots'" in answer["refused"]["reason"]
    status, runs = call("runs_list", "GET", "/api/runs")
    assert status == 200 and "runs" in runs
    # Fixed: the new version is taken, and the refusal is over.
    fixed = upload(blob, valid(3))
    settle()
    assert app.collaborators().config.clusters[0].max_concurrent_nodes == 3
    _, answer = call("config_status", "GET", "/api/config")
    assert answer["state"] == "ok" and answer["inForce"]["etag"] == fixed and answer["refused"] is None


def test_with_no_good_version_the_app_refuses_to_act_and_still_answers_status(
    blob: Any, caplog: pytest.LogCaptureFixture
) -> None:
    upload(blob, invalid())
    deps = app.collaborators()
    with pytest.raises(ConfigError, match=r"refuses to act.*maxUnavailable.*'lots'"):
        _ = deps.config.clusters
    status, runs = call("runs_list", "GET", "/api/runs")
    assert status == 200 and "runs" in runs
    with caplog.at_level(logging.ERROR):
        status, _ = call("runs_start", "POST", "/api/runs", {"cluster": "test", "reason": "r"})
    assert status == 500
    assert "maxUnavailable" in caplog.text
    _, answer = call("config_status", "GET", "/api/config")
    assert answer["state"] == "refused" and answer["acting"] is False and answer["inForce"] is None
    assert "no earlier version is in force" in answer["reason"] and "'lots'" in answer["reason"]


def test_a_blob_that_does_not_exist_is_named_and_the_status_says_so(blob: Any) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        _ = app.collaborators().config.workflow
    _, answer = call("config_status", "GET", "/api/config")
    assert answer["state"] == "unreadable" and answer["acting"] is False
    assert "does not exist" in answer["reason"]
