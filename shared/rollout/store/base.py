"""The engine shared by every run-state backend.

Layout (the same in every backend): one partition per run. The run record has row key
``run``; each node's work has ``node~<name>``; each scale set's write pacer has
``pacer~<sha256 of the scale-set id>``. Keeping a run in one partition is what lets
budget admission update the run's fence and several nodes in one atomic, ETag-conditioned
transaction (Azure Table entity-group transactions are per partition), and a batch leader
update its scale set's pacer and its peers in one.
A second partition per cluster holds the one-active-run guard (row ``active``: the run's
id and when it was claimed), claimed before the run is written. The two partitions cannot
share a transaction, so a create that finds its own row (the SDK's retry of a create
whose answer was lost) counts as done, and the sweeper releases a guard whose run is
missing or over.

Node rows carry their ``state``, ``pool`` and ``order`` as columns next to the JSON data,
written on every create and update, so that admission asks for the nodes in given states,
or for those columns alone, instead of reading every record of the run. Run rows carry
``state``, ``cluster`` and ``ended_at`` the same way, so that a listing is filtered where
the rows are stored and pages with the backend's own continuation. Run ids count down with
time (``Run.new_id``), so the backends' key order is newest first.

A partition ``runs~open`` names every run the sweeper still has to look at: its row is
written before the run's first record and deleted only once the sweeper has seen the run
ended with no node in flight, so a run never drops out of its sight while it has work; a
row whose run was never written is dropped by the sweeper after a grace period.
"""

from __future__ import annotations

import abc
import base64
import binascii
import contextlib
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.clock import parse_iso
from shared.errors import ConcurrencyError, NotFoundError, ValidationError
from shared.rollout import metrics
from shared.rollout.model import (
    NodeState,
    NodeWork,
    PacerRecord,
    Run,
    RunState,
    newest_first_prefix,
    node_from_dict,
    record_to_json,
    run_from_dict,
)

RUN_ROW = "run"
NODE_PREFIX = "node~"
PACER_PREFIX = "pacer~"
GUARD_ROW = "active"
NODE_COLUMNS = ("state", "pool", "order", "reimage_batch", "pdb_pods")
RUN_COLUMNS = ("state", "cluster", "ended_at")
OPEN_PARTITION = "runs~open"
# A listed record's listing row: ``at~<time counting down>~<record row>``, next to the
# record in its partition, so both change in one transaction and the rows list newest first.
LISTING_PREFIX = "at~"
LISTING_COLUMNS = ("repository",)
# Entity-group transactions hold at most 100 operations.
TRANSACTION_LIMIT = 100

Record = Run | NodeWork | PacerRecord
# A backend row as queries return it: (row key, data, etag).
Row = tuple[str, dict[str, Any], str]


def guard_partition(cluster: str) -> str:
    return f"cluster~{cluster}"


def pacer_row(scale_set: str) -> str:
    # Row keys may not contain '/', and resource ids are case-insensitive.
    return PACER_PREFIX + hashlib.sha256(scale_set.lower().encode("utf-8")).hexdigest()


def row_key(record: Record) -> str:
    if isinstance(record, Run):
        return RUN_ROW
    if isinstance(record, PacerRecord):
        return pacer_row(record.scale_set)
    return NODE_PREFIX + record.name


def partition_key(record: Record) -> str:
    return record.id if isinstance(record, Run) else record.run_id


def node_columns(row: str, data: dict[str, Any]) -> dict[str, Any]:
    """The queryable columns of a row: node rows only."""
    if not row.startswith(NODE_PREFIX):
        return {}
    return {
        "state": str(data["state"]),
        "pool": str(data["pool"]),
        "order": int(data["order"]),
        "reimage_batch": str(data.get("reimage_batch") or ""),
        # A column holds a string, not a map.
        "pdb_pods": json.dumps(data.get("pdb_pods") or {}, sort_keys=True, separators=(",", ":")),
    }


def run_columns(row: str, data: dict[str, Any]) -> dict[str, Any]:
    """The queryable columns of a row: run rows only."""
    if row != RUN_ROW:
        return {}
    return {
        "state": str(data["state"]),
        "cluster": str(data["cluster"]),
        "ended_at": str(data.get("ended_at") or ""),
    }


def listing_columns(row: str, data: dict[str, Any]) -> dict[str, Any]:
    """The queryable columns of a row: listing rows only."""
    if not row.startswith(LISTING_PREFIX):
        return {}
    return {c: str(data.get(c) or "") for c in LISTING_COLUMNS}


