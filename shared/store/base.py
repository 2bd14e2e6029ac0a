"""The engine shared by every run-state backend.

Layout (the same in every backend): one partition per run. The run record has row key
``run``; each node's work has ``node~<name>``. Keeping a run in one partition is what
lets budget admission update the run's fence and several nodes in one atomic,
ETag-conditioned transaction (Azure Table entity-group transactions are per partition).
A second partition per cluster holds the one-active-run guard.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from shared.errors import ConcurrencyError, NotFoundError
from shared.model import NodeWork, Run, node_from_dict, record_to_json, run_from_dict

RUN_ROW = "run"
NODE_PREFIX = "node~"
GUARD_ROW = "active"


def guard_partition(cluster: str) -> str:
    return f"cluster~{cluster}"


def row_key(record: Run | NodeWork) -> str:
    return RUN_ROW if isinstance(record, Run) else NODE_PREFIX + record.name


def partition_key(record: Run | NodeWork) -> str:
    return record.id if isinstance(record, Run) else record.run_id


class Entity(dict[str, Any]):
    """A backend-neutral row: PartitionKey, RowKey, data (JSON) and its ETag."""


class RunStore(abc.ABC):
    # ---- backend primitives ------------------------------------------------------------
    @abc.abstractmethod
    def _get(self, partition: str, row: str) -> tuple[dict[str, Any], str] | None: ...

    @abc.abstractmethod
    def _query_partition(self, partition: str, row_prefix: str) -> list[tuple[dict[str, Any], str]]: ...

    @abc.abstractmethod
    def _query_rows(self, row: str) -> list[tuple[dict[str, Any], str]]: ...

    @abc.abstractmethod
    def _transact(
        self, partition: str, ops: Sequence[tuple[str, str, dict[str, Any], str | None]]
    ) -> list[str]:
        """Apply (kind, row, data, etag) ops atomically; kind is "create", "update", "upsert" or "delete".

        "update" and "delete" with an etag are conditional on it. Returns the new etags in
        order ("" for deletes). Raises ConcurrencyError if any condition fails or a
        created row exists, and applies nothing then.
        """

    # ---- records -----------------------------------------------------------------------
    def create_run(self, run: Run, nodes: Iterable[NodeWork]) -> None:
        """Write the node records first and the run record last, so that a run becomes
        visible only when all of its nodes exist (a run larger than one transaction
        cannot be written atomically)."""
        batch: list[NodeWork] = []
        for node in nodes:
            batch.append(node)
            if len(batch) == 99:
                self._create_all(run.id, batch)
                batch = []
        if batch:
            self._create_all(run.id, batch)
        (run.etag,) = self._transact(run.id, [("create", RUN_ROW, _data(run), None)])

    def _create_all(self, partition: str, nodes: list[NodeWork]) -> None:
        etags = self._transact(partition, [("create", row_key(n), _data(n), None) for n in nodes])
        for node, etag in zip(nodes, etags, strict=True):
            node.etag = etag

    def get_run(self, run_id: str) -> Run:
        found = self._get(run_id, RUN_ROW)
        if found is None:
            raise NotFoundError(f"run {run_id} not found")
        return run_from_dict(*found)

    def list_runs(self, *, cluster: str | None = None) -> list[Run]:
        runs = [run_from_dict(d, e) for d, e in self._query_rows(RUN_ROW)]
        if cluster is not None:
            runs = [r for r in runs if r.cluster == cluster]
        return sorted(runs, key=lambda r: r.created_at, reverse=True)

    def get_node(self, run_id: str, name: str) -> NodeWork:
        found = self._get(run_id, NODE_PREFIX + name)
        if found is None:
            raise NotFoundError(f"node {name} is not part of run {run_id}")
        return node_from_dict(*found)

    def list_nodes(self, run_id: str) -> list[NodeWork]:
        nodes = [node_from_dict(d, e) for d, e in self._query_partition(run_id, NODE_PREFIX)]
        return sorted(nodes, key=lambda n: n.order)

    def commit(self, *records: Run | NodeWork) -> None:
        """Write records of one run atomically, each conditional on the ETag it was read with."""
        if not records:
            return
        partitions = {partition_key(r) for r in records}
        if len(partitions) != 1:
            raise ValueError(f"one commit covers one run, got {sorted(partitions)}")
        for record in records:
            if record.etag is None:
                raise ValueError(f"{row_key(record)} was never read; commit needs its ETag")
        ops = [("update", row_key(r), _data(r), r.etag) for r in records]
        etags = self._transact(partitions.pop(), ops)
        for record, etag in zip(records, etags, strict=True):
            record.etag = etag

    # ---- small keyed records: de-duplication and audit (events, deliveries, syncs) -----------
    def create_record(self, kind: str, key: str, data: dict[str, Any]) -> bool:
        """Write a record once. False if one with that key exists already (a duplicate)."""
        try:
            self._transact(f"{kind}~", [("create", record_row(key), {"key": key, **data}, None)])
            return True
        except ConcurrencyError:
            return False

    def put_record(self, kind: str, key: str, data: dict[str, Any]) -> None:
        self._transact(f"{kind}~", [("upsert", record_row(key), {"key": key, **data}, None)])

    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        found = self._get(f"{kind}~", record_row(key))
        return None if found is None else found[0]

    def list_records(self, kind: str) -> list[dict[str, Any]]:
        return [d for d, _ in self._query_partition(f"{kind}~", "")]

    # ---- one active run per cluster ----------------------------------------------------------
    def claim_cluster(self, cluster: str, run_id: str) -> str | None:
        """Make ``run_id`` the cluster's active run. Returns the run already active, if any."""
        try:
            self._transact(guard_partition(cluster), [("create", GUARD_ROW, {"run_id": run_id}, None)])
            return None
        except ConcurrencyError:
            found = self._get(guard_partition(cluster), GUARD_ROW)
            if found is None:  # released in between; one more try is enough to be fair
                return self.claim_cluster(cluster, run_id)
            return str(found[0]["run_id"])

    def active_run(self, cluster: str) -> str | None:
        found = self._get(guard_partition(cluster), GUARD_ROW)
        return None if found is None else str(found[0]["run_id"])

    def release_cluster(self, cluster: str, run_id: str) -> None:
        found = self._get(guard_partition(cluster), GUARD_ROW)
        if found is None or found[0]["run_id"] != run_id:
            return
        # A conflict means someone else released or re-claimed it: not ours to delete any more.
        with contextlib.suppress(ConcurrencyError):
            self._transact(guard_partition(cluster), [("delete", GUARD_ROW, {}, found[1])])


def record_row(key: str) -> str:
    """Table row keys may not contain / \\ # ? or control characters; event ids do."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _data(record: Run | NodeWork) -> dict[str, Any]:
    return json.loads(record_to_json(record))
