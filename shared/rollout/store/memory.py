"""In-memory backend for unit and functional tests: the same semantics, one process."""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Collection, Sequence
from typing import Any

from shared.errors import ConcurrencyError
from shared.rollout.store.base import NODE_COLUMNS, NODE_PREFIX, Row, RunStore


class MemoryRunStore(RunStore):
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self._lock = threading.Lock()
        self._etags = itertools.count(1)
        self.writes = 0

    def _get(self, partition: str, row: str) -> tuple[dict[str, Any], str] | None:
        with self._lock:
            found = self._rows.get((partition, row))
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
            return [(copy.deepcopy(d), e) for (_, r), (d, e) in self._rows.items() if r == row]

    def _query_nodes(
        self, partition: str, states: Collection[str] | None, *, columns_only: bool, limit: int | None
    ) -> list[Row]:
        out: list[Row] = []
        with self._lock:
            for (p, r), (d, e) in self._rows.items():
                if p != partition or not r.startswith(NODE_PREFIX):
                    continue
                if states is not None and str(d["state"]) not in states:
                    continue
                data = {k: d[k] for k in NODE_COLUMNS} if columns_only else copy.deepcopy(d)
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
