"""The simulated ARM on its own, served over TLS with the App Service managed identity:
what the ARM-level integration tests share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from azure.identity import ManagedIdentityCredential

from sandbox.arm import ArmServer, ComputeState
from sandbox.tls import SandboxTLS, create_tls
from sandbox.world import World

# Only the App Service managed-identity settings may be visible to the credential chain.
CREDENTIAL_ENV = [
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
    "IDENTITY_SERVER_THUMBPRINT",
]


@contextmanager
def managed_identity_env(server: ArmServer, ca_path: Path) -> Iterator[None]:
    """Only the App Service managed-identity protocol, pointed at this server, and its CA
    trusted: exactly what the app sees in Azure (and in the sandbox)."""
    mp = pytest.MonkeyPatch()
    for name in CREDENTIAL_ENV:
        mp.delenv(name, raising=False)
    mp.setenv("IDENTITY_ENDPOINT", server.identity_endpoint)
    mp.setenv("IDENTITY_HEADER", server.identity_header)
    mp.setenv("REQUESTS_CA_BUNDLE", str(ca_path))
    try:
        yield
    finally:
        mp.undo()


@contextmanager
def serving_arm(
    world: World,
    state: ComputeState,
    tmp: Path,
    *,
    subscriptions: Iterable[ComputeState] = (),
    deployment: dict[str, Any] | None = None,
) -> Iterator[tuple[ArmServer, SandboxTLS]]:
    """``state`` (and the states of more ``subscriptions``) served over TLS, with the
    managed identity pointed at it, granted what infra/ grants for ``deployment``
    (main.bicep's parameters; by default naming every resource served); stopped (and
    ``world`` closed) afterwards."""
    tls = create_tls(tmp / "tls")
    server = ArmServer(state, tls=tls, subscriptions=subscriptions, deployment=deployment)
    server.start()
    try:
        with managed_identity_env(server, tls.ca_path):
            yield server, tls
    finally:
        server.stop()
        world.close()


def admin_credential(server: ArmServer) -> ManagedIdentityCredential:
    """The sandbox's scene-setting identity, which ARM never restricts: for tests of how the
    simulated services behave, not of what the app's identity may do."""
    return ManagedIdentityCredential(client_id=server.admin_client_id)
