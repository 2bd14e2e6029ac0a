"""Azure Table storage backend (Azurite locally): ETag-conditioned entity-group transactions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared.errors import ConcurrencyError, TemporaryError
from shared.store.base import RunStore

if TYPE_CHECKING:
    from azure.data.tables import TableClient

# A property holds at most 64 KiB; the record is stored as one JSON string property and
# split over a few numbered ones if it ever grows larger.
_CHUNK = 30_000


class TableRunStore(RunStore):
    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Any) -> TableRunStore:
        from azure.data.tables import TableServiceClient

        if settings.storage_connection_string:
            service = TableServiceClient.from_connection_string(settings.storage_connection_string)
        else:
            from shared.settings import azure_credential

            service = TableServiceClient(settings.table_service_uri, credential=azure_credential())
        service.create_table_if_not_exists(settings.runs_table)
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

    def _query_partition(self, partition: str, row_prefix: str) -> list[tuple[dict[str, Any], str]]:
        # Row keys sort lexically, so a prefix is the range [prefix, prefix + U+FFFF).
        query = "PartitionKey eq @p and RowKey ge @lo and RowKey lt @hi"
        params = {"p": partition, "lo": row_prefix, "hi": row_prefix + "\uffff"}
        entities = self._call(lambda: list(self._table.query_entities(query, parameters=params)))
        return [self._decode(e) for e in entities]

    def _query_rows(self, row: str) -> list[tuple[dict[str, Any], str]]:
        entities = self._call(lambda: list(self._table.query_entities("RowKey eq @r", parameters={"r": row})))
        return [self._decode(e) for e in entities]

    def _transact(
        self, partition: str, ops: Sequence[tuple[str, str, dict[str, Any], str | None]]
    ) -> list[str]:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError
        from azure.data.tables import TableTransactionError, UpdateMode

        batch: list[Any] = []
        for kind, row, data, etag in ops:
            entity: dict[str, Any] = {"PartitionKey": partition, "RowKey": row}
            if kind != "delete":
                text = json.dumps(data, sort_keys=True)
                for i in range(0, max(len(text), 1), _CHUNK):
                    entity[f"data{i // _CHUNK}"] = text[i : i + _CHUNK]
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
            raise
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
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError

        try:
            return fn(*args)
        except ResourceNotFoundError:
            raise
        except (HttpResponseError, ServiceRequestError) as exc:
            raise TemporaryError(f"table storage read failed: {exc.__class__.__name__}") from exc
