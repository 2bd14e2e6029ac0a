"""The ``azure.functions`` objects handed to functions, and what their outputs become."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import azure.functions as func


class _Out(func.Out[Any]):
    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _Context(func.Context):
    """The ``context`` argument, as the worker fills it (no trace or retry context here)."""

    def __init__(self, invocation_id: str, function_name: str, directory: str, tls: threading.local) -> None:
        self._values = {
            "invocation_id": invocation_id,
            "function_name": function_name,
            "function_directory": directory,
            "thread_local_storage": tls,
        }

    # func.Context declares each member an abstract property; all of them read _values.
    invocation_id = property(lambda self: self._values["invocation_id"])
    function_name = property(lambda self: self._values["function_name"])
    function_directory = property(lambda self: self._values["function_directory"])
    thread_local_storage = property(lambda self: self._values["thread_local_storage"])
    trace_context = property(lambda self: None)
    retry_context = property(lambda self: None)


HttpResult = tuple[int, list[tuple[str, str]], bytes]


def _http_result(value: Any) -> HttpResult:
    """Turn a function's HTTP output into status, headers, body as the worker's converter does."""
    if value is None:
        return 200, [], b""
    if isinstance(value, str):
        return 200, [("Content-Type", "text/plain; charset=utf-8")], value.encode("utf-8")
    if isinstance(value, func.HttpResponse):
        headers = list(value.headers.items())
        if not any(k.lower() == "content-type" for k, _ in headers):
            mimetype = value.mimetype
            ct = f"{mimetype}; charset={value.charset}" if mimetype.startswith("text/") else mimetype
            headers.append(("Content-Type", ct))
        return value.status_code, headers, value.get_body() or b""
    raise TypeError(f"HTTP output must be func.HttpResponse or str, got {type(value).__name__}")


def _compact_json(value: Any) -> str:
    # Array elements are re-serialized by the host (Json.NET), without spaces.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _queue_output_messages(value: Any) -> list[str | bytes]:
    """One queue message per element for JSON arrays, as the host's queue binding does."""
    if value is None:
        return []
    if isinstance(value, bytes | bytearray):
        return [bytes(value)]
    if isinstance(value, func.QueueMessage):
        return [value.get_body()]
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            try:
                items = json.loads(stripped)
            except ValueError:
                return [value]
            if not isinstance(items, list):
                return [value]
            return [item if isinstance(item, str) else _compact_json(item) for item in items]
        return [value]
    if isinstance(value, list | tuple):
        out: list[str | bytes] = []
        for item in value:
            out.append(item if isinstance(item, str | bytes) else _compact_json(item))
        return out
    if isinstance(value, dict):
        return [_compact_json(value)]
    raise TypeError(f"unsupported queue output type {type(value).__name__}")


@dataclass
class _Outcome:
    ok: bool
    result: Any = None
    http: HttpResult | None = None
    error: BaseException | None = None


def _json_response(status: int, payload: Any) -> HttpResult:
    return status, [("Content-Type", "application/json; charset=utf-8")], json.dumps(payload).encode()
