"""What one admission pass reads at N = 1,000, before and after: ``python -m
bench.admission_reads``. Prints CPU milliseconds per call.

Kubernetes: a 1,000-node pool on the simulated apiserver (200 nodes cordoned by the run,
a few NotReady or cordoned by someone else), the old list of every Node object against
the Table request ``unavailable_nodes`` makes. Table storage: a 1,000-node run on
Azurite (250 nodes holding a slot), the old read of every record against the column
queries admission makes now. "client" is this process (the app's side), "apiserver" and
"azurite" the server process's CPU (from /proc, in 10 ms ticks spread over the calls).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.azurite import Azurite
from sandbox.kube.registry import KubeStore
from sandbox.kube.server import KubeAPIServer
from sandbox.tls import create_tls
from sandbox.world import World
from shared.adapters.kube import ANNOTATION_CORDONED, TABLE_ACCEPT, KubeClient
from shared.rollout.model import NodeState, NodeWork, Run
from shared.rollout.store.table import TableRunStore

N = 1000
REPEATS = 50
POOL = "agentpool=big"


def _node(i: int) -> dict[str, Any]:
    """Shaped like the sandbox's nodes (sandbox/cluster.py); real ones are larger still
    (images, managedFields), which only widens the gap."""
    name = f"k8s-big-{i:06d}"
    spec: dict[str, Any] = {
        "providerID": "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/"
        f"virtualMachineScaleSets/big/virtualMachines/{i}"
    }
    annotations = {"node.alpha.kubernetes.io/ttl": "0"}
    if i < 200 or i % 331 == 7:
        spec["unschedulable"] = True
        annotations[ANNOTATION_CORDONED] = "run1" if i < 200 else ""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "agentpool": "big",
                "topology.kubernetes.io/zone": f"westeurope-{i % 3 + 1}",
                "topology.kubernetes.io/region": "westeurope",
                "vmss-node-patcher.io/image-version": "2025.01.01",
            },
            "annotations": annotations,
        },
        "spec": spec,
        "status": {
            "conditions": [{"type": "Ready", "status": "False" if i % 97 == 50 else "True"}],
            "nodeInfo": {
                "bootID": str(uuid.uuid4()),
                "kubeletVersion": "v1.31.4",
                "kubeProxyVersion": "v1.31.4",
                "osImage": "Ubuntu 22.04.5 LTS",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "containerd://1.7.23",
                "machineID": uuid.uuid4().hex,
                "systemUUID": str(uuid.uuid4()),
            },
            "addresses": [{"type": "Hostname", "address": name}],
            "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "3860m", "memory": "12Gi", "pods": "110"},
        },
    }


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 10 ms


def _measure(label: str, fn: Callable[[], Any], *, server_pid: int, server: str) -> None:
    fn()  # warm: connections, caches
    client, other, wall = time.process_time(), _proc_cpu(server_pid), time.perf_counter()
    for _ in range(REPEATS):
        result = fn()
    client, other = time.process_time() - client, _proc_cpu(server_pid) - other
    wall = time.perf_counter() - wall
    ms = {k: f"{1000 * v / REPEATS:6.1f} ms" for k, v in {"c": client, "s": other, "w": wall}.items()}
    total = f"{1000 * (client + other) / REPEATS:6.1f} ms"
    print(
        f"  {label:56s} client {ms['c']}  {server} {ms['s']}  sum {total}  wall {ms['w']}  -> {result}",
        flush=True,
    )


def _serve_kube(home: Path, ready: Any, stop: Any) -> None:
    """The apiserver in a process of its own, as in a real deployment: its CPU and its
    heap (a thousand stored Nodes make every garbage collection slower) stay apart."""
    world = World(time_scale=0.01, history_path=home / "history.jsonl")
    store = KubeStore(world)
    server = KubeAPIServer(store, tls=create_tls(home / "tls"), token="measure")
    server.start()
    server.write_kubeconfig(home / "kubeconfig", cluster_name="measure")
    for i in range(N):
        store.create(_node(i))
    ready.set()
    stop.wait()
    server.stop()
    world.close()


def kube(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_serve_kube, args=(home, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(120) or proc.pid is None:
            raise RuntimeError("the apiserver did not start")
        pid = proc.pid
        client = KubeClient.from_kubeconfig(str(home / "kubeconfig"))
        held = {f"k8s-big-{i:06d}" for i in range(200)}

        def old_way() -> int:  # what admission did: every Node object of the pool
            return sum(
                1
                for n in client.list_nodes(label_selector=POOL)
                if n.name not in held and (n.unschedulable or not n.ready)
            )

        def new_way() -> int:
            return len(client.unavailable_nodes(POOL, ignore=held))

        def one_get() -> int:
            return len(client.get_node("k8s-big-000500").name)

        nodes = [_node(i) for i in range(N)]
        cordoned = sum(1 for n in nodes if n["spec"].get("unschedulable"))
        not_ready = sum(1 for n in nodes if n["status"]["conditions"][0]["status"] == "False")
        print(
            f"Kubernetes: a pool of {N} nodes, {cordoned} cordoned ({len(held)} held by the run), "
            f"{not_ready} NotReady; per call:"
        )
        _measure("before: list the pool's Node objects", old_way, server_pid=pid, server="apiserver")
        _measure(
            "after: unavailable_nodes (Table, includeObject=None)",
            new_way,
            server_pid=pid,
            server="apiserver",
        )
        _measure("one GET of a Node (a candidate to skip)", one_get, server_pid=pid, server="apiserver")
        full = client._json("list", client._core.list_node, label_selector=POOL)
        rows = client._get_json(
            "list", "/api/v1/nodes", [("includeObject", "None"), ("labelSelector", POOL)], accept=TABLE_ACCEPT
        )
        print(f"  response bytes: {len(json.dumps(full))} before, {len(json.dumps(rows))} after")
    finally:
        stop.set()
        proc.join(30)


def table(home: Path) -> None:
    from azure.data.tables import TableServiceClient

    with Azurite(home / "azurite") as azurite:
        service = TableServiceClient.from_connection_string(azurite.connection_string)
        service.create_table_if_not_exists("measure")
        store = TableRunStore(service.get_table_client("measure"))
        run = Run(id="run1", cluster="c", reason="measure", created_at="2026-01-01T00:00:00Z")
        nodes = [
            NodeWork(
                run_id="run1",
                name=f"k8s-big-{i:06d}",
                pool="big",
                scale_set_id="/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/"
                "virtualMachineScaleSets/big",
                instance_id=str(i),
                order=i,
                history=[{"at": "2026-01-01T00:00:00Z", "from": "x", "to": "y", "reason": "r" * 60}] * 6,
            )
            for i in range(N)
        ]
        store.create_run(run, nodes)
        for node in store.list_nodes("run1")[:250]:
            node.move_to(NodeState.ADMITTED, reason="measure", at="now")
            store.commit(node)
        holding = [s for s in NodeState if s.holds_slot]
        if azurite._proc is None:
            raise RuntimeError("Azurite is not running")
        pid = azurite._proc.pid

        def old_way() -> int:  # what admission did: every record of the run
            return len(store.list_nodes("run1"))

        def new_way() -> int:  # what it does now, admitting one node
            store.node_summaries("run1", states=holding)
            store.node_summaries("run1", states=[NodeState.FAILED])
            pending = store.pending_nodes("run1")
            return len(store.get_nodes("run1", [pending[0].name])) + len(pending)

        def held_only() -> int:
            return len(store.node_summaries("run1", states=holding))

        print(f"Table storage (Azurite): a run of {N} nodes, 250 holding a slot, 750 pending; per call:")
        _measure("before: read every node record", old_way, server_pid=pid, server="azurite")
        _measure(
            "after: holding, failed, pending columns + 1 record", new_way, server_pid=pid, server="azurite"
        )
        _measure("  of which: the 250 holding, columns only", held_only, server_pid=pid, server="azurite")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        kube(Path(tmp) / "kube")
        table(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
