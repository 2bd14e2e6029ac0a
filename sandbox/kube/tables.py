"""``kubectl get`` output: the ``Table`` the apiserver's table convertors render for each kind.

Columns and cells follow the printers in ``pkg/printers/internalversion/printers.go``
(and, for custom resources, the CRDs' additionalPrinterColumns), so ``kubectl get`` against
the sandbox prints what it prints against a cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sandbox.kube.errors import bad_request
from sandbox.kube.objects import Obj, parse_time, pod_ready, utc_now
from sandbox.kube.resources import ResourceType


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration, which every AGE column uses."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return _in_units(minutes, "m", s % 60, "s")
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return _in_units(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return _in_units(hours // 24, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        return _in_units(hours // 24 // 365, "y", (hours // 24) % 365, "d")
    return f"{hours // 24 // 365}y"


def _in_units(major: int, major_unit: str, minor: int, minor_unit: str) -> str:
    """``3m``, or ``3m20s`` when the smaller unit is not zero."""
    return f"{major}{major_unit}" if minor == 0 else f"{major}{major_unit}{minor}{minor_unit}"


def _age(obj: Obj) -> str:
    created = parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    if created is None:
        return "<unknown>"
    return human_duration((utc_now() - created).total_seconds())


def _col(name: str, kind: str = "string", priority: int = 0, description: str = "", fmt: str = "") -> Obj:
    return {
        "name": name,
        "type": kind,
        "format": fmt,
        "description": description or name,
        "priority": priority,
    }


_NAME_COL = _col("Name", fmt="name", description="Name must be unique within a namespace.")
_AGE_COL = _col(
    "Age",
    description="CreationTimestamp is a timestamp representing the server time when this object was created.",
)


def _node_row(o: Obj) -> list[Any]:
    conditions = {c.get("type"): c for c in (o.get("status") or {}).get("conditions") or []}
    status = []
    if "Ready" in conditions:
        status.append("Ready" if conditions["Ready"].get("status") == "True" else "NotReady")
    else:
        status.append("Unknown")
    if (o.get("spec") or {}).get("unschedulable"):
        status.append("SchedulingDisabled")
    labels = o["metadata"].get("labels") or {}
    roles = sorted(
        {k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/") and "/" in k}
        | ({labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role") else set())
    )
    info = (o.get("status") or {}).get("nodeInfo") or {}
    addresses = (o.get("status") or {}).get("addresses") or []

    def address(kind: str) -> str:
        return next((a.get("address", "") for a in addresses if a.get("type") == kind), "<none>")

    return [
        o["metadata"]["name"],
        ",".join(status),
        ",".join(r for r in roles if r) or "<none>",
        _age(o),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _pod_row(o: Obj) -> list[Any]:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    reason = status.get("reason") or status.get("phase") or ""
    ready, restarts, running = 0, 0, False
    for cs in reversed(status.get("containerStatuses") or []):
        restarts += int(cs.get("restartCount", 0))
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif (state.get("terminated") or {}).get("reason"):
            reason = state["terminated"]["reason"]
        elif "terminated" in state:
            reason = f"ExitCode:{state['terminated'].get('exitCode', 0)}"
        elif cs.get("ready") and "running" in state:
            running = True
            ready += 1
    if reason == "Completed" and running:
        reason = "Running" if pod_ready(o) else "NotReady"
    if o["metadata"].get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    gates = spec.get("readinessGates") or []
    return [
        o["metadata"]["name"],
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        str(restarts),
        _age(o),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        "<none>" if not gates else f"0/{len(gates)}",
    ]


def _ready_condition(o: Obj) -> tuple[str, str]:
    for cond in (o.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status", "")), str(cond.get("message", ""))
    return "", ""


def _count_cols(*names: str) -> list[Obj]:
    return [_col(name, "integer") for name in names]


def _status_counts(o: Obj, *fields: str) -> list[Any]:
    status = o.get("status") or {}
    return [status.get(fld, 0) for fld in fields]


def _ready_of_desired(o: Obj) -> str:
    """A workload's READY column: ready replicas of those its spec asks for."""
    return f"{(o.get('status') or {}).get('readyReplicas', 0)}/{(o.get('spec') or {}).get('replicas', 1)}"


