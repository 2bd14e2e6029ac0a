"""Cluster glue: makes the simulated ARM and Kubernetes API behave as one cluster.

Every scale-set VM is a Node (providerID in the real Azure form, name from the real
computer-name convention). A reimage takes the node NotReady and wipes its pods; when
the LRO completes, the node boots (after a configured delay) with a new boot id and the
image it was reimaged with. Controllers recreate evicted pods on other schedulable
nodes, so PodDisruptionBudgets recover; DaemonSet pods return with their node.

Every change that the invariant checks need is appended to the world's history.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.arm import ComputeState
from sandbox.kube.errors import KubeError
from sandbox.kube.kubelet import NodeAgents
from sandbox.kube.registry import KubeStore
from sandbox.world import World, utcnow_iso

logger = logging.getLogger(__name__)

KUBELET_VERSION = "v1.31.4"
IMAGE_LABEL = "vmss-node-patcher.io/image-version"  # shared.adapters.kube.NODE_IMAGE_LABEL
POOL_LABEL = "agentpool"  # the pool label AKS Engine sets; kubeadm nodes: --node-labels
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
# What the product writes on a node it holds (read, never written, by the sandbox).
RUN_ANNOTATION = "vmss-node-patcher.io/run"


@dataclass(frozen=True)
class PoolSpec:
    name: str
    os: str  # "linux" | "windows"
    count: int
    orchestration: str = "Uniform"  # or "Flexible": instances are VMs of their own

    @property
    def scale_set(self) -> str:
        return f"vmss-{self.name}"

    @property
    def computer_name_prefix(self) -> str:
        # Windows computer names are at most 15 characters: prefix <= 9 + 6 base-36 digits.
        return f"k8s{self.name}"[:9] if self.os == "windows" else f"k8s-{self.name}-12345678-vmss"

    @classmethod
    def parse_list(cls, text: str) -> list[PoolSpec]:
        """``NAME:OS:COUNT[:flex],...`` as given to ``python -m sandbox up --pools``."""
        pools = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            try:
                name, os_name, count, *mode = part.split(":")
                if mode not in ([], ["flex"], ["uniform"]):
                    raise ValueError(part)
                orchestration = "Flexible" if mode == ["flex"] else "Uniform"
                spec = cls(name=name, os=os_name.lower(), count=int(count), orchestration=orchestration)
            except ValueError:
                raise ValueError(f"pool {part!r} is not NAME:OS:COUNT or NAME:OS:COUNT:flex") from None
            if spec.os not in ("linux", "windows") or spec.count < 1:
                raise ValueError(f"pool {part!r}: OS must be linux or windows and COUNT at least 1")
            pools.append(spec)
        if not pools:
            raise ValueError("at least one pool is required")
        return pools


@dataclass
class ClusterTimings:
    """Cloud seconds; the World's clock scales them."""

    boot: float = 90.0
    windows_boot: float = 240.0
    pod_start: float = 10.0


def gallery_image(subscription: str, resource_group: str, definition: str, version: str) -> dict[str, str]:
    return {
        "id": f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
        f"Microsoft.Compute/galleries/sandboxgallery/images/{definition}/versions/{version}"
    }


@dataclass
class Workload:
    """A controller-owned set of pods, recreated when evicted."""

    kind: str  # ReplicaSet | StatefulSet | DaemonSet
    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    os: str
    replicas: int = 0
    empty_dir: bool = False
    grace: int = 30