# A page's position: the backend's own continuation (for Table storage the next
# PartitionKey and RowKey the service named), passed to the caller as an opaque string.
Continuation = dict[str, str]


@dataclass(frozen=True)
class RunFilter:
    """Which run rows a query returns; every field given must match (None: any)."""

    cluster: str | None = None
    states: frozenset[str] | None = None
    ended_before: str | None = None  # ISO-8601 UTC: ended (not "") strictly before
    from_partition: str | None = None  # run ids (partition keys) at or after this one


@dataclass
class RunPage:
    runs: list[Run] = field(default_factory=list)
    next: str = ""  # "" when nothing more can follow; a page may be short (or empty) and still have one


def encode_continuation(position: Continuation | None) -> str:
    if not position:
        return ""
    raw = json.dumps(position, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


_CONTINUATION_KEY = re.compile(r"[\x20-\x7e]{0,1024}")


def decode_continuation(token: str) -> Continuation | None:
    """The position an answer's ``next`` names; ValidationError for anything else."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        position = json.loads(raw)
    except (binascii.Error, ValueError):
        raise ValidationError("next is not a continuation token this API gave out") from None
    # What the service hands out: its next keys, printable ASCII. Anything else would
    # reach it as a header it refuses.
    if (
        not isinstance(position, dict)
        or set(position) != {"PartitionKey", "RowKey"}
        or not all(isinstance(v, str) and _CONTINUATION_KEY.fullmatch(v) for v in position.values())
    ):
        raise ValidationError("next is not a continuation token this API gave out")
    return position


@dataclass(frozen=True)
class NodeSummary:
    """A node record's columns without its data: enough to plan admissions, not to write.

    ``etag`` is the record's as listed; the record is read whole before it is written.
    """

    name: str
    pool: str
    order: int
    state: NodeState
    etag: str
    # The batch whose write started its reimage ("" when none has). A row written before
    # this column existed lists "" too, so only a whole read tells for sure.
    reimage_batch: str = ""
    # PodDisruptionBudget -> its pods on the node when the run was planned.
    pdb_pods: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterLock:
    """The one-active-run guard of a cluster: which run holds it, since when."""

    cluster: str
    run_id: str
    claimed_at: float  # epoch seconds; 0 for a claim written before claims carried it
    etag: str


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
    def _query_nodes(
        self, partition: str, states: Collection[str] | None, *, columns_only: bool, limit: int | None
    ) -> list[Row]:
        """The node rows of a partition whose ``state`` column is one of ``states`` (all when
        None), filtered where the rows are stored. With ``columns_only`` the data holds only
        NODE_COLUMNS. At most ``limit`` rows when given, in no particular order."""

    @abc.abstractmethod
    def _query_runs(
        self, where: RunFilter, *, limit: int, start: Continuation | None
    ) -> tuple[list[tuple[dict[str, Any], str]], Continuation | None]:
        """At most ``limit`` run rows matching ``where``, in key order (partition, that is
        run id), from ``start``; and where the next page starts (None at the end)."""

    @abc.abstractmethod
    def _query_listing(
        self, partition: str, *, where: dict[str, str], from_row: str, limit: int, start: Continuation | None
    ) -> tuple[list[Row], Continuation | None]:
        """At most ``limit`` listing rows of a partition from row ``from_row`` on whose
        LISTING_COLUMNS match ``where``, in row-key order, from ``start``; and where the
        next page starts (None at the end)."""

    @abc.abstractmethod
    def _row_keys(self, partition: str) -> list[str]:
        """Every row key of a partition, without the data."""

    def _get_many(self, partition: str, rows: Sequence[str]) -> list[Row]:
        """The rows that exist among ``rows``. Backends may fetch several per request."""
        out = []
        for row in rows:
            found = self._get(partition, row)
            if found is not None:
                out.append((row, *found))
        return out

    @abc.abstractmethod
    def _transact(
        self, partition: str, ops: Sequence[tuple[str, str, dict[str, Any], str | None]]
    ) -> list[str]:
        """Apply (kind, row, data, etag) ops atomically; kind is "create", "update", "upsert" or "delete".

        "update" and "delete" with an etag are conditional on it. Returns the new etags in
        order ("" for deletes). Raises ConcurrencyError if any condition fails or a
        created row exists, and applies nothing then. Node rows get ``node_columns`` of
        their data written with them.
        """

    # ---- records -----------------------------------------------------------------------
    def create_run(self, run: Run, nodes: Iterable[NodeWork]) -> None:
        """Write the node records first and the run record last, so that a run becomes
        visible only when all of its nodes exist (a run larger than one transaction
        cannot be written atomically). Its row among the open runs comes before both."""
        self.reopen_run(run)
        batch: list[NodeWork] = []
        for node in nodes:
            batch.append(node)
            if len(batch) == 99:
                self._create_all(run.id, batch)
                batch = []
        if batch:
            self._create_all(run.id, batch)
        (run.etag,) = self._create_own(run.id, [(RUN_ROW, _data(run))])
        metrics.run_started(run)
        metrics.record_committed([run], cluster_of=lambda _: run.cluster)
        # Again: a sweeper that found it open without a record (a create slower than its
        # grace) has settled it meanwhile.
        self.reopen_run(run)

    def reopen_run(self, run: Run) -> None:
        """Put a run (back) in the sweeper's sight."""
        opened = {"run_id": run.id, "opened_at": parse_iso(run.created_at) if run.created_at else 0.0}
        self._transact(OPEN_PARTITION, [("upsert", run.id, opened, None)])

    def _create_all(self, partition: str, nodes: list[NodeWork]) -> None:
        etags = self._create_own(partition, [(row_key(n), _data(n)) for n in nodes])
        for node, etag in zip(nodes, etags, strict=True):
            node.etag = etag

    def _create_own(self, partition: str, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Create rows in a partition nobody else writes to yet (a new run's, named by a
        random id). A conflict there is this writer's own earlier attempt: the Table SDK
        retries a create whose answer was lost (a 5xx after the service applied it) and
        gets 409 for it. Rows found as written are taken as created; anything else is a
        real conflict."""
        try:
            return self._transact(partition, [("create", row, data, None) for row, data in rows])
        except ConcurrencyError:
            found = {row: (data, etag) for row, data, etag in self._get_many(partition, [r for r, _ in rows])}
            if any(found.get(row, (None, ""))[0] != data for row, data in rows):
                raise
            return [found[row][1] for row, _ in rows]

    def get_run(self, run_id: str) -> Run:
        if not_a_key(run_id):
            # What no run can be called (Table storage refuses such keys): not found, not a 5xx.
            raise NotFoundError(f"run {run_id!r} not found: {not_a_key(run_id)}")
        found = self._get(run_id, RUN_ROW)
        if found is None:
            raise NotFoundError(f"run {run_id} not found")
        run = run_from_dict(*found)
        metrics.note_run(run)
        return run

    def list_runs(self, *, cluster: str | None = None) -> list[Run]:
        runs = [run_from_dict(d, e) for d, e in self._query_rows(RUN_ROW)]
        if cluster is not None:
            runs = [r for r in runs if r.cluster == cluster]
        return sorted(runs, key=lambda r: r.created_at, reverse=True)

    def list_runs_page(
        self,
        *,
        cluster: str | None = None,
        states: Collection[RunState] | None = None,
        limit: int,
        next: str = "",
    ) -> RunPage:
        """Up to ``limit`` runs, newest first (runs recorded before ids counted down with
        time come after them, in id order), from where ``next`` says; ValidationError
        for a ``next`` this store did not give out."""
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        start = decode_continuation(next)
        if states is not None and not states:
            return RunPage()
        wanted = None if states is None else frozenset(str(s) for s in states)
        where = RunFilter(cluster=cluster, states=wanted)
        rows, position = self._query_runs(where, limit=limit, start=start)
        return RunPage([run_from_dict(d, e) for d, e in rows], encode_continuation(position))

    def ended_runs(self, *, before: str, limit: int) -> list[Run]:
        """Up to ``limit`` runs created and ended before ``before`` (ISO-8601 UTC), oldest
        last: what retention may delete. Only run ids from that time on are scanned."""
        where = RunFilter(ended_before=before, from_partition=newest_first_prefix(parse_iso(before)))
        rows, _ = self._query_runs(where, limit=limit, start=None)
        return [run_from_dict(d, e) for d, e in rows]

    def open_runs(self) -> dict[str, float]:
        """The runs the sweeper still has to look at, with when each was opened (epoch seconds)."""
        return {
            str(data["run_id"]): float(data.get("opened_at") or 0.0)
            for data, _ in self._query_partition(OPEN_PARTITION, "")
        }

    def settle_run(self, run_id: str) -> None:
        """Take a run out of the sweeper's sight: it has ended with nothing in flight, or it
        was never written."""
        # Gone already is done (the Table SDK may take a 404 on delete for done, too).
        with contextlib.suppress(ConcurrencyError):
            self._transact(OPEN_PARTITION, [("delete", run_id, {}, None)])

    def delete_run(self, run_id: str) -> int:
        """Delete every record of a run: nodes and pacers first, the run record last, so a
        deletion cut short is found and finished by the next. How many rows it deleted."""
        rows = [r for r in self._row_keys(run_id) if r != RUN_ROW]
        for i in range(0, len(rows), TRANSACTION_LIMIT):
            self._delete_rows(run_id, rows[i : i + TRANSACTION_LIMIT])
        self._delete_rows(run_id, [RUN_ROW])
        self.settle_run(run_id)
        return len(rows) + 1

    def _delete_rows(self, partition: str, rows: list[str]) -> None:
        try:
            self._transact(partition, [("delete", row, {}, None) for row in rows])
        except ConcurrencyError:
            # One of them went meanwhile (a deletion racing this one): one at a time then.
            for row in rows:
                try:
                    self._transact(partition, [("delete", row, {}, None)])
                except ConcurrencyError:
                    continue

    def get_node(self, run_id: str, name: str) -> NodeWork:
        problem = not_a_key(run_id) or not_a_key(name)
        if problem:
            raise NotFoundError(f"node {name!r} is not part of run {run_id!r}: {problem}")
        found = self._get(run_id, NODE_PREFIX + name)
        if found is None:
            raise NotFoundError(f"node {name} is not part of run {run_id}")
        return node_from_dict(*found)

    def get_nodes(self, run_id: str, names: Iterable[str]) -> list[NodeWork]:
        """The named nodes' records (those that exist), in plan order."""
        rows = self._get_many(run_id, [NODE_PREFIX + n for n in dict.fromkeys(names)])
        return sorted((node_from_dict(d, e) for _, d, e in rows), key=lambda n: n.order)

    def list_nodes(self, run_id: str, *, states: Collection[NodeState] | None = None) -> list[NodeWork]:
        """The run's node records in plan order; only those in ``states`` when given."""
        if states is not None and not states:
            return []
        rows = self._query_nodes(run_id, _names(states), columns_only=False, limit=None)
        return sorted((node_from_dict(d, e) for _, d, e in rows), key=lambda n: n.order)

    def node_summaries(
        self, run_id: str, *, states: Collection[NodeState] | None = None, limit: int | None = None
    ) -> list[NodeSummary]:
        """Name, pool, order, state, reimage batch and ETag of the run's nodes (in ``states``
        when given), in plan order, without reading their records. With ``limit``, at most that many,
        and not necessarily the first in plan order."""
        if states is not None and not states:
            return []
        rows = self._query_nodes(run_id, _names(states), columns_only=True, limit=limit)
        summaries = [
            NodeSummary(
                name=row[len(NODE_PREFIX) :],
                pool=str(data["pool"]),
                order=int(data["order"]),
                state=NodeState(data["state"]),
                etag=etag,
                reimage_batch=str(data.get("reimage_batch") or ""),
                pdb_pods=_pdb_pods(data.get("pdb_pods")),
            )
            for row, data, etag in rows
        ]
        return sorted(summaries, key=lambda s: s.order)

    def pending_nodes(self, run_id: str) -> list[NodeSummary]:
        return self.node_summaries(run_id, states=(NodeState.PENDING,))

    def has_nodes(self, run_id: str, *, states: Collection[NodeState]) -> bool:
        """Whether any node of the run is in one of ``states`` (one row read at most)."""
        return bool(states) and bool(self._query_nodes(run_id, _names(states), columns_only=True, limit=1))

    def get_pacer(self, run_id: str, scale_set: str) -> PacerRecord:
        """The run's pacer for a scale set; a new one (etag None, so ``commit`` creates it)
        if the run never wrote to it."""
        key = scale_set.lower()
        found = self._get(run_id, pacer_row(key))
        if found is None:
            return PacerRecord(run_id=run_id, scale_set=key)
        data, etag = found
        tokens = data.get("tokens")
        return PacerRecord(
            run_id=run_id,
            scale_set=key,
            tokens=None if tokens is None else float(tokens),
            updated=float(data.get("updated", 0.0)),
            reimage_took=[float(x) for x in data.get("reimage_took", [])],
            boot_took=[float(x) for x in data.get("boot_took", [])],
            sampled_batches=[str(x) for x in data.get("sampled_batches", [])],
            gathering_by=str(data.get("gathering_by", "")),
            gathering_until=float(data.get("gathering_until", 0.0)),
            etag=etag,
        )

    def commit(self, *records: Record) -> None:
        """Write records of one run atomically, each conditional on the ETag it was read with.

        A pacer without an ETag is created, and the commit fails (ConcurrencyError) if
        another worker created it first."""
        if not records:
            return
        partitions = {partition_key(r) for r in records}
        if len(partitions) != 1:
            raise ValueError(f"one commit covers one run, got {sorted(partitions)}")
        ops: list[tuple[str, str, dict[str, Any], str | None]] = []
        for record in records:
            if record.etag is None and not isinstance(record, PacerRecord):
                raise ValueError(f"{row_key(record)} was never read; commit needs its ETag")
            kind = "update" if record.etag is not None else "create"
            ops.append((kind, row_key(record), _data(record), record.etag))
        etags = self._transact(partitions.pop(), ops)
        for record, etag in zip(records, etags, strict=True):
            record.etag = etag
        metrics.record_committed(records, cluster_of=lambda run_id: self.get_run(run_id).cluster)

    # ---- small keyed records: de-duplication and audit (events, deliveries, syncs) -----------
    def create_record(self, kind: str, key: str, data: dict[str, Any]) -> bool:
        """Write a record once. False if one with that key exists already (a duplicate)."""
        try:
            self._transact(f"{kind}~", [("create", record_row(key), {"key": key, **data}, None)])
            return True
        except ConcurrencyError:
            return False

    def get_record_entry(self, kind: str, key: str) -> tuple[dict[str, Any], str] | None:
        """A record with its ETag, for a write conditional on it."""
        return self._get(f"{kind}~", record_row(key))

    def replace_record(self, kind: str, key: str, data: dict[str, Any], *, etag: str) -> str | None:
        """Replace a record if it is still as read (``etag``); its new ETag, or None when it
        changed or went meanwhile."""
        try:
            (new_etag,) = self._transact(
                f"{kind}~", [("update", record_row(key), {"key": key, **data}, etag)]
            )
        except ConcurrencyError:
            return None
        return new_etag

    def delete_record(self, kind: str, key: str, *, etag: str) -> bool:
        """Delete a record if it is still as read (``etag``); False when it changed since.
        (A record already gone may answer either way: the Table SDK takes a 404 on delete
        for done.)"""
        try:
            self._transact(f"{kind}~", [("delete", record_row(key), {}, etag)])
        except ConcurrencyError:
            return False
        return True

    def put_record(self, kind: str, key: str, data: dict[str, Any]) -> None:
        self._transact(f"{kind}~", [("upsert", record_row(key), {"key": key, **data}, None)])

    def put_listed_record(
        self, kind: str, key: str, data: dict[str, Any], *, at: float, summary: dict[str, Any]
    ) -> None:
        """``put_record``, and in the same transaction the record's listing row: ``summary``
        (with the key), listed newest first by ``at``. The record remembers its listing row
        (``_listing``), so one written again at another time moves it."""
        partition, row = f"{kind}~", record_row(key)
        listing = f"{LISTING_PREFIX}{newest_first_prefix(at)}~{row}"
        found = self._get(partition, row)
        earlier = str(found[0].get("_listing") or "") if found else ""
        ops: list[tuple[str, str, dict[str, Any], str | None]] = [
            ("upsert", row, {"key": key, **data, "_listing": listing}, None),
            ("upsert", listing, {"key": key, **summary, "_summary": True}, None),
        ]
        if earlier and earlier != listing:
            ops.append(("delete", earlier, {}, None))
        self._transact(partition, ops)

    def list_listed_records(
        self, kind: str, *, where: dict[str, str] | None = None, limit: int, next: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """A page of listed records' summaries, newest first, and the ``next`` token ("" at
        the end); ValidationError for a token this store did not give out."""
        start = decode_continuation(next)
        rows, position = self._query_listing(
            f"{kind}~", where=dict(where or {}), from_row=LISTING_PREFIX, limit=limit, start=start
        )
        return [data for _, data, _ in rows], encode_continuation(position)

    def listed_before(self, kind: str, *, before: float, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` summaries of records listed before ``before`` (epoch seconds),
        each with its listing row's key as ``_row`` (for ``delete_listed``)."""
        rows, _ = self._query_listing(
            f"{kind}~",
            where={},
            from_row=LISTING_PREFIX + newest_first_prefix(before),
            limit=limit,
            start=None,
        )
        return [{**summary, "_row": row} for row, summary, _ in rows]

    def delete_listed(self, kind: str, summary: dict[str, Any]) -> None:
        """Delete a listed record and its listing row (a summary ``listed_before`` gave);
        the listing row last, so a deletion cut short is found again by it."""
        partition = f"{kind}~"
        self._delete_rows(partition, [record_row(str(summary["key"]))])
        self._delete_rows(partition, [str(summary["_row"])])

    def discard_record(self, kind: str, key: str) -> None:
        """Delete a record whatever it holds; gone already is done."""
        self._delete_rows(f"{kind}~", [record_row(key)])

    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        found = self._get(f"{kind}~", record_row(key))
        return None if found is None else found[0]

    def list_records(self, kind: str) -> list[dict[str, Any]]:
        """Every record of a kind (not the listing rows of listed ones)."""
        return [d for d, _ in self._query_partition(f"{kind}~", "") if not d.get("_summary")]

    # ---- one active run per cluster ----------------------------------------------------------
    def claim_cluster(self, cluster: str, run_id: str, *, at: float = 0.0) -> str | None:
        """Make ``run_id`` the cluster's active run (``at``: when, epoch seconds). Returns
        the run already active, if any: never ``run_id`` itself, since a claim found naming
        it is this caller's own earlier attempt (the SDK's retry of a create whose answer
        was lost, or the caller's after an error that left the outcome unknown)."""
        try:
            self._transact(
                guard_partition(cluster), [("create", GUARD_ROW, {"run_id": run_id, "claimed_at": at}, None)]
            )
            return None
        except ConcurrencyError:
            found = self._get(guard_partition(cluster), GUARD_ROW)
            if found is None:  # released in between; one more try is enough to be fair
                return self.claim_cluster(cluster, run_id, at=at)
            holder = str(found[0]["run_id"])
            return None if holder == run_id else holder

    def active_run(self, cluster: str) -> str | None:
        found = self._get(guard_partition(cluster), GUARD_ROW)
        return None if found is None else str(found[0]["run_id"])

    def cluster_lock(self, cluster: str) -> ClusterLock | None:
        """The cluster's claim as stored, or None when the cluster is free."""
        found = self._get(guard_partition(cluster), GUARD_ROW)
        if found is None:
            return None
        data, etag = found
        # A claim written before claims carried their time counts as an old one.
        return ClusterLock(cluster, str(data["run_id"]), float(data.get("claimed_at") or 0.0), etag)

    def release_cluster(self, cluster: str, run_id: str) -> bool:
        """Free the cluster if ``run_id`` holds it; whether this call freed it."""
        found = self._get(guard_partition(cluster), GUARD_ROW)
        if found is None or found[0]["run_id"] != run_id:
            return False
        # A conflict means someone else released or re-claimed it: not ours to delete any more.
        try:
            self._transact(guard_partition(cluster), [("delete", GUARD_ROW, {}, found[1])])
        except ConcurrencyError:
            return False
        return True


# Table storage's key rules: at most 1 KiB, none of / \\ # ? and no control characters.
_KEY_FORBIDDEN = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
MAX_KEY_BYTES = 1024


def not_a_key(value: str) -> str:
    """Why ``value`` cannot be a Table key ("" if it can): the store's own ids and names
    always can, so a value that cannot names nothing stored."""
    if not value:
        return "empty"
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes"
    if _KEY_FORBIDDEN.search(value):
        return "contains / \\ # ? or a control character"
    return ""


def record_row(key: str) -> str:
    """Table row keys may not contain / \\ # ? or control characters; event ids do."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _names(states: Collection[NodeState] | None) -> frozenset[str] | None:
    return None if states is None else frozenset(str(s) for s in states)


def _data(record: Record) -> dict[str, Any]:
    if isinstance(record, PacerRecord):
        data = asdict(record)
        data.pop("etag", None)
        return data
    return json.loads(record_to_json(record))


def _pdb_pods(column: Any) -> dict[str, int]:
    """The ``pdb_pods`` column as a backend lists it: JSON text from Table storage, the map
    itself from memory, nothing from a row written before the column existed."""
    if not column:
        return {}
    value = json.loads(column) if isinstance(column, str) else column
    return {str(k): int(v) for k, v in value.items()}