_TABLES: dict[str, tuple[list[Obj], Callable[[Obj], list[Any]]]] = {
    "nodes": (
        [
            _NAME_COL,
            _col("Status", description="The status of the node"),
            _col("Roles", description="The roles of the node"),
            _AGE_COL,
            _col("Version", description="Kubelet Version reported by the node."),
            _col("Internal-IP", priority=1, description="List of addresses reachable to the node."),
            _col("External-IP", priority=1, description="List of addresses reachable to the node."),
            _col("OS-Image", priority=1, description="OS Image reported by the node from /etc/os-release"),
            _col("Kernel-Version", priority=1, description="Kernel Version reported by the node"),
            _col(
                "Container-Runtime", priority=1, description="Container runtime version reported by the node."
            ),
        ],
        _node_row,
    ),
    "pods": (
        [
            _NAME_COL,
            _col("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
            _col("Status", description="The aggregate status of the containers in this pod."),
            _col(
                "Restarts", description="The number of times the containers in this pod have been restarted."
            ),
            _AGE_COL,
            _col("IP", priority=1, description="IP address allocated to the pod."),
            _col("Node", priority=1, description="Name of the Node this pod is running on."),
            _col(
                "Nominated Node", priority=1, description="Name of the node this pod is nominated to run on."
            ),
            _col("Readiness Gates", priority=1, description="Pod readiness gates."),
        ],
        _pod_row,
    ),
    "namespaces": (
        [_NAME_COL, _col("Status"), _AGE_COL],
        lambda o: [o["metadata"]["name"], (o.get("status") or {}).get("phase", ""), _age(o)],
    ),
    "poddisruptionbudgets.policy": (
        [
            _NAME_COL,
            _col("Min Available"),
            _col("Max Unavailable"),
            _col("Allowed Disruptions", "integer"),
            _AGE_COL,
        ],
        lambda o: [
            o["metadata"]["name"],
            str((o.get("spec") or {}).get("minAvailable", "N/A")),
            str((o.get("spec") or {}).get("maxUnavailable", "N/A")),
            (o.get("status") or {}).get("disruptionsAllowed", 0),
            _age(o),
        ],
    ),
    "deployments.apps": (
        [_NAME_COL, _col("Ready"), *_count_cols("Up-to-date", "Available"), _AGE_COL],
        lambda o: [
            o["metadata"]["name"],
            _ready_of_desired(o),
            *_status_counts(o, "updatedReplicas", "availableReplicas"),
            _age(o),
        ],
    ),
    "replicasets.apps": (
        [_NAME_COL, *_count_cols("Desired", "Current", "Ready"), _AGE_COL],
        lambda o: [
            o["metadata"]["name"],
            (o.get("spec") or {}).get("replicas", 1),
            *_status_counts(o, "replicas", "readyReplicas"),
            _age(o),
        ],
    ),
    "daemonsets.apps": (
        [_NAME_COL, *_count_cols("Desired", "Current", "Ready", "Up-to-date", "Available"), _AGE_COL],
        lambda o: [
            o["metadata"]["name"],
            *_status_counts(
                o,
                "desiredNumberScheduled",
                "currentNumberScheduled",
                "numberReady",
                "updatedNumberScheduled",
                "numberAvailable",
            ),
            _age(o),
        ],
    ),
    "statefulsets.apps": (
        [_NAME_COL, _col("Ready"), _AGE_COL],
        lambda o: [o["metadata"]["name"], _ready_of_desired(o), _age(o)],
    ),
    "leases.coordination.k8s.io": (
        [_NAME_COL, _col("Holder"), _AGE_COL],
        lambda o: [o["metadata"]["name"], (o.get("spec") or {}).get("holderIdentity", ""), _age(o)],
    ),
    "events": (
        [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message"), _NAME_COL],
        lambda o: [
            human_duration(
                (
                    utc_now() - (parse_time(o.get("lastTimestamp") or o.get("eventTime")) or utc_now())
                ).total_seconds()
            ),
            o.get("type", ""),
            o.get("reason", ""),
            f"{str((o.get('involvedObject') or {}).get('kind', '')).lower()}/"
            f"{(o.get('involvedObject') or {}).get('name', '')}",
            o.get("message", ""),
            o["metadata"]["name"],
        ],
    ),
}


def _table_for(rt: ResourceType) -> tuple[list[Obj], Callable[[Obj], list[Any]]]:
    if rt.key in _TABLES:
        return _TABLES[rt.key]
    if rt.custom:
        columns = [
            _NAME_COL,
            _col("Age", "date", description="CreationTimestamp"),
            _col("Ready"),
            _col("Status"),
        ]
        if rt.plural == "gitrepositories":
            columns.insert(1, _col("URL"))

        def row(o: Obj) -> list[Any]:
            ready, message = _ready_condition(o)
            cells = [o["metadata"]["name"], _age(o), ready, message]
            if rt.plural == "gitrepositories":
                cells.insert(1, (o.get("spec") or {}).get("url", ""))
            return cells

        return columns, row
    return [_NAME_COL, _AGE_COL], lambda o: [o["metadata"]["name"], _age(o)]


def table_include_object(query: dict[str, str]) -> str:
    """TableOptions.includeObject; the apiserver refuses a value it does not know
    (transformObject in endpoints/handlers/response.go) rather than guessing."""
    value = query.get("includeObject") or "Metadata"
    if value not in ("None", "Metadata", "Object"):
        raise bad_request(f'unrecognized includeObject value: "{value}"')
    return value


def partial_metadata(obj: Obj, version: str) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": obj["metadata"],
    }


def render_table(
    rt: ResourceType,
    objs: list[Obj],
    *,
    version: str,
    include_object: str,
    list_meta: Obj,
    with_columns: bool = True,
) -> Obj:
    columns, row_fn = _table_for(rt)
    rows = []
    for obj in objs:
        row: Obj = {"cells": row_fn(obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = partial_metadata(obj, version)
        rows.append(row)
    table: Obj = {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": list_meta}
    if with_columns:
        table["columnDefinitions"] = columns
    table["rows"] = rows
    return table
