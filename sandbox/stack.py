"""The whole local stack: simulated ARM + Kubernetes (one process, one world), Azurite,
and K local Functions runner processes running the real app, supervised like the host.

Used by ``python -m sandbox up``, the demo, the integration tests and the benchmarks.
Everything the app needs is passed to the runners as app settings, exactly the way
Azure would pass them: endpoints, the CA to trust, the managed-identity endpoint, the
kubeconfig, and the configuration file with sandbox-short durations.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sandbox.arm import ArmServer, ComputeDurations, ComputeState
from sandbox.azurite import ACCOUNT_NAME, Azurite
from sandbox.cluster import POOL_LABEL, ClusterTimings, PoolSpec, SandboxCluster
from sandbox.easy_auth import EasyAuth
from sandbox.events import EventGridPublisher, image_version_write_event
from sandbox.kube.flux import add_flux_objects, start_flux_controller
from sandbox.kube.rbac import Authorizer, User
from sandbox.kube.registry import KubeStore
from sandbox.kube.server import KubeAPIServer
from sandbox.tableproxy import TableFaultProxy
from sandbox.tls import create_tls
from sandbox.world import World

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SUBSCRIPTION = "8f3e2a71-5c1d-4b8e-9a2f-0c6d7e1b4a90"
CLUSTER = "sandbox"
IMAGE_V1 = "2026.11.01"
GALLERY = "sandboxgallery"
# Where the gallery lives when it has a subscription of its own (image_subscription).
IMAGE_RESOURCE_GROUP = "rg-node-images"
KUBERNETES_VERSION = "1.31.4"  # what the sandbox API server and kubelets report
DEFAULT_POOLS = "linux:linux:6,win:windows:3"
# Platform settings the deployment sets (infra/app/functionapp.bicep), so that the runners
# run the app as Azure would.
DEPLOYED_SETTINGS = {"PYTHON_THREADPOOL_THREAD_COUNT": "16"}
# The fleet repository the sandbox's Flux objects track (the GitOps webhook).
# What the app may do in the cluster: the manifests shipped for real clusters.
RBAC_MANIFESTS = sorted((REPO / "infra" / "kubernetes").glob("*.yaml"))


def app_identity() -> User:
    """The ServiceAccount of infra/kubernetes/serviceaccount.yaml, as its token authenticates."""
    manifest = REPO / "infra" / "kubernetes" / "serviceaccount.yaml"
    account = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    return User.service_account(account["metadata"]["namespace"], account["metadata"]["name"])


GITOPS_REPO_URL = "https://github.com/Octocoders/fleet-gitops.git"
GITOPS_BRANCH = "main"


@dataclass
class SandboxOptions:
    state_dir: Path
    pools: list[PoolSpec] = field(default_factory=lambda: PoolSpec.parse_list(DEFAULT_POOLS))
    runners: int = 2
    time_scale: float = 0.02
    max_unavailable: int | str = 2
    max_concurrent_nodes: int = 6
    max_failed_nodes: int = 3
    workloads: bool = True
    compute_durations: ComputeDurations = field(default_factory=ComputeDurations)
    cluster_timings: ClusterTimings = field(default_factory=ClusterTimings)
    pod_termination_cloud_seconds: float = 5.0
    workflow: dict[str, Any] = field(default_factory=dict)
    pool_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Merged into the cluster's entry of patcher.yaml (e.g. ``waveOrder``).
    cluster_overrides: dict[str, Any] = field(default_factory=dict)
    sweep_schedule: str = "*/2 * * * * *"
    # Pools the sandbox's maintenance configuration patches (default: all of them).
    maintenance_pools: list[str] | None = None
    # Merged into patcher.yaml (top-level sections) and into the runners' app settings.
    extra_config: dict[str, Any] = field(default_factory=dict)
    extra_settings: dict[str, str] = field(default_factory=dict)
    # Rare by default, so scheduled runs never surprise a test; tests trigger it on demand.
    patch_schedule: str = "0 0 0 1 1 *"
    # Route the app's table traffic through sandbox/tableproxy.py, whose faults tests arm
    # as ``sandbox.table_proxy.faults``. Off by default: the extra hop would shift the
    # benchmarks' timings.
    table_faults: bool = False
    # Azurite logs every request (``sandbox.azurite.storage_requests``): what the
    # benchmarks count as Storage transactions. Off by default, for the same reason.
    storage_access_log: bool = False
    # The Compute Gallery in a subscription of its own (a central image subscription, as
    # many organisations have), served by the same ARM; None keeps it beside the scale sets.
    image_subscription: str | None = None


class _StateFile:
    """A file of the sandbox's state directory, read as an attribute (``sandbox.config_path``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, sandbox: Sandbox, owner: type[Sandbox] | None = None) -> Path:
        return sandbox.state_dir / self.name


