"""Cluster credentials: Entra ID tokens for AAD-integrated API servers, and proxies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.kube import KubeClient

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


def test_an_aad_cluster_gets_a_bearer_token_for_the_aks_server_application() -> None:
    cred = FakeCredential(lifetime=3600)
    client = KubeClient.from_azure_ad(
        "https://aks.example:443/",
        credential=cred,
        audience="6dae42f8-4368-4678-94ff-3960e28e3630",
        ca_pem="-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
    )
    conf = client._api_client.configuration
    assert conf.host == "https://aks.example:443"
    assert Path(conf.ssl_ca_cert).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert _auth_header(client) == "Bearer t1"
    assert _auth_header(client) == "Bearer t1"  # still valid: not fetched again
    assert cred.scopes == ["6dae42f8-4368-4678-94ff-3960e28e3630/.default"]


def test_a_token_close_to_expiry_is_renewed_before_use() -> None:
    cred = FakeCredential(lifetime=120)  # inside the five-minute renewal margin
    client = KubeClient.from_azure_ad("https://aks.example", credential=cred, audience="aud")
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
