"""What an operator or a trigger asks of ``RunService``, read from a request body and
checked field by field: a bad field is refused with its name, nothing is half-read.

Apart from the service, so the what-if plan (``plan``) can take a request without
importing the service that runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.errors import ValidationError
from shared.validation import check_name, check_text


@dataclass(frozen=True)
class NodeActionRequest:
    """An operator's retry or release of one node: who asked, and why.

    ``by`` is the authenticated caller when the host knows one; else the caller holds a
    function key, and the name it gives (``requestedBy``, optional) is recorded as its
    own say-so, never as an identity."""

    by: str
    reason: str = ""

    @classmethod
    def from_json(cls, body: Any, *, principal: str | None) -> NodeActionRequest:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ValidationError("body must be a JSON object (or empty)")
        unknown = sorted(set(body) - {"reason", "requestedBy"})
        if unknown:
            raise ValidationError(f"unknown fields {unknown}; allowed: ['reason', 'requestedBy']")
        reason, requested_by = body.get("reason", ""), body.get("requestedBy", "")
        for name, value in (("reason", reason), ("requestedBy", requested_by)):
            if not isinstance(value, str):
                raise ValidationError(f"field '{name}' must be a string")
        if principal:
            by = principal
        elif requested_by.strip():
            by = f"{requested_by.strip()[:200]} (function key)"
        else:
            by = "function key"
        return cls(by=by, reason=reason.strip()[:500])

    def says(self, what: str) -> str:
        return f"{what} by {self.by}" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class StartRequest:
    cluster: str
    reason: str
    pools: Sequence[str] | None = None
    nodes: Sequence[str] | None = None
    trigger: str = "manual"
    not_before: float = 0.0
    deadline: float = 0.0
    source: str = ""
    # Start now, whatever the pools' maintenance windows and blackout dates say.
    immediate: bool = False
    # The kubelet the nodes must report after their reimage (the image's tag), if known.
    kubelet_version: str = ""
    # Plan and answer what the run would do; nothing is claimed, stored or touched.
    dry_run: bool = False

    @classmethod
    def from_json(cls, body: Any) -> StartRequest:
        if not isinstance(body, dict):
            raise ValidationError("body must be a JSON object")
        unknown = sorted(
            set(body) - {"cluster", "pools", "nodes", "reason", "immediate", "notBefore", "dryRun"}
        )
        if unknown:
            raise ValidationError(f"unknown fields {unknown}")
        immediate = body.get("immediate", False)
        if not isinstance(immediate, bool):
            raise ValidationError("field 'immediate' must be true or false")
        not_before = (
            _utc_instant(body["notBefore"], "notBefore") if body.get("notBefore") is not None else 0.0
        )
        cluster, reason = body.get("cluster"), body.get("reason", "")
        if not isinstance(cluster, str) or not cluster:
            raise ValidationError("field 'cluster' (string) is required")
        if not isinstance(reason, str):
            raise ValidationError("field 'reason' must be a string")
        pools, nodes = body.get("pools"), body.get("nodes")
        for name, value in (("pools", pools), ("nodes", nodes)):
            if value is not None and (
                not isinstance(value, list) or not all(isinstance(v, str) for v in value)
            ):
                raise ValidationError(f"field '{name}' must be a list of strings")
        dry_run = body.get("dryRun", False)
        if not isinstance(dry_run, bool):
            raise ValidationError("field 'dryRun' must be true or false")
        # Names become selectors, keys and log lines downstream: their formats first.
        check_name("cluster", cluster)
        for kind, names in (("pool", pools), ("node", nodes)):
            for name in names or ():
                check_name(kind, name)
        check_text("reason", reason)
        return cls(
            cluster=cluster,
            reason=reason or "manual run",
            pools=pools or None,
            nodes=nodes or None,
            immediate=immediate,
            not_before=not_before,
            dry_run=dry_run,
        )


def _utc_instant(value: Any, name: str) -> float:
    """An ISO 8601 instant in UTC (``Z`` or ``+00:00``) as epoch seconds. A local time, or
    one with another offset, is refused: which moment it means is then a guess."""
    example = "like 2026-12-05T22:00:00Z"
    if not isinstance(value, str):
        raise ValidationError(f"field '{name}' must be an ISO 8601 UTC time, {example}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(f"field '{name}' is not an ISO 8601 time: {value!r}; {example}") from None
    if moment.tzinfo is None or moment.utcoffset() != timedelta(0):
        raise ValidationError(f"field '{name}' must be in UTC (end it with Z): {value!r}; {example}")
    return moment.timestamp()