class Sandbox:
    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.state_dir = options.state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.world: World | None = None
        self.kube: KubeStore | None = None
        self.kube_server: KubeAPIServer | None = None
        self.compute: ComputeState | None = None
        self.gallery_compute: ComputeState | None = None  # the gallery's subscription
        self.gallery_resource_group = ""
        self.arm_server: ArmServer | None = None
        self.cluster: SandboxCluster | None = None
        self.azurite: Azurite | None = None
        self.table_proxy: TableFaultProxy | None = None
        self.easy_auth = EasyAuth.create()  # replaced at start by one of the ARM tenant
        self.runners: list[subprocess.Popen[bytes]] = []
        self.runner_ports: list[int] = []
        self.restarts = 0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._runner_lock = threading.Lock()
        self.github_webhook_secret = os.urandom(16).hex()
        self.gallery_image_ids: dict[str, str] = {}  # "linux"/"windows" -> image definition id
        self.maintenance_configuration_id = ""
        self._grid_events: queue.Queue[dict[str, Any]] = queue.Queue()

    # ---- paths ---------------------------------------------------------------------------
    history_path = _StateFile("history.jsonl")
    # The admin's: it sets the scene (the tests, the demo, a person with kubectl).
    kubeconfig_path = _StateFile("kubeconfig")
    # The app's: the ServiceAccount of infra/kubernetes, with exactly its RBAC.
    app_kubeconfig_path = _StateFile("app-kubeconfig")
    config_path = _StateFile("patcher.yaml")
    settings_path = _StateFile("runner-settings.json")
    easy_auth_path = _StateFile("easy-auth.json")
    endpoints_path = _StateFile("endpoints.json")

    def user_token(self, user: str, roles: Sequence[str] = (), **options: Any) -> str:
        """An Entra ID access token for the app, for ``user`` holding the app ``roles``."""
        return self.easy_auth.mint(user, roles, **options)

    @property
    def functions_url(self) -> str:
        return f"http://127.0.0.1:{self.runner_ports[0]}"

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        opts = self.options
        tls = create_tls(self.state_dir / "tls")
        self.tls = tls
        if self.history_path.exists():
            self.history_path.unlink()
        self.world = World(time_scale=opts.time_scale, history_path=self.history_path)
        self.kube = KubeStore(self.world, pod_termination_cloud_seconds=opts.pod_termination_cloud_seconds)
        self.kube_token = os.urandom(16).hex()
        # The app talks as the ServiceAccount infra/kubernetes declares, authorized by the
        # roles shipped there: a grant the code needs and the manifests lack fails here
        # as it would on the first real cluster.
        self.kube_server = KubeAPIServer(
            self.kube, tls=tls, token=self.kube_token, authorizer=Authorizer.from_manifests(RBAC_MANIFESTS)
        )
        self.app_kube_token = os.urandom(16).hex()
        self.kube_server.add_identity(self.app_kube_token, app_identity())
        self.kube_server.start()
        self.kube_server.write_kubeconfig(self.kubeconfig_path, cluster_name=CLUSTER)
        self.kube_server.write_kubeconfig(
            self.app_kubeconfig_path,
            cluster_name=CLUSTER,
            token=self.app_kube_token,
            user="vmss-node-patcher",
        )
        self.compute = ComputeState(
            self.world, subscription_id=SUBSCRIPTION, durations=opts.compute_durations
        )
        self.gallery_compute = self.compute
        if opts.image_subscription:
            self.gallery_compute = ComputeState(
                self.world, subscription_id=opts.image_subscription, durations=opts.compute_durations
            )
        # The app's identity may do what infra/ grants for the sandbox's resources, as
        # deployed with parameters naming all of them (the pools, gallery, maintenance
        # configuration and Automation account the configuration maps).
        self.arm_server = ArmServer(
            self.compute,
            tls=tls,
            subscriptions=[self.gallery_compute] if self.gallery_compute is not self.compute else [],
        )
        self.arm_server.start()
        # App Service Authentication in front of the runners, with its own Entra ID stand-in.
        self.easy_auth = EasyAuth.create(tenant_id=self.arm_server.tenant_id)
        self.easy_auth.save(self.easy_auth_path)
        self.cluster = SandboxCluster(
            self.world, self.kube, self.compute, subscription_id=SUBSCRIPTION, timings=opts.cluster_timings
        )
        rg = self.cluster.resource_group
        self.gallery_resource_group = IMAGE_RESOURCE_GROUP if opts.image_subscription else rg
        for definition, os_type in (("k8s-node-ubuntu", "Linux"), ("k8s-node-windows", "Windows")):
            self.gallery_image_ids[os_type.lower()] = self.gallery_compute.add_gallery_image(
                self.gallery_resource_group, GALLERY, definition, os_type=os_type
            )
            self.gallery_compute.publish_image_version(
                self.gallery_resource_group,
                GALLERY,
                definition,
                IMAGE_V1,
                tags={"kubernetesVersion": KUBERNETES_VERSION},
                replicate_seconds=0,
            )
        self.maintenance_configuration_id = self.compute.add_maintenance_configuration(rg, "sandbox-weekly")
        for pool in opts.pools:
            self.cluster.add_pool(pool, image_version=IMAGE_V1)
        if opts.workloads:
            self._add_workloads()
        # A fleet repository's Flux objects, and a stand-in for the Flux controllers.
        add_flux_objects(self.kube, repo_url=GITOPS_REPO_URL, branch=GITOPS_BRANCH)
        start_flux_controller(self.kube, self.world)
        self.azurite = Azurite(self.state_dir / "azurite", access_log=self.options.storage_access_log)
        self.azurite.start()
        if opts.table_faults:
            self.table_proxy = TableFaultProxy(self.azurite.host, self.azurite.table_port)
            self.table_proxy.start()
        self._write_config()
        self._write_settings()
        self.runner_ports = [_free_port() for _ in range(opts.runners)]
        self.runners = [self._spawn_runner(i) for i in range(opts.runners)]
        self._wait_for_runners()
        self._supervisor = threading.Thread(target=self._supervise, name="runner-supervisor", daemon=True)
        self._supervisor.start()
        # ARM's resource-group topic -> Event Grid subscription -> the app's azure_events function.
        self.compute.add_listener(self._on_compute_event)
        if self.gallery_compute is not self.compute:
            self.gallery_compute.add_listener(self._on_compute_event)
        threading.Thread(target=self._forward_events, name="eventgrid-forwarder", daemon=True).start()
        self.write_endpoints()

    def stop(self) -> None:
        self._stopping.set()
        with self._runner_lock:
            for proc in self.runners:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in self.runners:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.table_proxy:
            self.table_proxy.stop()
        if self.azurite:
            self.azurite.stop()
        if self.arm_server:
            self.arm_server.stop()
        if self.kube_server:
            self.kube_server.stop()
        if self.world:
            self.world.close()

    # ---- cluster content ---------------------------------------------------------------------
    def _add_workloads(self) -> None:
        assert self.cluster is not None
        linux = [p for p in self.options.pools if p.os == "linux"]
        windows = [p for p in self.options.pools if p.os == "windows"]
        n_linux = sum(p.count for p in linux)
        if linux:
            self.cluster.add_daemonset("kube-system", "kube-proxy", os_name="linux")
            self.cluster.add_deployment(
                "shop", "web", replicas=max(2, n_linux), pdb_max_unavailable=1, empty_dir=True, grace=20
            )
            self.cluster.add_deployment("shop", "api", replicas=max(2, n_linux // 2), pdb_min_available="50%")
            self.cluster.add_statefulset("data", "cache", replicas=3, pdb_max_unavailable=1)
        if windows:
            self.cluster.add_daemonset("kube-system", "kube-proxy-windows", os_name="windows")
            self.cluster.add_deployment(
                "legacy",
                "iis",
                replicas=max(2, sum(p.count for p in windows)),
                os_name="windows",
                pdb_max_unavailable=1,
            )

    def _write_config(self) -> None:
        assert self.cluster is not None
        opts = self.options
        scale = opts.time_scale
        pools = []
        for spec in opts.pools:
            pool: dict[str, Any] = {
                "name": spec.name,
                "scaleSetId": self.cluster.scale_set_id(spec),
                "os": spec.os,
                "maxUnavailable": opts.max_unavailable,
                "nodeSelector": {POOL_LABEL: spec.name},
                "drain": {"timeout": round(900 * scale, 2), "deleteEmptyDirData": True, "onTimeout": "fail"},
                "reimageTimeout": round(3600 * scale, 2),
                "bootTimeout": round((1800 if spec.os == "windows" else 900) * scale, 2),
            }
            pool.update(opts.pool_overrides.get(spec.name, {}))
            pools.append(pool)
        workflow = {
            # Production's 15 s and 5 s, time-scaled, but not below what the queue can do.
            "pollInterval": max(0.5, round(15 * scale, 2)),
            "drainRetryInterval": max(0.5, round(5 * scale, 2)),
            "leaseDuration": 10,
            # The sandbox's calls answer in milliseconds: renew before a reimage write or an
            # uncordon only when the lease is nearly over, as production does at 45 of 120 s.
            "leaseMargin": 3,
            "inlineWait": 2,
            "batchLinger": 0.3,
            "stallAfter": 20,
            "retryBackoffInitial": 0.5,
            "retryBackoffMax": 5,
            "maxTransientRetries": 8,
            "imageRecheckInterval": 1,
            # Compute's write limit scaled like the simulated one (4 per cloud minute).
            "writeBurst": 10,
            "writesPerMinute": round(3.5 / scale, 3),
            **opts.workflow,
        }
        config = {
            "clusters": [
                {
                    "name": CLUSTER,
                    "kubeconfig": {"setting": "KUBECONFIG_SANDBOX"},
                    "maxConcurrentNodes": opts.max_concurrent_nodes,
                    "maxFailedNodes": opts.max_failed_nodes,
                    "pools": pools,
                    **opts.cluster_overrides,
                }
            ],
            "workflow": workflow,
            "events": self._event_mappings(),
            "gitops": {
                "secrets": [{"setting": "GITHUB_WEBHOOK_SECRET"}],
                "repositories": [{"url": GITOPS_REPO_URL, "clusters": [CLUSTER]}],
            },
        }
        config.update(opts.extra_config)
        self.config_path.write_text(
            "# Written by `python -m sandbox up`: the sandbox cluster, with cloud durations scaled "
            f"by {scale}.\n" + yaml.safe_dump(config, sort_keys=False),
            encoding="utf-8",
        )

    def _event_mappings(self) -> dict[str, Any]:
        """Map the sandbox's maintenance configuration and gallery images to its pools, the
        way an operator would in their configuration."""
        pools = [
            f"{CLUSTER}/{p.name}"
            for p in self.options.pools
            if self.options.maintenance_pools is None or p.name in self.options.maintenance_pools
        ]
        by_os: dict[str, list[str]] = {}
        for p in self.options.pools:
            by_os.setdefault(p.os, []).append(f"{CLUSTER}/{p.name}")
        return {
            "maintenanceConfigurations": [
                {"maintenanceConfigurationId": self.maintenance_configuration_id, "pools": pools}
            ],
            "galleryImages": [
                {"imageDefinitionId": self.gallery_image_ids[os_name], "pools": refs, "pinVersions": True}
                for os_name, refs in by_os.items()
            ],
        }

    @property
    def storage_connection_string(self) -> str:
        """What the app is given: Azurite's, with tables behind the fault proxy if on."""
        assert self.azurite
        if self.table_proxy is None:
            return self.azurite.connection_string
        return self.azurite.connection_string_with(table_endpoint=self.table_proxy.endpoint(ACCOUNT_NAME))

    def app_settings(self) -> dict[str, str]:
        assert self.azurite and self.arm_server
        return {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "AzureWebJobsStorage": self.storage_connection_string,
            "PATCHER_CONFIG_PATH": str(self.config_path),
            "PATCHER_SWEEP_SCHEDULE": self.options.sweep_schedule,
            "PATCHER_SCHEDULE": self.options.patch_schedule,
            "PATCHER_ARM_ENDPOINT": self.arm_server.url,
            "KUBECONFIG_SANDBOX": str(self.app_kubeconfig_path),
            # The same managed-identity protocol as App Service; the sandbox serves it.
            "IDENTITY_ENDPOINT": self.arm_server.identity_endpoint,
            "IDENTITY_HEADER": self.arm_server.identity_header,
            # Trust the sandbox CA, as a private-cloud deployment would trust its own.
            "REQUESTS_CA_BUNDLE": str(self.tls.ca_path),
            "GITHUB_WEBHOOK_SECRET": self.github_webhook_secret,
            **DEPLOYED_SETTINGS,
            **self.options.extra_settings,
        }

    def _write_settings(self) -> None:
        self.settings_path.write_text(json.dumps(self.app_settings(), indent=2), encoding="utf-8")

    # ---- runners ---------------------------------------------------------------------------
    def _spawn_runner(self, index: int) -> subprocess.Popen[bytes]:
        log = (self.state_dir / f"runner-{index}.log").open("ab")
        lease = max(2.0, 600 * self.options.time_scale)
        cmd = [
            sys.executable,
            "-m",
            "sandbox.host",
            "--app-dir",
            str(REPO),
            "--settings-file",
            str(self.settings_path),
            "--port",
            str(self.runner_ports[index]),
            "--queue-lease-seconds",
            str(lease),
            "--name",
            f"runner-{index}",
            "--easy-auth",
            str(self.easy_auth_path),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHER_")}
        env["PYTHONUNBUFFERED"] = "1"
        return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)

    def _wait_for_runners(self, timeout: float = 60.0) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        for i, port in enumerate(self.runner_ports):
            while True:
                if self.runners[i].poll() is not None:
                    log = (self.state_dir / f"runner-{i}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"runner {i} exited with {self.runners[i].returncode}:\n{log}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=5).read()
                    break
                except urllib.error.HTTPError:
                    break  # it answered: the HTTP server is up
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"runner {i} did not start within {timeout}s") from None
                    time.sleep(0.2)

    def _supervise(self) -> None:
        """Like the Functions host: a worker process that dies is started again."""
        while not self._stopping.wait(0.5):
            changed = False
            with self._runner_lock:
                for i, proc in enumerate(self.runners):
                    if proc.poll() is not None and not self._stopping.is_set():
                        logger.warning("runner %d exited with %s; restarting", i, proc.returncode)
                        self.runners[i] = self._spawn_runner(i)
                        self.restarts += 1
                        changed = True
            if changed:
                self.write_endpoints()

    def _on_compute_event(self, kind: str, payload: dict[str, Any]) -> None:
        # Listeners run on the sandbox's scheduler thread: queue, never block it on HTTP.
        if kind == "resource_write" and self.arm_server is not None:
            ok = payload["status"] == "Succeeded"
            self._grid_events.put(
                image_version_write_event(
                    payload["resource_id"],
                    subscription_id=payload["resource_id"].split("/")[2],
                    tenant_id=self.arm_server.tenant_id,
                    correlation_id=payload["correlation_id"],
                    operation_name=payload["operation_name"],
                    event_type="Microsoft.Resources.ResourceWrite" + ("Success" if ok else "Failure"),
                )
            )

    def _forward_events(self) -> None:
        """Deliver queued events like Event Grid: retried with back-off, except 400/403/413."""
        publisher = EventGridPublisher(self.functions_url, "azure_events")
        while not self._stopping.is_set():
            try:
                event = self._grid_events.get(timeout=0.5)
            except queue.Empty:
                continue
            for attempt in range(6):
                try:
                    status = publisher.deliver([event], delivery_count=attempt)
                except OSError:
                    status = 0  # the runner is restarting
                if 200 <= status < 300 or status in (400, 403, 413):
                    break
                self._stopping.wait(min(30.0, 10.0 * 2**attempt) * self.options.time_scale)

    def kill_runner(self, index: int, sig: int = signal.SIGKILL) -> int:
        with self._runner_lock:
            proc = self.runners[index]
            pid = proc.pid
            if proc.poll() is None:
                proc.send_signal(sig)
                proc.wait()
            return pid

    def write_endpoints(self) -> dict[str, Any]:
        assert self.kube_server and self.arm_server and self.azurite
        data = {
            "kube_url": self.kube_server.url,
            "arm_url": self.arm_server.url,
            "storage_connection_string": self.storage_connection_string,
            "functions_url": self.functions_url,
            "runner_urls": [f"http://127.0.0.1:{p}" for p in self.runner_ports],
            "subscription_id": SUBSCRIPTION,
            "image_subscription_id": self.gallery_compute.subscription_id if self.gallery_compute else "",
            "github_webhook_secret": self.github_webhook_secret,
            "gitops_repo_url": GITOPS_REPO_URL,
            "gitops_branch": GITOPS_BRANCH,
            "resource_group": self.cluster.resource_group if self.cluster else "",
            "cluster": CLUSTER,
            "runner_pids": [p.pid for p in self.runners],
            "kubeconfig": str(self.kubeconfig_path),
            "app_kubeconfig": str(self.app_kubeconfig_path),
            "config_path": str(self.config_path),
            "ca_path": str(self.tls.ca_path),
            "history": str(self.history_path),
            "time_scale": self.options.time_scale,
            "identity_endpoint": self.arm_server.identity_endpoint,
            "identity_header": self.arm_server.identity_header,
            "tenant_id": self.arm_server.tenant_id,
            # The app registration App Service Authentication checks tokens for.
            "easy_auth_client_id": self.easy_auth.client_id,
            "gallery_image_definition_id": self.gallery_image_ids.get("linux", ""),
            "gallery_image_definition_ids": dict(self.gallery_image_ids),
            "maintenance_configuration_id": self.maintenance_configuration_id,
        }
        tmp = self.endpoints_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(self.endpoints_path)
        return data


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
