"""The node side of the simulated cluster: kube-scheduler and the nodes' kubelets.

Any pod goes the way it goes in a cluster, whoever created it (the sandbox's own
controllers, ``kubectl apply``, the ``kubernetes`` client): an unscheduled pod is bound
to a node the scheduler may use, and a bound pod is started by its node's kubelet once
that node is Ready: ``Pending`` -> ``Running`` with the conditions, container statuses,
IPs and start time the kubelet reports, Ready at once (the simulated containers have no
probes). Deleting and evicting pods is the API server's (``sandbox.kube.registry``).

The scheduler keeps to the filters a patching run meets: a cordoned node takes no new
pod (unless the pod tolerates ``node.kubernetes.io/unschedulable``), nor does a NotReady
node (the node lifecycle controller's ``node.kubernetes.io/not-ready`` taint) or one
with a ``NoSchedule``/``NoExecute`` taint the pod does not tolerate; ``nodeSelector``
and required node affinity (``matchExpressions``) must match, and the node must have
room (``allocatable.pods``). Of the nodes left, the one running fewest pods wins, as
LeastAllocated spreads equal pods. A pod that fits
nowhere gets ``PodScheduled=False`` (``Unschedulable``, with the scheduler's message) and
is tried again whenever a node changes, as the scheduling queue's node events do.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import threading
from collections.abc import Mapping
from typing import Any

from sandbox.kube.errors import KubeError
from sandbox.kube.registry import KubeStore
from sandbox.world import World, utcnow_iso

logger = logging.getLogger(__name__)

DEFAULT_SCHEDULER = "default-scheduler"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
# kubelet's default --max-pods, for nodes that do not say.
DEFAULT_MAX_PODS = 110

Obj = dict[str, Any]


class NodeAgents:
    """kube-scheduler plus one kubelet per node, driven by the store's change events."""

    def __init__(
        self,
        world: World,
        kube: KubeStore,
        *,
        schedule_cloud_seconds: float = 10.0,
        start_cloud_seconds: float = 10.0,
    ) -> None:
        self.world = world
        self.kube = kube
        self.schedule_cloud_seconds = schedule_cloud_seconds
        self.start_cloud_seconds = start_cloud_seconds
        self._lock = threading.Lock()
        self._binding: set[str] = set()  # pod uids with a scheduling attempt due
        self._starting: set[str] = set()  # pod uids their kubelet is about to start
        self._unschedulable: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name)
        self._node_view: dict[str, tuple[Any, ...]] = {}
        self._host_ips: dict[str, int] = {}
        self._pod_ips: dict[str, itertools.count[int]] = {}
        kube.add_listener(self._on_change)

    # ---- what the kubelet reports ---------------------------------------------------------
    def running_status(self, pod: Mapping[str, Any], node: str) -> Obj:
        """The status a kubelet writes for a pod whose containers all started."""
        now = utcnow_iso()
        spec = pod.get("spec") or {}
        host_ip = self._host_ip(node)
        pod_ip = host_ip if spec.get("hostNetwork") else self._next_pod_ip(node)

        def condition(kind: str) -> Obj:
            return {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}

        uid = str((pod.get("metadata") or {}).get("uid") or (pod.get("metadata") or {}).get("name"))
        status: Obj = {
            "phase": "Running",
            "conditions": [
                condition(kind)
                for kind in (
                    "PodReadyToStartContainers",
                    "Initialized",
                    "Ready",
                    "ContainersReady",
                    "PodScheduled",
                )
            ],
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": now,
            "containerStatuses": [
                _container_status(c, uid, running_since=now) for c in spec.get("containers") or []
            ],
            "qosClass": _qos_class(spec),
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [
                _container_status(c, uid, running_since=None) for c in spec["initContainers"]
            ]
        return status

    def _host_ip(self, node: str) -> str:
        with self._lock:
            index = self._host_ips.setdefault(node, len(self._host_ips) + 4)
        return f"10.224.{index // 250}.{index % 250 + 4}"

    def _next_pod_ip(self, node: str) -> str:
        with self._lock:
            index = self._host_ips.setdefault(node, len(self._host_ips) + 4)
            n = next(self._pod_ips.setdefault(node, itertools.count(2)))
        # Each node gets a /24 of the pod CIDR, as kubenet and Azure CNI overlay hand out.
        return f"10.244.{index % 256}.{n % 254 + 2}"

    # ---- change events --------------------------------------------------------------------
    def _on_change(self, event_type: str, resource: str, obj: Obj) -> None:
        if resource == "pods":
            if event_type == "DELETED":
                with self._lock:
                    self._unschedulable.pop(obj["metadata"]["uid"], None)
            else:
                self._consider(obj)
        elif resource == "nodes":
            self._on_node(event_type, obj)

    def _on_node(self, event_type: str, node: Obj) -> None:
        name = node["metadata"]["name"]
        view = (
            _is_ready(node),
            bool((node.get("spec") or {}).get("unschedulable")),
            tuple(sorted((node["metadata"].get("labels") or {}).items())),
            repr((node.get("spec") or {}).get("taints")),
        )
        with self._lock:
            before = self._node_view.get(name)
            if event_type == "DELETED":
                self._node_view.pop(name, None)
                return
            self._node_view[name] = view
            if before == view:
                return
            waiting = list(self._unschedulable.items())
            self._unschedulable.clear()
        if view[0] and (before is None or not before[0]):
            # The kubelet is back: it starts what was bound to it meanwhile.
            for pod in self.kube.list("pods", field_selector=f"spec.nodeName={name}"):
                self._consider(pod)
        for uid, (namespace, pod_name) in waiting:
            self._later(self._binding, uid, 0.0, lambda ns=namespace, n=pod_name, u=uid: self._bind(ns, n, u))

    def _consider(self, pod: Obj) -> None:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") != "Pending":
            return
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        if spec.get("nodeName"):
            self._later(
                self._starting,
                uid,
                self.world.clock.seconds(self.start_cloud_seconds),
                lambda: self._start(ns, name, uid),
            )
        elif spec.get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER and not spec.get(
            "schedulingGates"
        ):
            with self._lock:
                if uid in self._unschedulable:
                    return  # waits for a node to change
            self._later(
                self._binding,
                uid,
                self.world.clock.seconds(self.schedule_cloud_seconds),
                lambda: self._bind(ns, name, uid),
            )

    def _later(self, pending: set[str], uid: str, delay: float, fn: Any) -> None:
        with self._lock:
            if uid in pending:
                return
            pending.add(uid)

        def run() -> None:
            with self._lock:
                pending.discard(uid)
            # A pod that went or changed meanwhile: its own events say what comes next.
            with contextlib.suppress(KubeError):
                fn()

        self.world.scheduler.call_later(delay, run)

    # ---- the scheduler --------------------------------------------------------------------
    def _bind(self, namespace: str, name: str, uid: str) -> None:
        pod = self.kube.get("pods", namespace, name)
        if pod is None or pod["metadata"]["uid"] != uid or pod["metadata"].get("deletionTimestamp"):
            return
        if (pod.get("spec") or {}).get("nodeName"):
            return
        nodes = self.kube.list("nodes")
        counts = self.kube.pod_counts_by_node()
        fits = [n for n in nodes if _fits(pod, n, counts.get(n["metadata"]["name"], 0))]
        if not fits:
            with self._lock:
                self._unschedulable[uid] = (namespace, name)
            message = _unschedulable_message(pod, nodes, counts)

            def unschedulable(obj: Obj) -> None:
                _set_condition(obj, "PodScheduled", "False", reason="Unschedulable", message=message)

            self.kube.mutate("pods", namespace, name, unschedulable)
            return
        chosen = min(fits, key=lambda n: (counts.get(n["metadata"]["name"], 0), n["metadata"]["name"]))
        node = chosen["metadata"]["name"]

        def bind(obj: Obj) -> None:
            # What POST pods/{name}/binding does: the node, and the scheduler's condition.
            obj["spec"]["nodeName"] = node
            _set_condition(obj, "PodScheduled", "True")

        self.kube.mutate("pods", namespace, name, bind)
        self.world.history.append("pod_scheduled", namespace=namespace, name=name, uid=uid, node=node)

    # ---- the kubelet ----------------------------------------------------------------------
    def _start(self, namespace: str, name: str, uid: str) -> None:
        pod = self.kube.get("pods", namespace, name)
        if pod is None or pod["metadata"]["uid"] != uid or pod["metadata"].get("deletionTimestamp"):
            return
        node_name = (pod.get("spec") or {}).get("nodeName")
        if (pod.get("status") or {}).get("phase") != "Pending" or not node_name:
            return
        node = self.kube.get("nodes", None, node_name)
        if node is None or not _is_ready(node):
            return  # no kubelet to run it; the node's return to Ready brings it back here
        status = self.running_status(pod, node_name)

        def start(obj: Obj) -> None:
            if obj["metadata"].get("deletionTimestamp") or obj["status"].get("phase") != "Pending":
                return
            obj["status"] = status

        self.kube.mutate("pods", namespace, name, start)


# ---- the scheduler's filters ----------------------------------------------------------------
def _tolerates(pod: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """v1helper.TolerationsTolerateTaint."""
    for toleration in (pod.get("spec") or {}).get("tolerations") or []:
        effect = toleration.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        operator = toleration.get("operator") or "Equal"
        key = toleration.get("key") or ""
        if key != taint.get("key") and not (key == "" and operator == "Exists"):
            continue
        if operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _blocking_taints(node: Mapping[str, Any]) -> list[Obj]:
    spec = node.get("spec") or {}
    taints = [t for t in spec.get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute")]
    if spec.get("unschedulable"):
        taints.append({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"})
    if not _is_ready(node):
        taints.append({"key": NOT_READY_TAINT, "effect": "NoSchedule"})
    return taints


def _selector_matches(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """nodeSelector, and the required node affinity: any of its terms, each term all of
    its expressions (NodeAffinity filter)."""
    labels = node["metadata"].get("labels") or {}
    spec = pod.get("spec") or {}
    if not all(labels.get(k) == v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True
    terms = required.get("nodeSelectorTerms") or []
    return any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
        for term in terms
        if term.get("matchExpressions")
    )


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression.get("key", ""), expression.get("operator", "")
    values = [str(v) for v in expression.get("values") or []]
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels and len(values) == 1:
        try:
            have, limit = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > limit if operator == "Gt" else have < limit
    return False


def _max_pods(node: Mapping[str, Any]) -> int:
    try:
        return int(((node.get("status") or {}).get("allocatable") or {}).get("pods", DEFAULT_MAX_PODS))
    except (TypeError, ValueError):
        return DEFAULT_MAX_PODS


def _fits(pod: Mapping[str, Any], node: Mapping[str, Any], pods_on_node: int) -> bool:
    if node["metadata"].get("deletionTimestamp"):
        return False
    return (
        _selector_matches(pod, node)
        and all(_tolerates(pod, t) for t in _blocking_taints(node))
        and pods_on_node < _max_pods(node)
    )


def _unschedulable_message(pod: Mapping[str, Any], nodes: list[Obj], counts: Mapping[str, int]) -> str:
    """The scheduler's FailedScheduling text: how many nodes each filter turned away."""
    reasons: dict[str, int] = {}
    for node in nodes:
        if not _selector_matches(pod, node):
            why = "node(s) didn't match Pod's node affinity/selector"
        elif untolerated := [t for t in _blocking_taints(node) if not _tolerates(pod, t)]:
            taint = untolerated[0]
            if taint["key"] == UNSCHEDULABLE_TAINT:
                why = "node(s) were unschedulable"
            else:
                value = f"={taint['value']}" if taint.get("value") else ""
                why = f"node(s) had untolerated taint {{{taint['key']}{value}: }}"
        else:
            why = "Too many pods"
        reasons[why] = reasons.get(why, 0) + 1
    detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
    total = len(nodes)
    text = f"0/{total} nodes are available"
    return f"{text}: {detail}." if detail else f"{text}."


# ---- helpers ---------------------------------------------------------------------------------
def _is_ready(node: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )


def _set_condition(pod: Obj, kind: str, status: str, *, reason: str = "", message: str = "") -> None:
    conditions = pod.setdefault("status", {}).setdefault("conditions", [])
    current = next((c for c in conditions if c.get("type") == kind), None)
    if current is None:
        current = {"type": kind, "lastProbeTime": None}
        conditions.append(current)
    if current.get("status") != status:
        current["lastTransitionTime"] = utcnow_iso()
    current["status"] = status
    for fld, value in (("reason", reason), ("message", message)):
        if value:
            current[fld] = value
        else:
            current.pop(fld, None)


def _container_status(container: Mapping[str, Any], pod_uid: str, *, running_since: str | None) -> Obj:
    name, image = str(container.get("name", "")), str(container.get("image", ""))
    digest = hashlib.sha256(image.encode()).hexdigest()
    container_id = hashlib.sha256(f"{pod_uid}/{name}".encode()).hexdigest()
    state: Obj = (
        {"running": {"startedAt": running_since}}
        if running_since
        else {
            "terminated": {
                "exitCode": 0,
                "reason": "Completed",
                "containerID": f"containerd://{container_id}",
            }
        }
    )
    return {
        "name": name,
        "image": image,
        "imageID": f"{image.split(':', 1)[0]}@sha256:{digest}",
        "containerID": f"containerd://{container_id}",
        "ready": running_since is not None,
        "started": running_since is not None,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    }


def _qos_class(spec: Mapping[str, Any]) -> str:
    """v1qos.GetPodQOS, roughly: no requests or limits at all is BestEffort; limits equal to
    requests for cpu and memory in every container is Guaranteed; else Burstable."""
    containers = list(spec.get("containers") or [])
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(k) is not None
        and (r.get("requests") or r.get("limits") or {}).get(k) == (r.get("limits") or {}).get(k)
        for r in resources
        for k in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"