class SandboxCluster:
    def __init__(
        self,
        world: World,
        kube: KubeStore,
        compute: ComputeState,
        *,
        subscription_id: str,
        resource_group: str = "rg-sandbox",
        timings: ClusterTimings | None = None,
    ) -> None:
        self.world = world
        self.kube = kube
        self.compute = compute
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.timings = timings or ClusterTimings()
        self.workloads: dict[str, Workload] = {}
        self._lock = threading.RLock()
        self._node_seen: dict[str, tuple[bool, bool]] = {}
        self._booting: set[str] = set()
        # Pods the controllers below create unscheduled or unstarted go the way any pod does.
        self.agents = NodeAgents(
            world,
            kube,
            schedule_cloud_seconds=self.timings.pod_start,
            start_cloud_seconds=self.timings.pod_start,
        )
        compute.add_listener(self._on_compute)
        kube.add_listener(self._on_kube)

    # ---- building ----------------------------------------------------------------------
    def add_pool(self, spec: PoolSpec, *, image_version: str) -> None:
        definition = "k8s-node-windows" if spec.os == "windows" else "k8s-node-ubuntu"
        self.compute.add_scale_set(
            resource_group=self.resource_group,
            name=spec.scale_set,
            os_type="Windows" if spec.os == "windows" else "Linux",
            capacity=spec.count,
            image_reference=gallery_image(
                self.subscription_id, self.resource_group, definition, image_version
            ),
            computer_name_prefix=spec.computer_name_prefix,
            zones=["1", "2", "3"],
            tags={"poolName": spec.name, "orchestrator": f"Kubernetes:{KUBELET_VERSION.lstrip('v')}"},
            orchestration_mode=spec.orchestration,
        )
        for vm in self.compute.vms(self.resource_group, spec.scale_set):
            self._create_node(spec.name, spec.os, vm)

    def scale_set_id(self, spec: PoolSpec) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachineScaleSets/{spec.scale_set}"
        )

    def _create_node(self, pool: str, os_name: str, vm: Mapping[str, Any]) -> None:
        props = vm["properties"]
        name = str(props["osProfile"]["computerName"]).lower()
        zone = (vm.get("zones") or ["1"])[0]
        image = _image_version(props["storageProfile"]["imageReference"])
        # cloud-provider-azure writes the resource group lower-cased into providerIDs; a
        # Flexible scale set's instance is a plain VM, and its providerID names only that.
        group = f"azure:///subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group.lower()}"
        if vm["type"] == "Microsoft.Compute/virtualMachines":
            provider_id = f"{group}/providers/Microsoft.Compute/virtualMachines/{vm['name']}"
        else:
            provider_id = (
                f"{group}/providers/Microsoft.Compute/virtualMachineScaleSets/{vm['name'].rsplit('_', 1)[0]}"
                f"/virtualMachines/{vm['instanceId']}"
            )
        now = utcnow_iso()
        self.kube.create(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/os": os_name,
                        "kubernetes.io/hostname": name,
                        "agentpool": pool,
                        POOL_LABEL: pool,
                        "topology.kubernetes.io/zone": f"westeurope-{zone}",
                        "topology.kubernetes.io/region": "westeurope",
                        IMAGE_LABEL: image,
                    },
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
                },
                "spec": {"providerID": provider_id},
                "status": {
                    "conditions": [_ready_condition(True, now)],
                    "nodeInfo": {
                        "bootID": str(uuid.uuid4()),
                        "kubeletVersion": KUBELET_VERSION,
                        "kubeProxyVersion": KUBELET_VERSION,
                        "osImage": "Windows Server 2022 Datacenter"
                        if os_name == "windows"
                        else "Ubuntu 22.04.5 LTS",
                        "operatingSystem": os_name,
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
        )
        self._node_seen[name] = (True, False)

    def add_deployment(
        self,
        namespace: str,
        name: str,
        *,
        replicas: int,
        os_name: str = "linux",
        pdb_min_available: int | str | None = None,
        pdb_max_unavailable: int | str | None = None,
        empty_dir: bool = False,
        grace: int = 30,
        nodes: Sequence[str] | None = None,
    ) -> None:
        """A Deployment, its ReplicaSet, pods spread over nodes (the least loaded, or one
        on each of ``nodes``: cheaper for thousands of pods), and optionally a PDB."""
        self._ensure_namespace(namespace)
        labels = {"app": name}
        dep = self.kube.create(
            _apps_object("Deployment", namespace, name, labels, os_name, replicas=replicas)
        )
        rs_name = f"{name}-{uuid.uuid4().hex[:10]}"
        owner = _owner("apps/v1", "Deployment", dep)
        rs = self.kube.create(
            _apps_object("ReplicaSet", namespace, rs_name, labels, os_name, owner=owner, replicas=replicas)
        )
        workload = Workload(
            "ReplicaSet",
            namespace,
            rs_name,
            rs["metadata"]["uid"],
            labels,
            os_name,
            replicas,
            empty_dir,
            grace,
        )
        self._add_workload(workload, pdb_min_available, pdb_max_unavailable, nodes=nodes)

    def add_statefulset(
        self,
        namespace: str,
        name: str,
        *,
        replicas: int,
        pdb_max_unavailable: int | str | None = 1,
        pdb_min_available: int | str | None = None,
        nodes: Sequence[str] | None = None,
    ) -> None:
        self._ensure_namespace(namespace)
        labels = {"app": name}
        sts = self.kube.create(
            _apps_object("StatefulSet", namespace, name, labels, "linux", replicas=replicas, serviceName=name)
        )
        workload = Workload("StatefulSet", namespace, name, sts["metadata"]["uid"], labels, "linux", replicas)
        if pdb_min_available is not None:
            pdb_max_unavailable = None
        self._add_workload(workload, pdb_min_available, pdb_max_unavailable, nodes=nodes)

    def add_daemonset(self, namespace: str, name: str, *, os_name: str = "linux") -> None:
        self._ensure_namespace(namespace)
        labels = {"app": name}
        ds = self.kube.create(_apps_object("DaemonSet", namespace, name, labels, os_name))
        workload = Workload("DaemonSet", namespace, name, ds["metadata"]["uid"], labels, os_name)
        with self._lock:
            self.workloads[f"{namespace}/{name}"] = workload
        for node in self.kube.list("nodes"):
            if node["metadata"]["labels"].get("kubernetes.io/os") == os_name:
                self._create_pod(workload, node["metadata"]["name"], ready=True)

    def add_bare_pod(self, namespace: str, name: str, node: str) -> None:
        self._ensure_namespace(namespace)
        pod = _pod(namespace, name, node, {"app": name}, None)
        pod["status"] = self.agents.running_status(pod, node)
        self.kube.create(pod)

    def _add_workload(
        self,
        workload: Workload,
        min_available: int | str | None,
        max_unavailable: int | str | None,
        *,
        nodes: Sequence[str] | None = None,
    ) -> None:
        with self._lock:
            self.workloads[f"{workload.namespace}/{workload.name}"] = workload
        if min_available is not None or max_unavailable is not None:
            spec: dict[str, Any] = {"selector": {"matchLabels": workload.labels}}
            if min_available is not None:
                spec["minAvailable"] = min_available
            else:
                spec["maxUnavailable"] = max_unavailable
            self.kube.create(
                {
                    "apiVersion": "policy/v1",
                    "kind": "PodDisruptionBudget",
                    "metadata": {"name": f"{workload.labels['app']}-pdb", "namespace": workload.namespace},
                    "spec": spec,
                }
            )
        if nodes is not None:
            if len(nodes) != workload.replicas:
                raise ValueError(f"{workload.name}: {workload.replicas} replicas, {len(nodes)} nodes")
            for host in nodes:
                self._create_pod(workload, host, ready=True)
            return
        for _ in range(workload.replicas):
            self._create_pod(workload, self._pick_node(workload.os), ready=True)

    def _ensure_namespace(self, namespace: str) -> None:
        if self.kube.get("namespaces", None, namespace) is None:
            self.kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    # ---- controllers -------------------------------------------------------------------
    def _pick_node(self, os_name: str, *, exclude: str | None = None) -> str | None:
        candidates = []
        for node in self.kube.list("nodes", label_selector=f"kubernetes.io/os={os_name}"):
            name = node["metadata"]["name"]
            if name == exclude or node.get("spec", {}).get("unschedulable"):
                continue
            if not _is_ready(node):
                continue
            count = len(self.kube.list("pods", field_selector=f"spec.nodeName={name}"))
            candidates.append((count, name))
        return min(candidates)[1] if candidates else None

    def _create_pod(self, workload: Workload, node: str | None, *, ready: bool) -> None:
        if workload.kind == "StatefulSet":
            # A StatefulSet replaces a pod under the same name (with a new UID).
            taken = {
                p["metadata"]["name"]
                for p in self.kube.list(
                    "pods", workload.namespace, label_selector=f"app={workload.labels['app']}"
                )
            }
            name = next(
                f"{workload.name}-{i}" for i in itertools.count() if f"{workload.name}-{i}" not in taken
            )
        else:
            name = f"{workload.name}-{uuid.uuid4().hex[:5]}"
        owner = {
            "apiVersion": "apps/v1",
            "kind": workload.kind,
            "name": workload.name,
            "uid": workload.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        pod = _pod(
            workload.namespace,
            name,
            node,
            workload.labels,
            owner,
            empty_dir=workload.empty_dir,
            grace=workload.grace,
        )
        pod["spec"]["nodeSelector"] = {"kubernetes.io/os": workload.os}
        if ready and node is not None:
            pod["status"] = self.agents.running_status(pod, node)
        # Otherwise the scheduler binds it (when it has no node) and the kubelet starts it.
        with contextlib.suppress(KubeError):
            self.kube.create(pod)

    def _on_kube(self, event_type: str, resource: str, obj: dict[str, Any]) -> None:
        if resource == "nodes" and event_type == "MODIFIED":
            self._record_node_change(obj)
        if resource != "pods" or event_type != "DELETED":
            return
        owner = next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
        if owner is None or owner["kind"] == "DaemonSet":
            return
        workload = self.workloads.get(f"{obj['metadata']['namespace']}/{owner['name']}")
        if workload is None:
            return
        # The controller notices the missing replica and creates a replacement, unscheduled.
        self.world.scheduler.call_later(0.0, lambda: self._create_pod(workload, None, ready=False))

    def _record_node_change(self, node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        ready, cordoned = _is_ready(node), bool(node.get("spec", {}).get("unschedulable"))
        with self._lock:
            before = self._node_seen.get(name)
            self._node_seen[name] = (ready, cordoned)
        if before is None:
            return
        if before[1] != cordoned:
            self.world.history.append("node_cordoned" if cordoned else "node_uncordoned", node=name)
        if before[0] != ready:
            self.world.history.append("node_ready" if ready else "node_not_ready", node=name)

    # ---- the VM side -------------------------------------------------------------------
    def _node_for(self, payload: Mapping[str, Any]) -> str:
        return str(payload["computer_name"]).lower()

    def _on_compute(self, event: str, payload: dict[str, Any]) -> None:
        if event == "reimage_started":
            self._wipe(self._node_for(payload))
        elif event == "reimage_completed":
            node = self._node_for(payload)
            os_type = str(payload.get("os_type", "Linux")).lower()
            boot = self.timings.windows_boot if os_type == "windows" else self.timings.boot
            image = _image_version(payload.get("image_reference") or {})
            self.world.scheduler.call_later(self.world.clock.seconds(boot), lambda: self._boot(node, image))
        elif event == "instance_created":
            vm = next(
                v
                for v in self.compute.vms(payload["resource_group"], payload["scale_set"])
                if v["name"] == payload["vm_name"]
            )
            pool = next(
                (
                    p["metadata"]["labels"][POOL_LABEL]
                    for p in self.kube.list("nodes")
                    if payload["scale_set"] == f"vmss-{p['metadata']['labels'].get(POOL_LABEL)}"
                ),
                payload["scale_set"],
            )
            self._create_node(pool, str(payload.get("os_type", "Linux")).lower(), vm)
        elif event == "instance_deleted":
            name = self._node_for(payload)
            for pod in self.kube.list("pods", field_selector=f"spec.nodeName={name}"):
                self.kube.remove_now("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
            self.kube.remove_now("nodes", None, name)

    def _wipe(self, name: str) -> None:
        """The OS disk is replaced: the kubelet is gone and so is every pod on the node.

        The record names the pods that a drain should have moved and that die with the
        disk: every pod bound to the node that has not finished, whatever its phase
        (Pending, Running, Unknown) and even if it is terminating (its grace period is
        cut short), except DaemonSet and mirror pods, which come back with the node.
        The run whose annotation the node carries is recorded too.
        """
        pods = self.kube.list("pods", field_selector=f"spec.nodeName={name}")
        live = [p for p in pods if _dies_with_the_disk(p)]
        node = self.kube.get("nodes", None, name) or {"metadata": {}}
        self.world.history.append(
            "node_wiped",
            node=name,
            running_pods=[_pod_key(p) for p in live],
            terminating_pods=[_pod_key(p) for p in live if p["metadata"].get("deletionTimestamp")],
            pods=len(pods),
            run=(node["metadata"].get("annotations") or {}).get(RUN_ANNOTATION, ""),
        )

        def not_ready(obj: dict[str, Any]) -> None:
            obj["status"]["conditions"] = [_ready_condition(False, utcnow_iso())]

        try:
            self.kube.mutate("nodes", None, name, not_ready)
        except KubeError:
            return
        for pod in pods:
            self.kube.remove_now("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _boot(self, name: str, image: str) -> None:
        def boot(obj: dict[str, Any]) -> None:
            obj["status"]["conditions"] = [_ready_condition(True, utcnow_iso())]
            obj["status"]["nodeInfo"]["bootID"] = str(uuid.uuid4())
            obj["status"]["nodeInfo"]["kubeletVersion"] = KUBELET_VERSION
            obj["metadata"]["labels"][IMAGE_LABEL] = image

        try:
            node = self.kube.mutate("nodes", None, name, boot)
        except KubeError:
            return
        self.world.history.append("node_booted", node=name, image=image)
        os_name = node["metadata"]["labels"].get("kubernetes.io/os", "linux")
        for workload in list(self.workloads.values()):
            if workload.kind == "DaemonSet" and workload.os == os_name:
                self._create_pod(workload, name, ready=False)


def _pod_key(pod: Mapping[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def _dies_with_the_disk(pod: Mapping[str, Any]) -> bool:
    """A pod a drain must have moved off before a reimage (see ``SandboxCluster._wipe``)."""
    if _owned_by(pod, "DaemonSet") or MIRROR_ANNOTATION in (pod["metadata"].get("annotations") or {}):
        return False
    return pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")


def _image_version(image_reference: Mapping[str, Any]) -> str:
    ref_id = str(image_reference.get("id") or "")
    if ref_id:
        return ref_id.rsplit("/", 1)[-1]
    return str(image_reference.get("version") or "")


def _ready_condition(ready: bool, at: str) -> dict[str, str]:
    return {
        "type": "Ready",
        "status": "True" if ready else "Unknown",
        "reason": "KubeletReady" if ready else "NodeStatusUnknown",
        "message": "kubelet is posting ready status" if ready else "Kubelet stopped posting node status.",
        "lastHeartbeatTime": at,
        "lastTransitionTime": at,
    }


def _is_ready(node: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions") or []
    )


def _owned_by(pod: Mapping[str, Any], kind: str) -> bool:
    return any(
        r.get("kind") == kind and r.get("controller") for r in pod["metadata"].get("ownerReferences") or []
    )


def _owner(api_version: str, kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _apps_object(
    kind: str,
    namespace: str,
    name: str,
    labels: dict[str, str],
    os_name: str,
    *,
    owner: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """An ``apps/v1`` workload selecting its pods by ``labels``, with ``spec`` fields before
    the selector and the pod template, as the sandbox's controllers create them."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": metadata,
        "spec": {**spec, "selector": {"matchLabels": labels}, "template": _template(labels, os_name)},
    }


def _template(labels: Mapping[str, str], os_name: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "nodeSelector": {"kubernetes.io/os": os_name},
            "containers": [{"name": "app", "image": "mcr.microsoft.com/oss/nginx/nginx:1.25"}],
        },
    }


def _pod(
    namespace: str,
    name: str,
    node: str | None,
    labels: Mapping[str, str],
    owner: Mapping[str, Any] | None,
    *,
    empty_dir: bool = False,
    grace: int = 30,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "app", "image": "mcr.microsoft.com/oss/nginx/nginx:1.25"}],
        "terminationGracePeriodSeconds": grace,
    }
    if node:
        spec["nodeName"] = node
    if empty_dir:
        spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    status: dict[str, Any] = {"phase": "Pending"}
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner:
        metadata["ownerReferences"] = [copy.deepcopy(dict(owner))]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}
