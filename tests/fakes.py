"""In-memory stand-ins for the Kubernetes and Compute adapters, and a run store with Table
storage's faults (unit and functional tests).

They implement the same small surface as ``shared.adapters.kube.KubeClient`` and
``shared.adapters.compute.ComputeClient`` with behaviour simple enough to reason about in a test:
evictions succeed unless a pod is listed as blocked, reimages finish when the test says.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.adapters.compute import (
    ImageVersion,
    Instance,
    InstanceRef,
    LroStatus,
    UnguardedUpgradeError,
    unguarded_upgrade,
)
from shared.adapters.kube import (
    EvictionResult,
    Node,
    cordon_patch,
    node_status_view,
    uncordon_patch,
)
from shared.adapters.kube_objects import Pod
from shared.errors import ConcurrencyError, NotFoundError, TemporaryError
from shared.rollout.model import RunState
from shared.rollout.store.base import RUN_ROW
from shared.rollout.store.memory import MemoryRunStore

SUB = "00000000-0000-0000-0000-000000000001"
RG = "rg-test"


def scale_set_id(name: str) -> str:
    return (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"
    )


def make_node(
    name: str,
    scale_set: str,
    instance_id: str,
    *,
    zone: str = "1",
    ready: bool = True,
    unschedulable: bool = False,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"topology.kubernetes.io/zone": f"westeurope-{zone}", **(labels or {})},
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "providerID": (
                f"azure://{scale_set_id(scale_set).replace(RG, RG.lower())}/virtualMachines/{instance_id}"
            ),
            **({"unschedulable": True} if unschedulable else {}),
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "nodeInfo": {"bootID": str(uuid.uuid4()), "kubeletVersion": "v1.31.4"},
        },
    }


def make_pod(
    ns: str,
    name: str,
    node: str,
    *,
    owner_kind: str | None = "ReplicaSet",
    empty_dir: bool = False,
    phase: str = "Running",
    mirror: bool = False,
    ready: bool = False,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "namespace": ns,
        "name": name,
        "uid": str(uuid.uuid4()),
        "labels": dict(labels) if labels is not None else {"app": name},
    }
    if owner_kind:
        meta["ownerReferences"] = [{"kind": owner_kind, "name": f"{name}-owner", "controller": True}]
    if mirror:
        meta["annotations"] = {"kubernetes.io/config.mirror": "x"}
    spec: dict[str, Any] = {"nodeName": node}
    if empty_dir:
        spec["volumes"] = [{"name": "v", "emptyDir": {}}]
    status: dict[str, Any] = {"phase": phase}
    if ready:
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    return {"metadata": meta, "spec": spec, "status": status}


@dataclass
class FakeKube:
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # "ns/name" -> pod
    blocked: set[str] = field(default_factory=set)  # pods whose eviction gets 429
    events: list[tuple[str, str, str]] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)  # "Normal" | "Warning", one per event
    calls: list[str] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    daemonsets: set[str] = field(default_factory=set)
    pdbs: list[dict[str, Any]] = field(default_factory=list)
    replica_set_owners: dict[str, str] = field(default_factory=dict)  # "ns/rs" -> "Deployment/web"
    # How a watch lets time pass (the harness's clock); None: watches see only the present.
    sleep: Any = None

    def _maybe_fail(self, what: str) -> None:
        self.calls.append(what)
        if self.fail_next:
            raise self.fail_next.pop(0)

    api_version: str = "v1.31.4"

    def server_version(self) -> str:
        self._maybe_fail("version")
        return self.api_version

    def get_node(self, name: str) -> Node:
        self._maybe_fail(f"get_node {name}")
        if name not in self.nodes:
            raise NotFoundError(name)
        return Node(self.nodes[name])

    def list_nodes(self, *, label_selector: str | None = None) -> list[Node]:
        self.calls.append("list_nodes")
        wanted = dict(term.split("=", 1) for term in label_selector.split(",")) if label_selector else {}
        nodes = [Node(n) for n in self.nodes.values()]
        return [n for n in nodes if all(n.labels.get(k) == v for k, v in wanted.items())]

    def unavailable_nodes(
        self, label_selector: str | None = None, *, ignore: Any = (), whole: bool = False
    ) -> list[Node]:
        # As the real client: views from the STATUS column unless the nodes are read whole.
        self.calls.append("unavailable_nodes")
        wanted = dict(term.split("=", 1) for term in label_selector.split(",")) if label_selector else {}
        out = []
        for name, raw in self.nodes.items():
            node = Node(raw)
            if name in ignore or any(node.labels.get(k) != v for k, v in wanted.items()):
                continue
            if node.ready and not node.unschedulable:
                continue
            view = node_status_view(name, ready=node.ready, unschedulable=node.unschedulable)
            out.append(Node(copy.deepcopy(raw)) if whole else view)
        return out

    def patch_node(self, name: str, patch: dict[str, Any]) -> Node:
        self._maybe_fail(f"patch_node {name}")
        node = self.nodes[name]
        for part in ("annotations", "labels"):
            current = node["metadata"].setdefault(part, {})
            for key, value in (patch.get("metadata", {}).get(part) or {}).items():
                if value is None:
                    current.pop(key, None)
                else:
                    current[key] = value
        if "spec" in patch:
            if patch["spec"].get("unschedulable"):
                node["spec"]["unschedulable"] = True
            else:
                node["spec"].pop("unschedulable", None)
        return Node(node)

    def cordon(self, name: str, *, run_id: str, state: str) -> Node:
        return self.patch_node(name, cordon_patch(run_id, state))

    def uncordon(self, name: str, *, state: str, patched_at: str | None = None) -> Node:
        return self.patch_node(name, uncordon_patch(state, patched_at))

    def annotate_node(self, name: str, annotations: dict[str, str | None]) -> Node:
        return self.patch_node(name, {"metadata": {"annotations": annotations}})

    def list_pods_on_node(self, node: str) -> list[Pod]:
        self._maybe_fail(f"list_pods {node}")
        return [Pod(p) for p in self.pods.values() if p["spec"].get("nodeName") == node]

    def wait_for_pods_gone(self, node: str, uids: Any, *, timeout: float) -> bool:
        # No time passes in the fake: the wait ends at once with what is true now.
        self.calls.append(f"wait_for_pods_gone {node}")
        return not any(p["metadata"].get("uid") in set(uids) for p in self.pods.values())

    def _looks(self, timeout: float) -> Iterator[None]:
        """A look now, then one every 0.5 s of the clock for up to ``timeout``: like a real
        watch, waiting takes its time (only one look when there is no clock)."""
        waited = 0.0
        while True:
            yield
            if self.sleep is None or waited >= timeout:
                return
            step = min(0.5, timeout - waited)
            self.sleep(step)
            waited += step

    def wait_for_node(self, name: str, done: Any, *, timeout: float) -> Node:
        self.calls.append(f"wait_for_node {name}")
        for _ in self._looks(timeout):
            node = self.get_node(name)
            if done(node):
                break
        return node

    def wait_for_nodes(self, names: Any, done: Any, *, label_selector: str, timeout: float) -> Iterator[Node]:
        # The Nodes done at each look, of those carrying the selector's labels.
        self.calls.append(f"wait_for_nodes {','.join(sorted(names))}")
        wanted = dict(term.split("=", 1) for term in label_selector.split(","))
        left = set(names)
        for _ in self._looks(timeout):
            for name in sorted(left):
                node = Node(self.nodes[name])
                if all(node.labels.get(k) == v for k, v in wanted.items()) and done(node):
                    left.discard(name)
                    yield node
            if not left:
                return

    def daemonset_exists(self, namespace: str, name: str) -> bool:
        return f"{namespace}/{name}" in self.daemonsets

    def list_pdbs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(f"list_pdbs {namespace or '*'}")
        return [p for p in self.pdbs if namespace is None or p["metadata"].get("namespace") == namespace]

    def list_pods_on_nodes(self, nodes: Any) -> dict[str, list[Pod]]:
        return {name: self.list_pods_on_node(name) for name in nodes}

    def list_pods_in_namespaces(self, namespaces: Any, nodes: Any) -> dict[str, list[Pod]]:
        self._maybe_fail(f"list_pods_in {','.join(sorted(namespaces))}")
        wanted = set(namespaces)
        pods = [p for p in self.pods.values() if p["metadata"].get("namespace") in wanted]
        return {name: [Pod(p) for p in pods if p["spec"].get("nodeName") == name] for name in nodes}

    def replica_set_owner(self, namespace: str, name: str) -> str | None:
        return self.replica_set_owners.get(f"{namespace}/{name}")

    def evict(self, pod: Pod, *, grace_period_seconds: int | None = None) -> EvictionResult:
        self._maybe_fail(f"evict {pod.key}")
        if pod.key in self.blocked:
            return EvictionResult(
                evicted=False,
                blocked_reason="Cannot evict pod as it would violate the pod's disruption budget.",
            )
        if pod.key not in self.pods:
            return EvictionResult(evicted=False, gone=True)
        del self.pods[pod.key]  # instant termination keeps unit tests simple
        return EvictionResult(evicted=True)

    def record_event(
        self, node: str, *, reason: str, message: str, warning: bool = False, now: float
    ) -> bool:
        self.events.append((node, reason, message))
        self.event_types.append("Warning" if warning else "Normal")
        return True

    def reboot(self, name: str, *, image: str | None = None) -> None:
        node = self.nodes[name]
        node["status"]["nodeInfo"]["bootID"] = str(uuid.uuid4())
        node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        if image:
            node["metadata"]["labels"]["vmss-node-patcher.io/image-version"] = image


@dataclass
class FakeCompute:
    model_image: str = (
        "/subscriptions/x/resourcegroups/rg/providers/microsoft.compute/galleries/g/images/d/versions/2.0.0"
    )
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)  # instance id -> state
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> op
    calls: list[str] = field(default_factory=list)
    fail_lro: int = 0
    fail_next: list[Exception] = field(default_factory=list)
    # The time ARM stamps on an instance's provisioning status (the harness's clock).
    clock: Any = None

    def _maybe_fail(self, what: str) -> None:
        self.calls.append(what)
        if self.fail_next:
            raise self.fail_next.pop(0)

    def instance(self, instance_id: str) -> dict[str, Any]:
        return self.instances.setdefault(
            instance_id,
            {
                "state": "Succeeded",
                "latest": False,
                "image": "old",
                "disk": f"disk-{instance_id}-0",
                "time": 0.0,
            },
        )

    def reimaged(self, instance_id: str, *, failed: bool = False) -> None:
        """What a reimage does to the instance: a new OS disk, a new provisioning time."""
        inst = self.instance(instance_id)
        inst["state"] = "Failed" if failed else "Succeeded"
        inst["time"] = self.clock() if self.clock is not None else 1.0
        if not failed:
            gen = int(inst["disk"].rsplit("-", 1)[1]) + 1
            inst.update(latest=True, image=self.model_image, disk=f"disk-{instance_id}-{gen}")

    def get_instance(self, ref: InstanceRef) -> Instance:
        self._maybe_fail(f"get_instance {ref.instance_id}")
        inst = self.instance(ref.instance_id)
        return Instance(
            ref.instance_id,
            inst["state"],
            inst["latest"],
            inst["image"],
            "running",
            "",
            os_disk=inst["disk"],
            provisioning_time=inst["time"],
        )

    scale_sets: dict[str, list[str]] = field(default_factory=dict)  # scale set id (lower) -> instance ids
    image_versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # id (lower) -> state, tags
    arm_calls: list[tuple[str, str, Any]] = field(default_factory=list)
    upgrade_policies: dict[str, str] = field(default_factory=dict)  # scale set id (lower) -> mode
    model_writes: list[str] = field(default_factory=list)

    def get_upgrade_policy(self, scale_set_id: str) -> str:
        self._maybe_fail(f"get_upgrade_policy {scale_set_id}")
        return self.upgrade_policies.get(scale_set_id.lower(), "Manual")

    def list_instances(self, scale_set_id: str) -> list[Instance]:
        self._maybe_fail(f"list_instances {scale_set_id}")
        out = []
        for iid in self.scale_sets.get(scale_set_id.lower(), []):
            inst = self.instance(iid)
            out.append(
                Instance(
                    iid, inst["state"], inst["latest"], inst["image"], "running", "", os_disk=inst["disk"]
                )
            )
        return out

    def get_image_version(self, version_id: str) -> ImageVersion:
        self._maybe_fail(f"get_image_version {version_id}")
        found = self.image_versions.get(version_id.lower())
        if found is None:
            raise NotFoundError(version_id)
        return ImageVersion(version_id, found["state"], dict(found.get("tags", {})), ("westeurope",))

    def set_model_image(self, scale_set_id: str, image_id: str) -> None:
        self._maybe_fail(f"set_model_image {scale_set_id}")
        problem = unguarded_upgrade(scale_set_id.rsplit("/", 1)[-1], self.get_upgrade_policy(scale_set_id))
        if problem:
            raise UnguardedUpgradeError(problem)
        self.model_writes.append(scale_set_id.lower())
        self.model_image = image_id.lower()
        for iid in self.scale_sets.get(scale_set_id.lower(), []):
            inst = self.instance(iid)
            inst["latest"] = inst["image"] == self.model_image

    def arm_request(self, method: str, path: str, *, api_version: str, body: Any = None) -> Any:
        self._maybe_fail(f"arm {method} {path}")
        self.arm_calls.append((method, path, body))
        return {"properties": {"status": "Cancelled"}}

    def get_model_image(self, ref: InstanceRef) -> str:
        self._maybe_fail("get_model_image")
        return self.model_image

    def _begin(self, op: str, instance_ids: list[str]) -> str:
        self._maybe_fail(f"{op} {instance_ids}")
        token = uuid.uuid4().hex
        failed = self.fail_lro > 0
        self.fail_lro -= 1 if failed else 0
        self.operations[token] = {"ids": instance_ids, "done": False, "failed": failed}
        for i in instance_ids:
            self.instance(i)["state"] = "Updating"
        return token

    def begin_reimage(self, ref: InstanceRef, instance_ids: list[str]) -> str:
        return self._begin("reimage", instance_ids)

    def begin_upgrade_to_latest_model(self, ref: InstanceRef, instance_ids: list[str]) -> str:
        return self._begin("manualupgrade", instance_ids)

    def finish_all(self) -> list[str]:
        """Complete every running operation; returns the instance ids reimaged."""
        done = []
        for op in self.operations.values():
            if op["done"]:
                continue
            op["done"] = True
            for i in op["ids"]:
                self.reimaged(i, failed=op["failed"])
                if not op["failed"]:
                    done.append(i)
        return done

    def poll(self, token: str) -> LroStatus:
        self._maybe_fail("poll")
        op = self.operations[token]
        if not op["done"]:
            return LroStatus(done=False)
        if op["failed"]:
            return LroStatus(done=True, succeeded=False, error="InternalExecutionError: boom")
        return LroStatus(done=True, succeeded=True)


def transient(message: str = "boom", delay: float | None = None) -> TemporaryError:
    return TemporaryError(message, delay=delay)


# ---- Table storage faults, as the sandbox's table proxy injects them --------------------------

WriteMatch = Callable[[str, Sequence[tuple[str, str, dict[str, Any], str | None]]], bool]


@dataclass
class _WriteFault:
    match: WriteMatch
    error: Exception
    applied: bool  # the write went through before the error (its answer was lost)


class FlakyRunStore(MemoryRunStore):
    """The in-memory store with the two faults of a real Table service that matter to a
    run's bookkeeping: a write that fails (a 503 the SDK's retries did not outlast), and
    a write that was applied but whose answer was lost (the caller sees an error, or, once
    the SDK has retried a create, a 409 for its own first attempt). Each fault fires once."""

    def __init__(self) -> None:
        super().__init__()
        self._faults: list[_WriteFault] = []
        self.fired: list[str] = []

    def fail_write(self, match: WriteMatch, error: Exception | None = None) -> None:
        self._faults.append(_WriteFault(match, error or transient("table storage answered 503"), False))

    def lose_answer(self, match: WriteMatch, error: Exception | None = None) -> None:
        """``error``: what the caller sees instead of the answer; by default the 409 of
        the SDK's retry of a create that had succeeded."""
        self._faults.append(_WriteFault(match, error or ConcurrencyError("EntityAlreadyExists"), True))

    def _transact(
        self, partition: str, ops: Sequence[tuple[str, str, dict[str, Any], str | None]]
    ) -> list[str]:
        fault = next((f for f in self._faults if f.match(partition, ops)), None)
        if fault is None:
            return super()._transact(partition, ops)
        self._faults.remove(fault)
        self.fired.append(f"{partition}: {'answer lost' if fault.applied else 'failed'}")
        if fault.applied:
            super()._transact(partition, ops)
        raise fault.error


def closes_run(partition: str, ops: Sequence[tuple[str, str, dict[str, Any], str | None]]) -> bool:
    """The write that ends a run: its run record, moved to a terminal state."""
    return any(row == RUN_ROW and RunState(data["state"]).terminal for _, row, data, _ in ops if data)


def claims_cluster(partition: str, ops: Sequence[tuple[str, str, dict[str, Any], str | None]]) -> bool:
    return partition.startswith("cluster~") and any(kind == "create" for kind, *_ in ops)


def creates_run(partition: str, ops: Sequence[tuple[str, str, dict[str, Any], str | None]]) -> bool:
    return any(kind == "create" and row == RUN_ROW for kind, row, _, _ in ops)
