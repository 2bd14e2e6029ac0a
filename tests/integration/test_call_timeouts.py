"""Every outbound Azure call ends well inside a step's lease, and a failure to get an
answer or a token is a ``TemporaryError``.

Real SDK clients (azure-mgmt-compute, azure-data-tables, azure-storage-queue,
azure-identity) over real sockets against servers on loopback that never answer, with the
timeouts set small through the app settings the app reads (``AppSettings.from_env``). The
SDKs' defaults are 300 s to connect and 300 s per read, retried: against these servers a
call without the app's settings would hang for minutes (the pytest timeout fails it).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from sandbox.arm import ArmServer, ComputeState
from sandbox.tls import SandboxTLS, create_tls
from sandbox.world import World
from shared import settings as app_settings_module
from shared.adapters.compute import ComputeClient, InstanceRef
from shared.adapters.workqueue import StorageWorkQueue, WorkItem
from shared.errors import PermanentError, TemporaryError
from shared.rollout.store.table import TableRunStore
from shared.settings import AppSettings, azure_credential
from tests.integration.arm_helpers import CREDENTIAL_ENV as IDENTITY_SETTINGS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SUB = "5d0c3e2a-1f4b-4c8e-9a71-2b6d8f0e4c13"
RG = "rg-timeouts"
VMSS = "vmss-timeouts"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
READ = 0.5
CONNECT = 0.5
# Generous for a loaded 2-core machine, and far below any SDK default.
BOUND = 8.0
# The managed identity's own settings too: each test points them where it wants.
CREDENTIAL_ENV = [*IDENTITY_SETTINGS, "IDENTITY_ENDPOINT", "IDENTITY_HEADER"]


class SilentServer:
    """Accepts connections (over TLS when given a context, handshake included) and never
    answers a request: a hung endpoint, a proxy that lost its upstream."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._tls = tls
        self._held: list[socket.socket] = []
        self._stop = False
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            if self._tls is not None:
                try:
                    conn = self._tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.close()
                    continue
            self._held.append(conn)  # read nothing, answer nothing

    def close(self) -> None:
        self._stop = True
        self._sock.close()
        for conn in self._held:
            conn.close()


