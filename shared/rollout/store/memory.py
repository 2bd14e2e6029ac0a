"""In-memory backend for unit and functional tests: the same semantics, one process."""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Collection, Sequence
from typing import Any

from shared.errors import ConcurrencyError
from shared.rollout.store import base
from shared.rollout.store.base import Continuation, Row, RunFilter, RunStore


class MemoryRunStore(RunStore):
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self._lock = threading.Lock()
        self._etags = itertools.count(1)
        self.writes = 0
        # Run records handed out by queries and reads, for tests that count what a pass reads.
        self.run_reads = 0

    def _get(self, partition: str, row: str) -> tuple[dict[str, Any], str] | None:
        with self._lock:
            found = self._rows.get((partition, row))
            self.run_reads += found is not None and row == base.RUN_ROW
            return None if found is None else (copy.deepcopy(found[0]), found[1])

    def _query_partition(self, partition: str, row_prefix: str) -> list[tuple[dict[str, Any], str]]:
        with self._lock:
            return [
                (copy.deepcopy(d), e)
                for (p, r), (d, e) in self._rows.items()
                if p == partition and r.startswith(row_prefix)
            ]

    def _query_rows(self, row: str) -> list[tuple[dict[str, Any], str]]:
        with self._lock:
            out = [(copy.deepcopy(d), e) for (_, r), (d, e) in self._rows.items() if r == row]
            self.run_reads += len(out) if row == base.RUN_ROW else 0
            return out

    def _query_runs(
        self, where: RunFilter, *, limit: int, start: Continuation | None
    ) -> tuple[list[tuple[dict[str, Any], str]], Continuation | None]:
        # As Table storage pages: in key order, and the next page starts at the next key.
        first = max((start or {}).get("PartitionKey", ""), where.from_partition or "")
        with self._lock:
            keys = sorted(p for (p, r) in self._rows if r == base.RUN_ROW and p >= first)
            out: list[tuple[dict[str, Any], str]] = []
            for partition in keys:
                data, etag = self._rows[(partition, base.RUN_ROW)]
                if not _matches(where, data):
                    continue
                if len(out) == limit:
                    return out, {"PartitionKey": partition, "RowKey": base.RUN_ROW}
                out.append((copy.deepcopy(data), etag))
                self.run_reads += 1
            return out, None

    def _query_listing(
        self, partition: str, *, where: dict[str, str], from_row: str, limit: int, start: Continuation | None
    ) -> tuple[list[Row], Continuation | None]:
        first = max((start or {}).get("RowKey", ""), from_row)
        with self._lock:
            rows = sorted(
                r
                for (p, r) in self._rows
                if p == partition and r.startswith(base.LISTING_PREFIX) and r >= first
            )
            out: list[Row] = []
            for row in rows:
                data, etag = self._rows[(partition, row)]
                if any(str(data.get(c) or "") != v for c, v in where.items()):
                    continue
                if len(out) == limit:
                    return out, {"PartitionKey": partition, "RowKey": row}
                out.append((row, copy.deepcopy(data), etag))
            return out, None

    def _row_keys(self, partition: str) -> list[str]:
        with self._lock:
            return sorted(r for (p, r) in self._rows if p == partition)

    def _query_nodes(
        self, partition: str, states: Collection[str] | None, *, columns_only: bool, limit: int | None
    ) -> list[Row]:
        out: list[Row] = []
        with self._lock:
            for (p, r), (d, e) in self._rows.items():
                if p != partition or not r.startswith(base.NODE_PREFIX):
                    continue
                if states is not None and str(d["state"]) not in states:
                    continue
                data = {k: d.get(k) for k in base.NODE_COLUMNS} if columns_only else copy.deepcopy(d)
                out.append((r, data, e))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def _transact(
        self, partition: str, ops: Sequence[tuple[str, str, dict[str, Any], str | None]]
    ) -> list[str]:
        with self._lock:
            for kind, row, _, etag in ops:
                current = self._rows.get((partition, row))
                if kind == "create" and current is not None:
                    raise ConcurrencyError(f"{partition}/{row} already exists")
                if kind in ("update", "delete"):
                    if current is None:
                        raise ConcurrencyError(f"{partition}/{row} does not exist")
                    if etag is not None and current[1] != etag:
                        raise ConcurrencyError(f"{partition}/{row} was modified")
            out = []
            for kind, row, data, _ in ops:
                self.writes += 1
                if kind == "delete":
                    del self._rows[(partition, row)]
                    out.append("")
                    continue
                etag = f'W/"{next(self._etags)}"'
                self._rows[(partition, row)] = (copy.deepcopy(data), etag)
                out.append(etag)
            return out


def _matches(where: RunFilter, data: dict[str, Any]) -> bool:
    ended = str(data.get("ended_at") or "")
    return (
        (where.cluster is None or data["cluster"] == where.cluster)
        and (where.states is None or str(data["state"]) in where.states)
        and (where.ended_before is None or "" < ended < where.ended_before)
    )
