"""Label and field selectors, parsed and matched as ``labels.Parse`` and ``fields.Parse`` do."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sandbox.kube.errors import bad_request
from sandbox.kube.objects import Obj
from sandbox.kube.resources import ResourceType


def _get_path(obj: Any, dotted: str) -> Any:
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("gt", "lt"):
            try:
                have, want = int(str(value)), int(self.values[0])
            except ValueError:
                return False
            return present and (have > want if self.op == "gt" else have < want)
        return False


LabelSelector = tuple[_Requirement, ...]
_EQUALITY_TERM = re.compile(r"^\s*([^\s!=<>(),]+)\s*(==|=|!=|>|<)\s*([^\s,()]*)\s*$")
_SET_TERM = re.compile(r"^\s*([^\s!=<>(),]+)\s+(in|notin)\s*\(([^()]*)\)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(!?)\s*([^\s!=<>(),]+)\s*$")


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse the ``labelSelector`` query syntax (labels.Parse)."""
    if not text or not text.strip():
        return ()
    reqs: list[_Requirement] = []
    for term in _split_top_level(text):
        if not term.strip():
            raise bad_request(f"unable to parse requirement: found '', expected: identifier in {text!r}")
        if m := _SET_TERM.match(term):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(_Requirement(m.group(1), m.group(2), values))
        elif m := _EQUALITY_TERM.match(term):
            op = {"==": "=", "=": "=", "!=": "!=", ">": "gt", "<": "lt"}[m.group(2)]
            if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", m.group(3)):
                raise bad_request(
                    "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer"
                )
            reqs.append(_Requirement(m.group(1), op, (m.group(3),)))
        elif m := _EXISTS_TERM.match(term):
            reqs.append(_Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise bad_request(f"unable to parse requirement: {term.strip()!r} in selector {text!r}")
    return tuple(reqs)


def label_selector_from_struct(selector: Any) -> LabelSelector | None:
    """metav1.LabelSelectorAsSelector: ``None`` for a nil selector (matches nothing)."""
    if not isinstance(selector, dict):
        return None
    reqs: list[_Requirement] = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        reqs.append(_Requirement(key, "=", (str(value),)))
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or []:
        op = ops.get(expr.get("operator", ""))
        if op is None:
            return None
        reqs.append(_Requirement(expr.get("key", ""), op, tuple(str(v) for v in expr.get("values") or [])))
    return tuple(reqs)


def labels_match(selector: LabelSelector, obj: Obj) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(req.matches(labels) for req in selector)


# fields.Parse + the per-kind field label conversion funcs: these are the only fields the apiserver accepts.
_COMMON_FIELDS = {"metadata.name", "metadata.namespace"}
_SUPPORTED_FIELDS: dict[str, set[str]] = {
    "pods": _COMMON_FIELDS
    | {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "nodes": _COMMON_FIELDS | {"spec.unschedulable"},
    "namespaces": _COMMON_FIELDS | {"status.phase"},
    "events": _COMMON_FIELDS
    | {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    "replicasets.apps": _COMMON_FIELDS | {"status.replicas"},
}
FieldSelector = tuple[tuple[str, str, str], ...]  # (field, "=" | "!=", value)


def parse_field_selector(text: str | None, rt: ResourceType) -> FieldSelector:
    if not text or not text.strip():
        return ()
    supported = _SUPPORTED_FIELDS.get(rt.key, _COMMON_FIELDS)
    terms: list[tuple[str, str, str]] = []
    for raw in re.split(r"(?<!\\),", text):
        m = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{raw}'")
        fld, op, value = m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)
        if fld not in supported:
            raise bad_request(f"field label not supported: {fld}")
        value = re.sub(r"\\(.)", r"\1", value)
        terms.append((fld, op, value))
    return tuple(terms)


def _field_value(obj: Obj, fld: str) -> str:
    if fld == "source":
        fld = "source.component"
    value = _get_path(obj, fld)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def fields_match(selector: FieldSelector, obj: Obj) -> bool:
    for fld, op, want in selector:
        have = _field_value(obj, fld)
        if (have == want) != (op == "="):
            return False
    return True
