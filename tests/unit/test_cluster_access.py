"""Cluster credentials: Entra ID tokens for AAD-integrated API servers, and proxies."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.kube import KubeClient

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://10.0.0.1:443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: static}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


@dataclass
class Token:
    token: str
    expires_on: int


class FakeCredential:
    def __init__(self, lifetime: int) -> None:
        self.lifetime = lifetime
        self.scopes: list[str] = []

    def get_token(self, scope: str) -> Token:
        import time

        self.scopes.append(scope)
        return Token(f"t{len(self.scopes)}", int(time.time()) + self.lifetime)


def _auth_header(client: KubeClient) -> str:
    conf = client._api_client.configuration
    return str(conf.get_api_key_with_prefix("authorization"))


def test_an_entra_id_cluster_gets_a_bearer_token_for_the_server_application() -> None:
    cred = FakeCredential(lifetime=3600)
    client = KubeClient.from_azure_ad(
        "https://k8s.example:443/",
        credential=cred,
        audience="6dae42f8-4368-4678-94ff-3960e28e3630",
        ca_pem="-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
    )
    conf = client._api_client.configuration
    assert conf.host == "https://k8s.example:443"
    assert Path(conf.ssl_ca_cert).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert _auth_header(client) == "Bearer t1"
    assert _auth_header(client) == "Bearer t1"  # still valid: not fetched again
    assert cred.scopes == ["6dae42f8-4368-4678-94ff-3960e28e3630/.default"]


def test_a_token_close_to_expiry_is_renewed_before_use() -> None:
    cred = FakeCredential(lifetime=120)  # inside the five-minute renewal margin
    client = KubeClient.from_azure_ad("https://k8s.example", credential=cred, audience="aud")
    assert _auth_header(client) == "Bearer t1"
    assert _auth_header(client) == "Bearer t2"


def test_a_cluster_proxy_is_set_on_the_kubernetes_client() -> None:
    client = KubeClient.from_kubeconfig(
        KUBECONFIG, proxy="http://proxy:3128", no_proxy=["10.0.0.0/8", ".svc"]
    )
    conf = client._api_client.configuration
    assert conf.proxy == "http://proxy:3128" and conf.no_proxy == "10.0.0.0/8,.svc"
    assert conf.host == "https://10.0.0.1:443"
    plain = KubeClient.from_kubeconfig(KUBECONFIG)
    assert plain._api_client.configuration.proxy is None


def _client_cache(monkeypatch: pytest.MonkeyPatch, compute_client: type, pools: dict[str, int]) -> Any:
    """The app's client cache for a test cluster, building ``compute_client`` for Compute."""
    import shared.adapters.compute
    from shared.app import _ClientCache
    from shared.config import parse_config
    from shared.settings import AppSettings
    from tests.harness import config_dict

    monkeypatch.setattr(shared.adapters.compute, "ComputeClient", compute_client)
    monkeypatch.setattr("shared.app.azure_credential", lambda: None)
    return _ClientCache(AppSettings(config_path="unused"), parse_config(config_dict(pools)))


def test_a_cold_workers_steps_get_their_cluster_while_the_compute_sdk_is_still_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first reimage of a cold worker builds its Compute client (importing the SDK,
    # a second or more); the other steps of a first wave must not queue up behind it.
    building, finish = threading.Event(), threading.Event()

    class SlowComputeClient:
        def __init__(self, subscription: str, **_: object) -> None:
            building.set()
            finish.wait(10)

    monkeypatch.setenv("KUBECONFIG_TEST", KUBECONFIG)
    cache = _client_cache(monkeypatch, SlowComputeClient, {"linux": 1})
    first = threading.Thread(target=cache.compute, args=("sub",))
    first.start()
    assert building.wait(5)
    try:
        got: list[KubeClient] = []
        other = threading.Thread(target=lambda: got.append(cache.kube("test")))
        other.start()
        other.join(5)
        assert got and isinstance(got[0], KubeClient), "the cluster's client waited for the Compute SDK"
        assert cache.kube("test") is got[0]
    finally:
        finish.set()
        first.join(5)
    assert isinstance(cache.compute("sub"), SlowComputeClient)


def test_warming_builds_each_configured_client_and_leaves_errors_to_the_step_that_needs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []

    class ComputeClient:
        def __init__(self, subscription: str, **_: object) -> None:
            built.append(subscription)

    monkeypatch.delenv("KUBECONFIG_TEST", raising=False)  # this cluster cannot be reached yet
    cache = _client_cache(monkeypatch, ComputeClient, {"linux": 1, "win": 1})
    cache.warm()
    subscription = cache.config.clusters[0].pools[0].scale_set["subscription"]
    assert built == [subscription], "one Compute client per subscription, built despite the cluster's error"
    assert cache.compute(subscription) is not None and built == [subscription]
    with pytest.raises(Exception, match="KUBECONFIG_TEST"):
        cache.kube("test")
