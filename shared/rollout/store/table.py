"""Azure Table storage backend (Azurite locally): ETag-conditioned entity-group transactions."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from shared.errors import ConcurrencyError, TemporaryError
from shared.rollout.store.base import (
    LISTING_COLUMNS,
    LISTING_PREFIX,
    NODE_COLUMNS,
    NODE_PREFIX,
    RUN_ROW,
    Continuation,
    Row,
    RunFilter,
    RunStore,
    listing_columns,
    node_columns,
    run_columns,
)

if TYPE_CHECKING:
    from azure.data.tables import TableClient

logger = logging.getLogger(__name__)

# A property holds at most 64 KiB; the record is stored as one JSON string property and
# split over a few numbered ones if it ever grows larger.
_CHUNK = 30_000
# The service accepts at most 15 discrete comparisons in one $filter; one is the partition.
_ROWS_PER_FILTER = 14
_NODE_RANGE = "PartitionKey eq @p and RowKey ge @lo and RowKey lt @hi"


class TableRunStore(RunStore):
    def __init__(self, table: TableClient) -> None:
        self._table = table
        # Partitions whose node rows all carry their columns (see _ensure_columns).
        self._indexed: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Any) -> TableRunStore:
        from azure.data.tables import TableServiceClient

        from shared.settings import azure_credential, storage_options

        options = storage_options(settings, queue=False)
        if settings.storage_connection_string:
            service = TableServiceClient.from_connection_string(settings.storage_connection_string, **options)
        else:
            service = TableServiceClient(settings.table_service_uri, credential=azure_credential(), **options)
        cls._call(service.create_table_if_not_exists, settings.runs_table)
        return cls(service.get_table_client(settings.runs_table))

    @staticmethod
    def _decode(entity: Any) -> tuple[dict[str, Any], str]:
        parts, i = [], 0
        while f"data{i}" in entity:
            parts.append(entity[f"data{i}"])
            i += 1
        return json.loads("".join(parts)), entity.metadata["etag"]

    def _get(self, partition: str, row: str) -> tuple[dict[str, Any], str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._decode(self._call(self._table.get_entity, partition, row))
        except ResourceNotFoundError:
            return None

    def _get_many(self, partition: str, rows: Sequence[str]) -> list[Row]:
        # A point read per row costs a round trip each; a filter names up to 14 rows.
        out: list[Row] = []
        for i in range(0, len(rows), _ROWS_PER_FILTER):
            chunk = rows[i : i + _ROWS_PER_FILTER]
            params: dict[str, Any] = {"p": partition}
            terms = []
            for j, row in enumerate(chunk):
                params[f"r{j}"] = row
                terms.append(f"RowKey eq @r{j}")
            query = f"PartitionKey eq @p and ( {' or '.join(terms)} )"
            entities = self._query(query, params)
            out.extend((e["RowKey"], *self._decode(e)) for e in entities)
        return out

    def _query_partition(self, partition: str, row_prefix: str) -> list[tuple[dict[str, Any], str]]:
        # Row keys sort lexically, so a prefix is the range [prefix, prefix + U+FFFF).
        query = "PartitionKey eq @p and RowKey ge @lo and RowKey lt @hi"
        params = {"p": partition, "lo": row_prefix, "hi": row_prefix + "\uffff"}
        return [self._decode(e) for e in self._query(query, params)]

    def _query_rows(self, row: str) -> list[tuple[dict[str, Any], str]]:
        return [self._decode(e) for e in self._query("RowKey eq @r", {"r": row})]

    def _query_runs(
        self, where: RunFilter, *, limit: int, start: Continuation | None
    ) -> tuple[list[tuple[dict[str, Any], str]], Continuation | None]:
        terms, params = ["RowKey eq @r"], {"r": RUN_ROW}
        if where.from_partition is not None:
            terms.append("PartitionKey ge @from")
            params["from"] = where.from_partition
        if where.cluster is not None:
            terms.append("cluster eq @c")
            params["c"] = where.cluster
        if where.states is not None:
            for i, state in enumerate(sorted(where.states)):
                params[f"s{i}"] = state
            terms.append("( " + " or ".join(f"state eq @s{i}" for i in range(len(where.states))) + " )")
        if where.ended_before is not None:
            terms.append("ended_at gt @none and ended_at lt @before")
            params.update(none="", before=where.ended_before)
        rows, position = self._page(" and ".join(terms), params, limit=limit, start=start)
        return [self._decode(e) for e in rows], position

    def _query_listing(
        self, partition: str, *, where: dict[str, str], from_row: str, limit: int, start: Continuation | None
    ) -> tuple[list[Row], Continuation | None]:
        query = "PartitionKey eq @p and RowKey ge @lo and RowKey lt @hi"
        params: dict[str, Any] = {"p": partition, "lo": from_row, "hi": LISTING_PREFIX + "\uffff"}
        for i, (column, value) in enumerate(sorted(where.items())):
            if column not in LISTING_COLUMNS:
                raise ValueError(f"{column} is not a listing column")
            query += f" and {column} eq @w{i}"
            params[f"w{i}"] = value
        rows, position = self._page(query, params, limit=limit, start=start)
        return [(e["RowKey"], *self._decode(e)) for e in rows], position

    def _page(
        self, query: str, params: dict[str, Any], *, limit: int, start: Continuation | None
    ) -> tuple[list[Any], Continuation | None]:
        """Up to ``limit`` entities from ``start``, paged by the service, and its continuation."""

        def run() -> tuple[list[Any], Continuation | None]:
            out: list[Any] = []
            position = start
            while True:
                # The service may answer a filtered scan with fewer rows than asked (even
                # none) and a continuation: ask again for the rest, never for more.
                pages = self._table.query_entities(
                    query, parameters=params, results_per_page=limit - len(out)
                ).by_page(continuation_token=position)  # type: ignore[arg-type]  # typed str; it is the dict it gave
                out.extend(next(pages))
                position = getattr(pages, "continuation_token", None) or None
                if position is None or len(out) >= limit:
                    return out, position

        result: tuple[list[Any], Continuation | None] = self._call(run)
        return result

    def _row_keys(self, partition: str) -> list[str]:
        query = "PartitionKey eq @p"
        return [str(e["RowKey"]) for e in self._query(query, {"p": partition}, select=["RowKey"])]

    def _query_nodes(
        self, partition: str, states: Collection[str] | None, *, columns_only: bool, limit: int | None
    ) -> list[Row]:
        query, params = _NODE_RANGE, _node_range(partition)
        if states is not None:
            self._ensure_columns(partition)
            terms = []
            for i, state in enumerate(sorted(states)):
                params[f"s{i}"] = state
                terms.append(f"state eq @s{i}")
            query += f" and ( {' or '.join(terms)} )"
        elif columns_only:
            self._ensure_columns(partition)
        select = ["RowKey", *NODE_COLUMNS] if columns_only else None
        entities = self._query(query, params, select=select, limit=limit)
        if columns_only:
            # A row written before a column existed has no such property.
            return [(e["RowKey"], {c: e.get(c) for c in NODE_COLUMNS}, e.metadata["etag"]) for e in entities]
        return [(e["RowKey"], *self._decode(e)) for e in entities]

    def _ensure_columns(self, partition: str) -> None:
        """Give node rows written before they had columns their columns, once per partition
        and process: a row without a ``state`` column would be invisible to every filter
        (a run in flight while the app is upgraded)."""
        if partition in self._indexed:
            return
        rows = self._query(_NODE_RANGE, _node_range(partition), select=["RowKey", "state"])
        done = True
        for entity in rows:
            if entity.get("state") is not None:
                continue
            row = entity["RowKey"]
            for _ in range(3):
                found = self._get(partition, row)
                if found is None:
                    break
                try:
                    self._transact(partition, [("update", row, found[0], found[1])])
                    logger.info("store: gave %s/%s its query columns", partition, row)
                    break
                except ConcurrencyError:
                    continue  # written meanwhile: look again
            else:
                done = False  # an older version of the app may still be writing: look again next time
        if done:
            self._indexed.add(partition)

    def _query(
        self,
        query: str,
        params: dict[str, Any],
        *,
        select: list[str] | None = None,
        limit: int | None = None,
    ) -> list[Any]:
        kwargs: dict[str, Any] = {"parameters": params}
        if select:
            kwargs["select"] = select
        if limit is not None:
            kwargs["results_per_page"] = limit

        def run() -> list[Any]:
            # islice stops paging once ``limit`` rows came; a page may hold none (the
            # service pages by time and rows scanned), so it is not one request.
            return list(itertools.islice(self._table.query_entities(query, **kwargs), limit))

        return list(self._call(run))

    def _transact(
        self, partition: str, ops: Sequence[tuple[str, str, dict[str, Any], str | None]]
    ) -> list[str]:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
        from azure.data.tables import TableTransactionError, UpdateMode

        batch: list[Any] = []
        for kind, row, data, etag in ops:
            entity: dict[str, Any] = {"PartitionKey": partition, "RowKey": row}
            if kind != "delete":
                text = json.dumps(data, sort_keys=True)
                for i in range(0, max(len(text), 1), _CHUNK):
                    entity[f"data{i // _CHUNK}"] = text[i : i + _CHUNK]
                entity.update(node_columns(row, data) or run_columns(row, data) or listing_columns(row, data))
            conditions: dict[str, Any] = (
                {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
            )
            if kind == "create":
                batch.append(("create", entity))
            elif kind == "upsert":
                batch.append(("upsert", entity, {"mode": UpdateMode.REPLACE}))
            elif kind == "update":
                batch.append(("update", entity, {"mode": UpdateMode.REPLACE, **conditions}))
            else:
                batch.append(("delete", entity, conditions))
        try:
            if len(batch) == 1:
                result = [self._single(batch[0])]
            else:
                result = [m.get("etag", "") for m in self._table.submit_transaction(batch)]
        except TableTransactionError as exc:
            if exc.status_code in (404, 409, 412):
                raise ConcurrencyError(
                    f"{partition}: {getattr(exc, 'error_code', exc.status_code)}"
                ) from None
            raise
        except HttpResponseError as exc:
            if exc.status_code in (404, 409, 412):
                raise ConcurrencyError(
                    f"{partition}: {getattr(exc, 'error_code', exc.status_code)}"
                ) from None
            if exc.status_code in (429, 500, 503):
                raise TemporaryError(f"table storage answered {exc.status_code}") from exc
            if _no_token(exc):
                raise TemporaryError(f"table storage write failed: {exc.__class__.__name__}") from exc
            raise
        except (ServiceRequestError, ServiceResponseError) as exc:
            # No connection, or no answer within the read timeout: the write may or may
            # not have been applied. Callers that create recognise their own row when they
            # look again (RunStore.claim_cluster, create_run); an update is told by its ETag.
            raise TemporaryError(f"table storage did not answer: {exc.__class__.__name__}") from exc
        return [e or "" for e in result]

    def _single(self, op: tuple[Any, ...]) -> str:
        kind, entity = op[0], op[1]
        kwargs = op[2] if len(op) > 2 else {}
        if kind == "create":
            meta = self._table.create_entity(entity)
        elif kind == "upsert":
            meta = self._table.upsert_entity(entity, **kwargs)
        elif kind == "update":
            meta = self._table.update_entity(entity, **kwargs)
        else:
            self._table.delete_entity(entity["PartitionKey"], entity["RowKey"], **kwargs)
            return ""
        return str(meta.get("etag", ""))

    @staticmethod
    def _call(fn: Any, *args: Any) -> Any:
        from azure.core.exceptions import (
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        try:
            return fn(*args)
        except ResourceNotFoundError:
            raise
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
            raise TemporaryError(f"table storage read failed: {exc.__class__.__name__}") from exc


def _no_token(exc: Exception) -> bool:
    """The credential could not get a token (the identity endpoint hiccupped): no answer
    from storage at all, unlike a 401/403 from the service."""
    from azure.core.exceptions import ClientAuthenticationError

    return isinstance(exc, ClientAuthenticationError) and exc.response is None


def _node_range(partition: str) -> dict[str, Any]:
    # Row keys sort lexically: node rows are [node~, node~ + U+FFFF), never pacer~ or run.
    return {"p": partition, "lo": NODE_PREFIX, "hi": NODE_PREFIX + "\uffff"}