class FullBacklog:
    """A listening socket that never accepts, its backlog full: a connection attempt
    hangs as to a host that drops SYNs."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(0)
        self.port = self._sock.getsockname()[1]
        self._filler = [socket.create_connection(("127.0.0.1", self.port), timeout=1)]
        # The backlog of 0 holds one connection; the next SYN is dropped (check it is).
        probe = socket.socket()
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", self.port))
            self._filler.append(probe)
        except TimeoutError:
            probe.close()

    def close(self) -> None:
        for s in self._filler:
            s.close()
        self._sock.close()


class StaticCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("token", int(time.time()) + 3600)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> SandboxTLS:
    return create_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def trust(tls: SandboxTLS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_path))


@pytest.fixture
def silent(tls: SandboxTLS) -> Iterator[SilentServer]:
    server = SilentServer(tls.server_context())
    yield server
    server.close()


@pytest.fixture
def silent_http() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def settings(**env: str) -> AppSettings:
    return AppSettings.from_env(
        {
            "PATCHER_CONFIG_PATH": "unused.yaml",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "PATCHER_CONNECT_TIMEOUT": str(CONNECT),
            "PATCHER_READ_TIMEOUT": str(READ),
            **env,
        }
    )


def storage(url: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
        f"QueueEndpoint={url}/devstoreaccount1;TableEndpoint={url}/devstoreaccount1;"
    )


def compute(s: AppSettings, endpoint: str, credential: Any) -> ComputeClient:
    return ComputeClient(
        SUB,
        endpoint=endpoint,
        audience="https://management.azure.com",
        credential=credential,
        connection_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
    )


REF = InstanceRef(SUB, RG, VMSS, "0")


def timed(fn: Any) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


# ---- ARM ------------------------------------------------------------------------------------


def test_an_arm_read_that_gets_no_answer_ends_at_the_read_timeout_as_a_temporary_error(
    silent: SilentServer, trust: None
) -> None:
    client = compute(settings(), silent.url, StaticCredential())
    error, took = timed(lambda: client.get_instance(REF))
    assert isinstance(error, TemporaryError), error
    assert "ServiceResponse" in str(error)
    assert READ <= took < BOUND
    assert silent.connections == 1  # ARM calls are never retried by the SDK


def test_an_arm_call_that_cannot_connect_ends_at_the_connect_timeout_as_a_temporary_error(
    trust: None,
) -> None:
    backlog = FullBacklog()
    try:
        client = compute(settings(), f"https://127.0.0.1:{backlog.port}", StaticCredential())
        error, took = timed(lambda: client.get_model_image(REF))
    finally:
        backlog.close()
    assert isinstance(error, TemporaryError), error
    assert CONNECT <= took < BOUND


def test_the_defaults_are_well_inside_the_lease() -> None:
    s = settings(PATCHER_CONNECT_TIMEOUT="", PATCHER_READ_TIMEOUT="")
    assert (s.connect_timeout, s.read_timeout) == (10.0, 30.0)
    assert s.longest_call <= 120 / 2


def test_an_api_server_that_gets_no_answer_ends_at_the_read_timeout_as_a_temporary_error(
    silent: SilentServer, tls: SandboxTLS, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    from shared.app import _ClientCache
    from shared.config import parse_config
    from tests.harness import config_dict

    ca = base64.b64encode(tls.ca_pem()).decode()
    monkeypatch.setenv(
        "KUBECONFIG_TEST",
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: '{silent.url}', certificate-authority-data: {ca}}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    # The app's own client cache: the cluster's client gets the app settings' timeouts.
    kube = _ClientCache(settings(), parse_config(config_dict({"linux": 1}))).kube("test")
    error, took = timed(lambda: kube.get_node("n"))
    assert isinstance(error, TemporaryError), error
    assert READ <= took < BOUND
    assert silent.connections == 1, f"sent {silent.connections} times in {took:.1f} s"


# ---- Table and Queue storage ------------------------------------------------------------------


def test_a_table_read_that_gets_no_answer_ends_at_the_read_timeout_as_a_temporary_error(
    silent_http: SilentServer,
) -> None:
    s = settings(AzureWebJobsStorage=storage(silent_http.url))
    started = time.monotonic()
    with pytest.raises(TemporaryError):
        # from_settings creates the table first: that call already meets the silence.
        TableRunStore.from_settings(s).get_run("run-1")
    assert time.monotonic() - started < BOUND
    assert silent_http.connections == 1  # a read that timed out is not sent again


def test_a_table_write_that_gets_no_answer_ends_at_the_read_timeout_as_a_temporary_error(
    silent_http: SilentServer,
) -> None:
    from azure.data.tables import TableClient

    s = settings(AzureWebJobsStorage=storage(silent_http.url))
    table = TableClient.from_connection_string(
        s.storage_connection_string or "", "patchruns", **app_settings_module.sdk_options(CONNECT, READ)
    )
    store = TableRunStore(table)
    error, took = timed(
        lambda: store._transact("run-1", [("upsert", "run", {"state": "running", "cluster": "c1"}, None)])
    )
    assert isinstance(error, TemporaryError), error
    assert took < BOUND


def test_a_queue_send_that_gets_no_answer_ends_within_the_timeouts(silent_http: SilentServer) -> None:
    queue = StorageWorkQueue.from_settings(settings(AzureWebJobsStorage=storage(silent_http.url)))
    error, took = timed(lambda: queue.send(WorkItem("step", "run-1", "node-a", 1)))
    assert error is not None
    # Without the settings: 4 attempts of 300 s with the storage SDK's 15 s, 18 s, 24 s back-off.
    assert took < BOUND
    assert silent_http.connections == 1


# ---- the managed identity endpoint --------------------------------------------------------------


@pytest.fixture
def arm(tls: SandboxTLS) -> Iterator[ArmServer]:
    state = ComputeState(World(time_scale=0.01), subscription_id=SUB)
    state.add_scale_set(
        resource_group=RG,
        name=VMSS,
        os_type="Linux",
        capacity=1,
        image_reference={"publisher": "p", "offer": "o", "sku": "s", "version": "1"},
        computer_name_prefix=VMSS,
    )
    server = ArmServer(state, tls=tls)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def identity(arm: ArmServer, trust: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArmServer]:
    """Only the App Service managed identity is configured, as in Azure; the process-wide
    credential is built afresh from the environment of each test."""
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", arm.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", arm.identity_header)
    monkeypatch.setenv("PATCHER_CONNECT_TIMEOUT", str(CONNECT))
    monkeypatch.setenv("PATCHER_READ_TIMEOUT", str(READ))
    azure_credential.cache_clear()
    yield arm
    azure_credential.cache_clear()


def test_the_app_credential_gets_a_token_and_the_instance_is_read(
    identity: ArmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The way that works, not how fast: the half-second bounds of the tests below would
    # fail it on a loaded machine (a first token and TLS handshake under CPU contention).
    roomy = {"PATCHER_CONNECT_TIMEOUT": "10", "PATCHER_READ_TIMEOUT": "10"}
    for name, value in roomy.items():
        monkeypatch.setenv(name, value)
    azure_credential.cache_clear()
    client = compute(settings(**roomy), identity.url, azure_credential())
    assert client.get_instance(REF).instance_id == "0"


def test_an_identity_endpoint_answering_5xx_is_a_temporary_error(identity: ArmServer) -> None:
    identity.state.faults.fail_next("msi_token", 20, status=503, code="ServiceUnavailable")
    client = compute(settings(), identity.url, azure_credential())
    error, took = timed(lambda: client.get_instance(REF))
    assert isinstance(error, TemporaryError), error
    assert "token" in str(error)
    assert took < BOUND
    # Once the endpoint is back, a later step gets its token: the same credential, after
    # MSAL's throttle of a 5xx answer (its default, 5 s without Retry-After) has passed.
    identity.state.faults.clear()
    deadline = time.monotonic() + 15
    while True:
        time.sleep(1)
        # (A new client each time: the server closes idle connections of the old one.)
        error, _ = timed(lambda: compute(settings(), identity.url, azure_credential()).get_instance(REF))
        if error is None or time.monotonic() > deadline:
            break
        assert isinstance(error, TemporaryError), error
    assert error is None


def test_an_identity_endpoint_that_never_answers_is_a_temporary_error_within_the_timeouts(
    identity: ArmServer, silent_http: SilentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", silent_http.url + "/msi/token")
    azure_credential.cache_clear()
    client = compute(settings(), identity.url, azure_credential())
    error, took = timed(lambda: client.get_instance(REF))
    assert isinstance(error, TemporaryError), error
    assert took < BOUND


def test_a_token_arm_refuses_stays_a_permanent_error(identity: ArmServer) -> None:
    # ARM answered (401): that is no hiccup of the identity endpoint.
    error, _ = timed(lambda: compute(settings(), identity.url, StaticCredential()).get_instance(REF))
    assert isinstance(error, PermanentError), error


class Imds:
    """The instance metadata service's token endpoint (a VM's managed identity), answering
    every request with ``status``: azure-identity reaches it at
    AZURE_POD_IDENTITY_AUTHORITY_HOST instead of 169.254.169.254."""

    def __init__(self, status: int) -> None:
        requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                body = b'{"error": "temporarily_unavailable"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.requests = requests
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.parametrize("status", [500, 503])
def test_an_imds_token_endpoint_answering_5xx_is_a_temporary_error(
    arm: ArmServer, trust: None, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    imds = Imds(status)
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
    monkeypatch.setenv("PATCHER_CONNECT_TIMEOUT", str(CONNECT))
    monkeypatch.setenv("PATCHER_READ_TIMEOUT", str(READ))
    azure_credential.cache_clear()
    try:
        client = compute(settings(), arm.url, azure_credential())
        error, took = timed(lambda: client.get_instance(REF))
    finally:
        azure_credential.cache_clear()
        imds.close()
    assert imds.requests and imds.requests[0].startswith("/metadata/identity/oauth2/token")
    assert isinstance(error, TemporaryError), error
    assert took < BOUND
