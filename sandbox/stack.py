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
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sandbox.arm import ArmServer, ComputeDurations, ComputeState
from sandbox.azurite import Azurite
from sandbox.cluster import ClusterTimings, PoolSpec, SandboxCluster
from sandbox.kubeapi import KubeAPIServer, KubeStore
from sandbox.tls import create_tls
from sandbox.world import World

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SUBSCRIPTION = "8f3e2a71-5c1d-4b8e-9a2f-0c6d7e1b4a90"
CLUSTER = "sandbox"
IMAGE_V1 = "2026.11.01"
DEFAULT_POOLS = "linux:linux:6,win:windows:3"


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
    sweep_schedule: str = "*/2 * * * * *"
    # Rare by default, so scheduled runs never surprise a test; tests trigger it on demand.
    patch_schedule: str = "0 0 0 1 1 *"


class Sandbox:
    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.state_dir = options.state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.world: World | None = None
        self.kube: KubeStore | None = None
        self.kube_server: KubeAPIServer | None = None
        self.compute: ComputeState | None = None
        self.arm_server: ArmServer | None = None
        self.cluster: SandboxCluster | None = None
        self.azurite: Azurite | None = None
        self.runners: list[subprocess.Popen[bytes]] = []
        self.runner_ports: list[int] = []
        self.restarts = 0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._runner_lock = threading.Lock()

    # ---- paths ---------------------------------------------------------------------------
    @property
    def history_path(self) -> Path:
        return self.state_dir / "history.jsonl"

    @property
    def kubeconfig_path(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "patcher.yaml"

    @property
    def settings_path(self) -> Path:
        return self.state_dir / "runner-settings.json"

    @property
    def endpoints_path(self) -> Path:
        return self.state_dir / "endpoints.json"

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
        self.kube_server = KubeAPIServer(self.kube, tls=tls, token=self.kube_token)
        self.kube_server.start()
        self.kube_server.write_kubeconfig(self.kubeconfig_path, cluster_name=CLUSTER)
        self.compute = ComputeState(
            self.world, subscription_id=SUBSCRIPTION, durations=opts.compute_durations
        )
        self.arm_server = ArmServer(self.compute, tls=tls)
        self.arm_server.start()
        self.cluster = SandboxCluster(
            self.world, self.kube, self.compute, subscription_id=SUBSCRIPTION, timings=opts.cluster_timings
        )
        for pool in opts.pools:
            self.cluster.add_pool(pool, image_version=IMAGE_V1)
        if opts.workloads:
            self._add_workloads()
        self.azurite = Azurite(self.state_dir / "azurite")
        self.azurite.start()
        self._write_config()
        self._write_settings()
        self.runner_ports = [_free_port() for _ in range(opts.runners)]
        self.runners = [self._spawn_runner(i) for i in range(opts.runners)]
        self._wait_for_runners()
        self._supervisor = threading.Thread(target=self._supervise, name="runner-supervisor", daemon=True)
        self._supervisor.start()
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

    def pool_name_of(self, spec: PoolSpec) -> str:
        return spec.name

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
                "nodeSelector": {"kubernetes.azure.com/agentpool": spec.name},
                "drain": {"timeout": round(900 * scale, 2), "deleteEmptyDirData": True, "onTimeout": "fail"},
                "reimageTimeout": round(3600 * scale, 2),
                "bootTimeout": round((1800 if spec.os == "windows" else 900) * scale, 2),
            }
            pool.update(opts.pool_overrides.get(spec.name, {}))
            pools.append(pool)
        workflow = {
            "pollInterval": 0.5,
            "drainRetryInterval": 0.5,
            "leaseDuration": 10,
            "stallAfter": 20,
            "retryBackoffInitial": 0.5,
            "retryBackoffMax": 5,
            "maxTransientRetries": 8,
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
                }
            ],
            "workflow": workflow,
        }
        self.config_path.write_text(
            "# Written by `python -m sandbox up`: the sandbox cluster, with cloud durations scaled "
            f"by {scale}.\n" + yaml.safe_dump(config, sort_keys=False),
            encoding="utf-8",
        )

    def app_settings(self) -> dict[str, str]:
        assert self.azurite and self.arm_server
        return {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "AzureWebJobsStorage": self.azurite.connection_string,
            "PATCHER_CONFIG_PATH": str(self.config_path),
            "PATCHER_SWEEP_SCHEDULE": self.options.sweep_schedule,
            "PATCHER_SCHEDULE": self.options.patch_schedule,
            "PATCHER_ARM_ENDPOINT": self.arm_server.url,
            "KUBECONFIG_SANDBOX": str(self.kubeconfig_path),
            # The same managed-identity protocol as App Service; the sandbox serves it.
            "IDENTITY_ENDPOINT": self.arm_server.identity_endpoint,
            "IDENTITY_HEADER": self.arm_server.identity_header,
            # Trust the sandbox CA, as a private-cloud deployment would trust its own.
            "REQUESTS_CA_BUNDLE": str(self.tls.ca_path),
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
            "sandbox.runner",
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
            "storage_connection_string": self.azurite.connection_string,
            "functions_url": self.functions_url,
            "runner_urls": [f"http://127.0.0.1:{p}" for p in self.runner_ports],
            "subscription_id": SUBSCRIPTION,
            "resource_group": self.cluster.resource_group if self.cluster else "",
            "cluster": CLUSTER,
            "runner_pids": [p.pid for p in self.runners],
            "kubeconfig": str(self.kubeconfig_path),
            "config_path": str(self.config_path),
            "ca_path": str(self.tls.ca_path),
            "history": str(self.history_path),
            "time_scale": self.options.time_scale,
            "identity_endpoint": self.arm_server.identity_endpoint,
            "identity_header": self.arm_server.identity_header,
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
