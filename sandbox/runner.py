"""A local stand-in for the Azure Functions host, for a Python v2-model app.

The real host (``func start``) cannot be installed here, so this module plays its part:
it imports ``function_app.py``, indexes it once with ``app.get_functions()`` and invokes
the user functions with the *real* ``azure.functions`` binding objects. Everything the
app can observe is meant to match the host and its extensions as described in
``shared/specs/functions-host-facts.md``; where it cannot, the gap is named below.

Behaviours reproduced
---------------------
HTTP trigger
    Route prefix ``api`` (host.json ``extensions.http.routePrefix``), route templates
    with ``{p}``, ``{p?}``, ``{p:constraint}`` and ``{*p}`` (literal segments are
    matched case-insensitively and take precedence over parameters, as in ASP.NET
    routing), method filters, 404 when nothing matches, 500 with an empty body on an
    unhandled exception, 200 when the function sets no response, a 100 MiB body limit
    (``FUNCTIONS_REQUEST_BODY_SIZE_LIMIT``). Keys are not checked, like ``func start``.
    With ``easy_auth``, App Service Authentication stands in front (sandbox/easy_auth.py).
Event Grid trigger
    ``/runtime/webhooks/eventgrid?functionName=NAME`` with the ``aeg-event-type``
    protocol (validation handshake, Notification → one concurrent invocation per event,
    500 if any fails so Event Grid redelivers the batch, else 202; Unsubscribe → 202;
    anything else → 400), the CloudEvents OPTIONS handshake and single-object
    deliveries. CloudEvents are handed to the function the way the worker's *bundled*
    ``azure-functions`` library does on Python ≤ 3.12 (an ``EventGridEvent`` whose
    ``topic``/``event_type``/``event_time``/``data_version`` are None); with the app
    setting ``PYTHON_ISOLATE_WORKER_DEPENDENCIES=1`` the app's own library decides, as
    in Azure (azure-functions ≥ 1.25 then gives a ``func.CloudEvent``).
Queue trigger
    host.json ``extensions.queues`` (``batchSize``, ``newBatchThreshold``,
    ``maxDequeueCount``, ``visibilityTimeout``, ``maxPollingInterval``,
    ``messageEncoding``); the randomized exponential back-off of empty polls; at most
    batchSize + newBatchThreshold messages in flight per function; receive with a fixed
    lease (10 min in Azure, ``queue_lease_seconds`` here) renewed at half-time; delete
    on success; on failure release with ``visibilityTimeout`` or, at
    ``maxDequeueCount``, copy the original text to ``<queue>-poison`` and delete it;
    messages dequeued more often than that are poisoned without running; invalid base64
    goes straight to poison; ``-poison`` queues get no poison queue and a failed message
    there stays invisible until its lease ends. Queue output bindings (``func.Out`` or
    ``$return``) are written only after success, split JSON arrays into one message per
    element, lower-case and create their queue, and wake this host's listener on it.
Timer trigger
    NCRONTAB with six fields (seconds first) or five, or a ``hh:mm:ss`` TimeSpan,
    ``%Setting%`` resolved; day-of-month and day-of-week are ANDed as NCrontab does;
    ``run_on_startup``; ``use_monitor`` (off for schedules more frequent than once a
    minute) with the schedule status blob, so a missed occurrence fires once with
    ``past_due=True`` at start-up; runs never overlap and an overshooting run is
    followed by exactly one catch-up (``past_due=True``); failures are not retried.
    Only one host per host ID runs a timer: a blob lease on
    ``azure-webjobs-hosts/locks/<hostId>/Host.Functions.<name>.Listener`` (15 s, renewed
    every 5 s, released on stop). Hosts without it retry every ``lock_retry_seconds``
    (the host's 1 min, scaled by ``queue_lease_seconds / 600`` by default, at least 1 s).
Admin
    ``POST /admin/functions/NAME`` with ``{"input": ...}`` runs a non-HTTP function at
    once (202), as ``func start`` allows; ``GET /admin/host/status`` answers when serving.
Worker
    Sync functions run on a thread pool of ``PYTHON_THREADPOOL_THREAD_COUNT`` threads
    (default ``min(32, cpu + 4)``), ``async def`` functions on one shared event loop, as
    in the Python worker. A ``context`` parameter receives a ``func.Context``.

Several runner processes may share one storage account, exactly like a scaled-out app:
all coordination goes through queue leases and blob leases, never through this process.

Not reproduced: ``functionTimeout`` (Python threads cannot be killed; a long invocation
simply runs on), retry policies (``@app.retry``), function keys, input bindings and
output bindings other than queue/HTTP (rejected at start-up), ``WEBSITE_TIME_ZONE``.
host.json durations are used as written (only the receive lease and the lock retry are
scaled). In one process an app is imported once, so in-process runners of the same app
share its module state and see the environment of the first one to start.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import importlib.util
import inspect
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.functions.queue import QueueMessage as FuncQueueMessage
from azure.functions.timer import TimerRequest

from sandbox.easy_auth import EasyAuth, UnauthenticatedError

logger = logging.getLogger("sandbox.runner")

DEFAULT_BODY_LIMIT = 100 * 1024 * 1024
HOST_QUEUE_LEASE_SECONDS = 600.0
HOST_LOCK_RETRY_SECONDS = 60.0
LISTENER_LOCK_SECONDS = 15  # the shortest lease Azure Storage allows
LISTENER_LOCK_RENEW_SECONDS = 5.0
MIN_POLLING_INTERVAL = 0.1
HOSTS_CONTAINER = "azure-webjobs-hosts"


class RunnerConfigError(RuntimeError):
    """The app or its configuration would also stop the real host from starting."""


# --------------------------------------------------------------------------- helpers


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,7}))?)?$")


def parse_timespan(text: str) -> float | None:
    """Seconds in a .NET TimeSpan string (``[d.]hh:mm[:ss[.fffffff]]``), or None."""
    m = _TIMESPAN.match(text.strip())
    if not m:
        return None
    days, hours, minutes, seconds, fraction = m.groups()
    if int(hours) > 23 or int(minutes) > 59 or (seconds and int(seconds) > 59):
        return None
    total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0)
    return total + (float(f"0.{fraction}") if fraction else 0.0)


def _timespan_setting(section: Mapping[str, Any], key: str, default: float) -> float:
    value = section.get(key)
    if value is None:
        return default
    seconds = parse_timespan(value) if isinstance(value, str) else None
    if seconds is None:
        raise RunnerConfigError(f"host.json extensions.queues.{key} must be a TimeSpan string, got {value!r}")
    return seconds


_SETTING_REF = re.compile(r"%([^%]+)%")


def resolve_setting_refs(value: str, settings: Mapping[str, str]) -> str:
    """Replace ``%Name%`` with the app setting, failing like the host's indexing does."""

    def lookup(m: re.Match[str]) -> str:
        key = m.group(1)
        found = settings.get(key, os.environ.get(key))
        if found is None:
            raise RunnerConfigError(f"'%{key}%' does not resolve to a value (no app setting {key!r})")
        return found

    return _SETTING_REF.sub(lookup, value)


_BASE64_WHITESPACE = re.compile(r"[ \t\r\n]")


def decode_base64_message(text: str) -> bytes:
    """Decode like .NET ``Convert.FromBase64String``: whitespace ignored, strict otherwise.

    Raises ``binascii.Error`` for anything the host would refuse to decode.
    """
    return base64.b64decode(_BASE64_WHITESPACE.sub("", text), validate=True)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class PollBackoff:
    """The host's RandomizedExponentialBackoffStrategy for empty queue polls.

    Delays run ≈ 0.1, 0.2, 0.3, 0.5, 0.9, 1.7 … s up to the maximum, where they stay;
    a message resets them to the minimum.
    """

    def __init__(self, maximum: float, minimum: float = MIN_POLLING_INTERVAL) -> None:
        self.minimum = minimum
        self.maximum = max(maximum, minimum)
        self._exponent = 0
        self._current = minimum

    def reset(self) -> None:
        self._exponent = 0
        self._current = self.minimum

    def next_delay(self) -> float:
        if self._current != self.maximum:
            interval = self.minimum
            if self._exponent > 0:
                interval += random.uniform(0.8, 1.2) * 2 ** (self._exponent - 1) * self.minimum
            if interval < self.maximum:
                self._current = interval
                self._exponent += 1
            else:
                self._current = self.maximum
        return self._current


# --------------------------------------------------------------------------- host.json


@dataclass(frozen=True)
class QueueOptions:
    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    max_polling_interval: float = 60.0
    message_encoding: str = "base64"


@dataclass(frozen=True)
class HostConfig:
    route_prefix: str
    queues: QueueOptions
    raw: dict[str, Any]


def load_host_config(app_dir: Path) -> HostConfig:
    path = app_dir / "host.json"
    raw: dict[str, Any] = (
        json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"version": "2.0"}
    )
    if raw.get("version") != "2.0":
        raise RunnerConfigError(f'{path}: the host requires "version": "2.0"')
    extensions = raw.get("extensions") or {}
    prefix = (extensions.get("http") or {}).get("routePrefix", "api")
    q = extensions.get("queues") or {}
    batch = int(q.get("batchSize", 16))
    if not 1 <= batch <= 32:
        raise RunnerConfigError(f"host.json extensions.queues.batchSize must be 1-32, got {batch}")
    threshold = q.get("newBatchThreshold")
    new_batch_threshold = (batch // 2) * (os.cpu_count() or 1) if threshold in (None, -1) else int(threshold)
    max_polling = _timespan_setting(q, "maxPollingInterval", 60.0)
    if max_polling < MIN_POLLING_INTERVAL:
        raise RunnerConfigError(
            "host.json extensions.queues.maxPollingInterval must be at least 00:00:00.100"
        )
    encoding = str(q.get("messageEncoding", "base64")).lower()
    if encoding not in ("base64", "none"):
        raise RunnerConfigError(
            f"host.json extensions.queues.messageEncoding must be base64 or none, got {encoding}"
        )
    options = QueueOptions(
        batch_size=batch,
        new_batch_threshold=new_batch_threshold,
        max_dequeue_count=int(q.get("maxDequeueCount", 5)),
        visibility_timeout=_timespan_setting(q, "visibilityTimeout", 0.0),
        max_polling_interval=max_polling,
        message_encoding=encoding,
    )
    return HostConfig(route_prefix=str(prefix).strip("/"), queues=options, raw=raw)


# --------------------------------------------------------------------------- indexing

# get_functions() may be called only once per app object, and a module re-executed for a
# second runner would re-register the same blueprints: so each app is imported and
# indexed once per process.
_INDEX_CACHE: dict[Path, list[Any]] = {}
_INDEX_LOCK = threading.Lock()


def _index_app(app_dir: Path) -> list[Any]:
    from azure.functions.decorators.function_app import FunctionRegister

    script = (app_dir / "function_app.py").resolve()
    with _INDEX_LOCK:
        if script in _INDEX_CACHE:
            return _INDEX_CACHE[script]
        if not script.exists():
            raise RunnerConfigError(f"{script} not found")
        spec = importlib.util.spec_from_file_location("function_app", script)
        if spec is None or spec.loader is None:
            raise RunnerConfigError(f"cannot import {script}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["function_app"] = module
        spec.loader.exec_module(module)
        apps = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
        if len(apps) != 1:
            raise RunnerConfigError(f"{script} must define exactly one FunctionApp, found {len(apps)}")
        functions = list(apps[0].get_functions())
        _INDEX_CACHE[script] = functions
        return functions


@dataclass
class IndexedFunction:
    name: str
    user_function: Callable[..., Any]
    is_async: bool
    trigger: dict[str, Any]
    outputs: list[dict[str, Any]]
    wants_context: bool
    trigger_annotation: Any

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def trigger_arg(self) -> str:
        return str(self.trigger["name"])


_SUPPORTED_TRIGGERS = {"httpTrigger", "queueTrigger", "eventGridTrigger", "timerTrigger"}


def _describe(fn: Any, settings: Mapping[str, str]) -> IndexedFunction:
    name = fn.get_function_name()
    bindings = [_plain(b.get_dict_repr()) for b in fn.get_bindings()]
    triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
    if len(triggers) != 1:
        raise RunnerConfigError(f"function {name!r} must have exactly one trigger")
    trigger = triggers[0]
    if trigger["type"] not in _SUPPORTED_TRIGGERS:
        raise RunnerConfigError(
            f"function {name!r}: trigger {trigger['type']} is not supported by the runner"
        )
    outputs: list[dict[str, Any]] = []
    for b in bindings:
        if b is trigger:
            continue
        if b.get("direction") != 1 or b.get("type") not in ("queue", "http"):
            raise RunnerConfigError(
                f"function {name!r}: binding {b.get('name')!r} of type {b.get('type')} "
                "is not supported by the runner"
            )
        if b["type"] == "queue":
            outputs.append({**b, "queueName": resolve_setting_refs(str(b["queueName"]), settings).lower()})
        else:
            outputs.append(b)
    if trigger["type"] == "queueTrigger":
        trigger = {**trigger, "queueName": resolve_setting_refs(str(trigger["queueName"]), settings).lower()}
    if trigger["type"] == "timerTrigger":
        trigger = {**trigger, "schedule": resolve_setting_refs(str(trigger["schedule"]), settings)}
    user_function = fn.get_user_function()
    params = inspect.signature(user_function).parameters
    binding_names = {b["name"] for b in bindings}
    annotation = params[trigger["name"]].annotation if trigger["name"] in params else inspect.Parameter.empty
    return IndexedFunction(
        name=name,
        user_function=user_function,
        is_async=inspect.iscoroutinefunction(user_function),
        trigger=trigger,
        outputs=outputs,
        wants_context="context" in params and "context" not in binding_names,
        trigger_annotation=annotation,
    )


# --------------------------------------------------------------------------- binding objects


class _Out(func.Out[Any]):
    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _Context(func.Context):
    def __init__(self, invocation_id: str, function_name: str, directory: str, tls: threading.local) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._directory = directory
        self._tls = tls

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._tls

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._directory

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


def _parse_event_time(value: Any) -> datetime | None:
    from azure.functions.eventgrid import EventGridEventInConverter

    return EventGridEventInConverter._parse_datetime(value) if value is not None else None


def _event_grid_binding(event: dict[str, Any], *, isolate_dependencies: bool) -> Any:
    if isolate_dependencies:
        # The app's own azure-functions library decodes the event, as in Azure with
        # PYTHON_ISOLATE_WORKER_DEPENDENCIES=1.
        from azure.functions import meta
        from azure.functions.eventgrid import EventGridEventInConverter

        return EventGridEventInConverter.decode(meta.Datum(json.dumps(event), "json"), trigger_metadata=None)
    # The worker's bundled library reads Event Grid field names only, so CloudEvents
    # arrive with topic/event_type/event_time/data_version set to None.
    return func.EventGridEvent(
        id=event.get("id"),  # type: ignore[arg-type]
        data=event.get("data"),  # type: ignore[arg-type]
        topic=event.get("topic"),  # type: ignore[arg-type]
        subject=event.get("subject"),  # type: ignore[arg-type]
        event_type=event.get("eventType"),  # type: ignore[arg-type]
        event_time=_parse_event_time(event.get("eventTime")),
        data_version=event.get("dataVersion"),  # type: ignore[arg-type]
    )


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


# --------------------------------------------------------------------------- storage


class _Storage:
    """Queue and blob clients for one connection string, with pools sized for a busy host."""

    def __init__(self, connection_string: str) -> None:
        import requests
        from azure.core.pipeline.transport import RequestsTransport
        from azure.storage.blob import BlobServiceClient
        from azure.storage.queue import QueueServiceClient

        self.connection_string = connection_string
        self._sessions: list[requests.Session] = []

        def transport() -> RequestsTransport:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._sessions.append(session)
            return RequestsTransport(session=session, session_owner=False)

        # Few, quick retries: the host's own polling loop is the retry mechanism, and a
        # long SDK retry would delay shutdown when storage goes away first.
        common: dict[str, Any] = {
            "retry_total": 2,
            "retry_backoff_factor": 0.2,
            "connection_timeout": 5,
            "read_timeout": 30,
        }
        self.queues = QueueServiceClient.from_connection_string(
            connection_string, transport=transport(), **common
        )
        self.blobs = BlobServiceClient.from_connection_string(
            connection_string, transport=transport(), **common
        )
        self._created: set[str] = set()
        self._lock = threading.Lock()

    def send(self, queue_name: str, content: str) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        client = self.queues.get_queue_client(queue_name)
        try:
            client.send_message(content)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            client.send_message(content)

    def close(self) -> None:
        for session in self._sessions:
            session.close()


# --------------------------------------------------------------------------- invocation


@dataclass
class _Outcome:
    ok: bool
    result: Any = None
    http: HttpResult | None = None
    error: BaseException | None = None


@dataclass
class _MessageLease:
    message_id: str
    pop_receipt: str
    renewed_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False


class _QueueListener:
    """One polling loop per queue-triggered function, like the host's QueueListener."""

    def __init__(self, runner: FunctionsRunner, fn: IndexedFunction, storage: _Storage) -> None:
        self.runner = runner
        self.fn = fn
        self.storage = storage
        self.queue_name: str = fn.trigger["queueName"]
        self.options = runner.host_config.queues
        self.lease = max(1, math.ceil(runner.queue_lease_seconds))
        self.client = storage.queues.get_queue_client(self.queue_name)
        self.poison_name = None if self.queue_name.endswith("-poison") else f"{self.queue_name}-poison"
        self.log = runner.log
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._leases: dict[int, _MessageLease] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.options.batch_size + self.options.new_batch_threshold,
            thread_name_prefix=f"{runner.name}-{fn.name}-msg",
        )
        self._poller = threading.Thread(
            target=self._poll_loop, name=f"{runner.name}-{fn.name}-poll", daemon=True
        )
        # Leases are renewed until the last invocation ends, through a graceful stop too.
        self._renewer = threading.Thread(
            target=self._renew_loop, name=f"{runner.name}-{fn.name}-renew", daemon=True
        )

    def start(self) -> None:
        self._poller.start()
        self._renewer.start()

    def poke(self) -> None:
        self._wake.set()

    def stop_polling(self) -> None:
        self._stopping.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        if self._poller.is_alive():
            self._poller.join(timeout=5)

    def wait_idle(self, deadline: float) -> bool:
        with self._cond:
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(0.2, deadline - time.monotonic())))
            idle = self._in_flight == 0
        self._closed.set()
        if self._renewer.is_alive():
            self._renewer.join(timeout=5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        return idle

    def _poll_loop(self) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        backoff = PollBackoff(self.options.max_polling_interval)
        batch = self.options.batch_size
        missing_logged = False
        while not self._stopping.is_set():
            with self._cond:
                while self._in_flight > self.options.new_batch_threshold and not self._stopping.is_set():
                    self._cond.wait(0.5)
            if self._stopping.is_set():
                return
            messages: list[Any] = []
            try:
                messages = list(
                    self.client.receive_messages(
                        messages_per_page=batch, max_messages=batch, visibility_timeout=self.lease
                    )
                )
                missing_logged = False
            except ResourceNotFoundError:
                if not missing_logged:
                    self.log.info("queue %r does not exist yet; polling with back-off", self.queue_name)
                    missing_logged = True
            except AzureError as exc:
                if not self._stopping.is_set():
                    self.log.warning("polling queue %r failed: %s", self.queue_name, exc)
            except Exception:
                # The host's listener survives anything a poll throws; so does this one.
                self.log.exception("polling queue %r failed", self.queue_name)
            if messages:
                backoff.reset()
                for message in messages:
                    lease = _MessageLease(message.id, message.pop_receipt, time.monotonic())
                    with self._cond:
                        self._in_flight += 1
                        self._leases[id(lease)] = lease
                    try:
                        self._executor.submit(self._process, message, lease)
                    except RuntimeError:  # executor shut down while stopping
                        self._finished(lease)
                continue
            self._wake.wait(backoff.next_delay())
            self._wake.clear()

    def _renew_loop(self) -> None:
        from azure.core.exceptions import AzureError

        # Renewed at half the lease, as the host does after 5 of its 10 minutes.
        half = self.lease / 2
        while not self._closed.wait(min(1.0, half / 2)):
            with self._cond:
                leases = list(self._leases.values())
            for lease in leases:
                if time.monotonic() - lease.renewed_at < half:
                    continue
                with lease.lock:
                    if lease.done:
                        continue
                    try:
                        updated = self.client.update_message(
                            lease.message_id, lease.pop_receipt, visibility_timeout=self.lease
                        )
                        lease.pop_receipt = updated.pop_receipt or lease.pop_receipt
                        lease.renewed_at = time.monotonic()
                    except AzureError as exc:
                        self.log.warning(
                            "renewing message %s on %r failed: %s", lease.message_id, self.queue_name, exc
                        )

    def _finished(self, lease: _MessageLease) -> None:
        with self._cond:
            self._leases.pop(id(lease), None)
            self._in_flight -= 1
            self._cond.notify_all()

    def _process(self, message: Any, lease: _MessageLease) -> None:
        try:
            self._handle(message, lease)
        except Exception:
            self.log.exception("handling message %s from %r failed", message.id, self.queue_name)
        finally:
            self._finished(lease)

    def _handle(self, message: Any, lease: _MessageLease) -> None:
        max_count = self.options.max_dequeue_count
        if self.poison_name and message.dequeue_count > max_count:
            self._poison(message, lease, f"Message has reached MaxDequeueCount of {max_count}.")
            return
        raw: str = message.content or ""
        if self.options.message_encoding == "base64":
            try:
                body_bytes = decode_base64_message(raw)
            except (binascii.Error, ValueError):
                if self.poison_name:
                    self._poison(
                        message, lease, "Message is not valid base64 (host.json messageEncoding is base64)."
                    )
                else:
                    self.log.warning(
                        "message %s on %r is not valid base64; left invisible", message.id, self.queue_name
                    )
                    lease.done = True
                return
            body = body_bytes.decode("utf-8", errors="replace")
        else:
            body = raw
        binding = self._binding_value(message, lease, body)
        outcome = self.runner._invoke(self.fn, binding)
        with lease.lock:
            lease.done = True
        if outcome.ok:
            self._delete(message, lease)
        elif self.poison_name is None:
            # The host leaves a failed message invisible when there is no poison queue, to
            # avoid a fast infinite loop; it comes back when the lease runs out.
            pass
        elif message.dequeue_count >= max_count:
            self._poison(message, lease, f"Message has reached MaxDequeueCount of {max_count}.")
        else:
            self._release(message, lease)

    def _binding_value(self, message: Any, lease: _MessageLease, body: str) -> Any:
        if self.fn.trigger_annotation is str:
            return body
        if self.fn.trigger_annotation is bytes:
            return body.encode("utf-8")
        return FuncQueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=lease.pop_receipt,
        )

    def _delete(self, message: Any, lease: _MessageLease) -> None:
        from azure.core.exceptions import AzureError

        try:
            self.client.delete_message(message.id, lease.pop_receipt)
        except AzureError as exc:
            # Another instance took the message after our lease ran out: it will run again.
            self.log.warning("deleting message %s from %r failed: %s", message.id, self.queue_name, exc)

    def _release(self, message: Any, lease: _MessageLease) -> None:
        from azure.core.exceptions import AzureError

        try:
            self.client.update_message(
                message.id, lease.pop_receipt, visibility_timeout=int(self.options.visibility_timeout)
            )
        except AzureError as exc:
            self.log.warning("releasing message %s on %r failed: %s", message.id, self.queue_name, exc)

    def _poison(self, message: Any, lease: _MessageLease, reason: str) -> None:
        assert self.poison_name
        self.log.warning(
            "%s Moving message %s to queue '%s'. (function %s)",
            reason,
            message.id,
            self.poison_name,
            self.fn.name,
        )
        with lease.lock:
            lease.done = True
        # The original text is copied, so the poison message decodes exactly like the original.
        self.storage.send(self.poison_name, message.content or "")
        self._delete(message, lease)


class _BlobSingleton:
    """The host's listener lock: a blob lease only one host of an app can hold."""

    def __init__(self, storage: _Storage, host_id: str, function_name: str, owner: str) -> None:
        self.blob_name = f"locks/{host_id}/Host.Functions.{function_name}.Listener"
        self.owner = owner
        self._container = storage.blobs.get_container_client(HOSTS_CONTAINER)
        self._blob = self._container.get_blob_client(self.blob_name)
        self._lease: Any = None

    def try_acquire(self) -> bool:
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

        try:
            try:
                self._lease = self._blob.acquire_lease(lease_duration=LISTENER_LOCK_SECONDS)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    self._container.create_container()
                with contextlib.suppress(ResourceExistsError):
                    self._blob.upload_blob(b"", overwrite=False)
                self._lease = self._blob.acquire_lease(lease_duration=LISTENER_LOCK_SECONDS)
        except AzureError:
            self._lease = None
            return False
        with contextlib.suppress(AzureError):
            self._blob.set_blob_metadata({"FunctionInstance": self.owner}, lease=self._lease)
        return True

    def renew(self) -> bool:
        from azure.core.exceptions import AzureError

        if self._lease is None:
            return False
        try:
            self._lease.renew()
            return True
        except AzureError:
            return False

    def release(self) -> None:
        from azure.core.exceptions import AzureError

        if self._lease is not None:
            with contextlib.suppress(AzureError):
                self._lease.release()
            self._lease = None


class Schedule:
    """NCRONTAB (six fields, seconds first; or five) or a constant TimeSpan interval."""

    def __init__(self, expression: str) -> None:
        from croniter import croniter

        self.expression = expression
        self.interval: float | None = None
        self._six = False
        fields = expression.split()
        if len(fields) in (5, 6) and croniter.is_valid(expression, second_at_beginning=len(fields) == 6):
            self._six = len(fields) == 6
        else:
            self.interval = parse_timespan(expression)
            if not self.interval:
                raise RunnerConfigError(f"'{expression}' is not a valid NCRONTAB expression or TimeSpan")

    def next_after(self, moment: datetime) -> datetime:
        if self.interval is not None:
            return moment + timedelta(seconds=self.interval)
        from croniter import croniter

        # NCrontab requires day-of-month AND day-of-week to match (cron ORs them).
        it = croniter(self.expression, moment, second_at_beginning=self._six, day_or=False)
        nxt: datetime = it.get_next(datetime)
        return nxt

    def shortest_gap(self) -> float:
        first = self.next_after(_utcnow())
        return (self.next_after(first) - first).total_seconds()


class _TimerScheduler:
    """One timer function: singleton lock, monitor status blob, and the run loop."""

    def __init__(self, runner: FunctionsRunner, fn: IndexedFunction, storage: _Storage) -> None:
        self.runner = runner
        self.fn = fn
        self.storage = storage
        self.schedule = Schedule(fn.trigger["schedule"])
        self.run_on_startup = bool(fn.trigger.get("runOnStartup", False))
        # The host turns the monitor off for schedules more frequent than once a minute.
        self.use_monitor = bool(fn.trigger.get("useMonitor", True)) and self.schedule.shortest_gap() >= 60
        self.lock = _BlobSingleton(storage, runner.host_id, fn.name, owner=runner.instance_id)
        self.status_blob = storage.blobs.get_blob_client(
            HOSTS_CONTAINER, f"timers/{runner.host_id}/Host.Functions.{fn.name}/status"
        )
        self.log = runner.log
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{runner.name}-{fn.name}-timer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def stop(self, deadline: float) -> None:
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout=max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self.lock.try_acquire():
                self._stopping.wait(self.runner.lock_retry_seconds)
                continue
            self.log.info("%s holds the singleton lock for timer %r", self.runner.name, self.fn.name)
            self._lost.clear()
            renewer = threading.Thread(
                target=self._renew, name=f"{self.runner.name}-{self.fn.name}-lock", daemon=True
            )
            renewer.start()
            try:
                self._schedule_loop()
            except Exception:
                self.log.exception("timer %r stopped unexpectedly", self.fn.name)
            finally:
                held = not self._lost.is_set()
                self._lost.set()
                renewer.join(timeout=5)
                if held:
                    self.lock.release()
            if not self._stopping.is_set():
                self.log.warning("%s lost the singleton lock for timer %r", self.runner.name, self.fn.name)

    def _renew(self) -> None:
        while not self._lost.wait(LISTENER_LOCK_RENEW_SECONDS):
            if not self.lock.renew():
                self._lost.set()
                self._wake.set()

    def _should_exit(self) -> bool:
        return self._stopping.is_set() or self._lost.is_set()

    def _wait_until(self, moment: datetime) -> bool:
        while not self._should_exit():
            remaining = (moment - _utcnow()).total_seconds()
            if remaining <= 0:
                return False
            self._wake.wait(remaining)
            self._wake.clear()
        return True

    def _schedule_loop(self) -> None:
        status = self._read_status() if self.use_monitor else None
        past_due = bool(status and status.get("Next") and _parse_iso(status["Next"]) < _utcnow())
        if self.use_monitor and status is None:
            # Recorded at once, so an occurrence missed while no host runs is seen as past due.
            now = _utcnow()
            first = {"Last": "", "Next": _iso(self.schedule.next_after(now)), "LastUpdated": _iso(now)}
            self._write_status(first)
        if past_due or self.run_on_startup:
            self._fire(past_due=past_due, scheduled=_utcnow())
        next_at = self.schedule.next_after(_utcnow())
        while True:
            if self._wait_until(next_at):
                return
            self._fire(past_due=False, scheduled=next_at)
            following = self.schedule.next_after(next_at)
            if _utcnow() >= following:
                # The run overshot at least one occurrence: one catch-up at once, then
                # back on schedule; the missed occurrences are not replayed.
                if self._should_exit():
                    return
                self._fire(past_due=True, scheduled=following)
                next_at = self.schedule.next_after(_utcnow())
            else:
                next_at = following

    def _fire(self, *, past_due: bool, scheduled: datetime) -> None:
        status: dict[str, str] = {}
        if self.use_monitor:
            status = {
                "Last": _iso(scheduled),
                "Next": _iso(self.schedule.next_after(scheduled)),
                "LastUpdated": _iso(_utcnow()),
            }
        request = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})
        self.runner._invoke(self.fn, request)
        if self.use_monitor:
            status["Next"] = _iso(self.schedule.next_after(max(_utcnow(), scheduled)))
            self._write_status(status)

    def _read_status(self) -> dict[str, Any] | None:
        from azure.core.exceptions import AzureError

        try:
            data: dict[str, Any] = json.loads(self.status_blob.download_blob().readall())
            return data
        except (AzureError, ValueError):
            return None

    def _write_status(self, status: dict[str, str]) -> None:
        from azure.core.exceptions import AzureError

        try:
            self.status_blob.upload_blob(json.dumps(status).encode(), overwrite=True)
        except AzureError as exc:
            self.log.warning("writing the schedule status of %r failed: %s", self.fn.name, exc)


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- HTTP routing

_GUID = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "guid": _GUID,
    "bool": r"(?i:true|false)",
    "alpha": r"[A-Za-z]+",
}
_PARAM = re.compile(r"^\{(\*{1,2})?([A-Za-z_][A-Za-z0-9_]*)((?::[^}=?]+)*)(\?)?(?:=[^}]*)?\}$")


@dataclass
class _Route:
    fn: IndexedFunction
    methods: set[str] | None
    pattern: re.Pattern[str]
    params: list[str]
    precedence: tuple[int, ...]


def _compile_route(prefix: str, template: str, fn: IndexedFunction, methods: set[str] | None) -> _Route:
    parts = [p for p in (prefix.split("/") if prefix else []) if p]
    parts += [p for p in template.strip("/").split("/") if p]
    regex = ""
    names: list[str] = []
    ranks: list[int] = []
    for part in parts:
        m = _PARAM.match(part)
        if not m:
            if "{" in part:
                raise RunnerConfigError(f"function {fn.name!r}: unsupported route segment {part!r}")
            regex += "/" + re.escape(part)
            ranks.append(0)
            continue
        catch_all, name, constraints, optional = m.groups()
        group = f"p{len(names)}"
        names.append(name)
        if catch_all:
            regex += f"(?:/(?P<{group}>.*))?"
            ranks.append(4)
            continue
        kinds = [c for c in constraints.split(":") if c]
        body = _CONSTRAINTS.get(kinds[0].split("(")[0].lower(), "[^/]+") if kinds else "[^/]+"
        if optional:
            regex += f"(?:/(?P<{group}>{body}))?"
            ranks.append(3)
        else:
            regex += f"/(?P<{group}>{body})"
            ranks.append(1 if kinds else 2)
    # ASP.NET routing ignores case and a trailing slash.
    return _Route(fn, methods, re.compile(f"^{regex}/?$", re.IGNORECASE), names, tuple(ranks))


# --------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib default backlog of 5 drops connection bursts (then a 1 s SYN retry).
    request_queue_size = 128
    runner: FunctionsRunner


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without this each small response waits ~40 ms for Nagle/delayed-ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        self.server.runner.log.debug("http %s", format % args)

    def _read_body(self, limit: int) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                line = self.rfile.readline(65537)
                length = int(line.split(b";")[0].strip() or b"0", 16)
                if length == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                size += length
                if size > limit:
                    return None
                chunks.append(self.rfile.read(length))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            return None
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        runner = self.server.runner
        try:
            body = self._read_body(runner.body_limit)
        except (ValueError, OSError):
            self.close_connection = True
            self._send(400, [], b"")
            return
        if body is None:
            # The rest of the oversized body is never read, so the connection cannot be reused.
            self.close_connection = True
            self._send(413, [], b"")
            return
        try:
            status, headers, payload = runner._dispatch_http(self.command, self.path, self.headers, body)
        except Exception:
            runner.log.exception("runner error handling %s %s", self.command, self.path)
            status, headers, payload = 500, [], b""
        self._send(status, headers, payload)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    # BaseHTTPRequestHandler dispatches on do_<METHOD>: every method, even one it has never
    # heard of, goes through the routing, so a method no route takes gets the host's 404,
    # never http.server's 501.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


def _json_response(status: int, payload: Any) -> HttpResult:
    return status, [("Content-Type", "application/json; charset=utf-8")], json.dumps(payload).encode()


# --------------------------------------------------------------------------- the runner


class FunctionsRunner:
    """Hosts one Functions app: HTTP, Event Grid, queue and timer triggers."""

    def __init__(
        self,
        app_dir: Path,
        *,
        settings: dict[str, str],
        host: str = "127.0.0.1",
        port: int = 0,
        queue_lease_seconds: float = HOST_QUEUE_LEASE_SECONDS,
        name: str = "runner",
        lock_retry_seconds: float | None = None,
        easy_auth: EasyAuth | None = None,
    ) -> None:
        self.app_dir = Path(app_dir).resolve()
        # App Service Authentication in front of the HTTP routes (sandbox/easy_auth.py).
        self.easy_auth = easy_auth
        self.settings = {k: str(v) for k, v in settings.items()}
        self.host = host
        self.port = port
        self.queue_lease_seconds = queue_lease_seconds
        self.name = name
        scale = queue_lease_seconds / HOST_QUEUE_LEASE_SECONDS
        self.lock_retry_seconds = (
            lock_retry_seconds
            if lock_retry_seconds is not None
            else max(1.0, HOST_LOCK_RETRY_SECONDS * scale)
        )
        self.instance_id = f"{name}-{uuid.uuid4().hex[:12]}"
        self.log = logging.getLogger(f"sandbox.runner.{name}")
        self.invocations: list[dict[str, Any]] = []
        self.functions: list[IndexedFunction] = []
        self.host_config = HostConfig("api", QueueOptions(), {})
        self.body_limit = int(self.settings.get("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT", DEFAULT_BODY_LIMIT))
        self.host_id = self._host_id()
        self._invocations_lock = threading.Lock()
        self._tls = threading.local()
        self._routes: list[_Route] = []
        self._storages: dict[str, _Storage] = {}
        self._listeners: list[_QueueListener] = []
        self._timers: list[_TimerScheduler] = []
        self._server: _Server | None = None
        self._server_thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._dispatch_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._saved_env: dict[str, str | None] = {}
        self._started = False

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _host_id(self) -> str:
        explicit = self.settings.get("AzureFunctionsWebHost__hostid") or self.settings.get(
            "WEBSITE_SITE_NAME"
        )
        # Runners for one app directory share an ID unless told otherwise, so they behave
        # as instances of one scaled-out app (shared timer locks).
        raw = (explicit or self.app_dir.name).lower()
        return re.sub(r"[^a-z0-9-]", "-", raw)[:32].strip("-") or "app"

    def start(self) -> None:
        if self._started:
            raise RuntimeError("runner already started")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        # The app reads its settings from the environment, as in Azure, and may do so at import.
        for key, value in self.settings.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        if str(self.app_dir) not in sys.path:
            sys.path.insert(0, str(self.app_dir))
        if self.settings.get("WEBSITE_TIME_ZONE"):
            self.log.warning("WEBSITE_TIME_ZONE is ignored: timers run in UTC, as on Linux Consumption plans")
        self.host_config = load_host_config(self.app_dir)
        self.functions = [_describe(fn, self.settings) for fn in _index_app(self.app_dir)]

        threads = self.settings.get("PYTHON_THREADPOOL_THREAD_COUNT")
        workers = int(threads) if threads else min(32, (os.cpu_count() or 1) + 4)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"{self.name}-worker"
        )
        self._dispatch_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=64, thread_name_prefix=f"{self.name}-dispatch"
        )
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name=f"{self.name}-loop", daemon=True
        )
        self._loop_thread.start()

        for fn in self.functions:
            if fn.trigger_type == "httpTrigger":
                methods = fn.trigger.get("methods")
                route = fn.trigger.get("route") or fn.name
                allowed = {str(m).upper() for m in methods} if methods else None
                self._routes.append(_compile_route(self.host_config.route_prefix, route, fn, allowed))
        self._routes.sort(key=lambda r: r.precedence)

        for fn in self.functions:
            if fn.trigger_type == "queueTrigger":
                self._listeners.append(
                    _QueueListener(self, fn, self._storage(fn.trigger.get("connection"), fn))
                )
            elif fn.trigger_type == "timerTrigger":
                self._timers.append(_TimerScheduler(self, fn, self._storage(None, fn)))

        self._server = _Server((self.host, self.port), _Handler)
        self._server.runner = self
        self.port = int(self._server.server_address[1])
        self._server_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"{self.name}-http",
            daemon=True,
        )
        self._server_thread.start()
        for listener in self._listeners:
            listener.start()
        for timer in self._timers:
            timer.start()
        self.log.info(
            "%s serving %s (host id %s): %s",
            self.name,
            self.url,
            self.host_id,
            ", ".join(f"{f.name} [{f.trigger_type}]" for f in self.functions),
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, then wait up to ``timeout`` s for invocations in flight.

        Messages still running afterwards keep their lease and come back when it runs
        out, as after a crash.
        """
        deadline = time.monotonic() + timeout
        for listener in self._listeners:
            listener.stop_polling()
        for timer in self._timers:
            timer.request_stop()
        for listener in self._listeners:
            if not listener.wait_idle(deadline):
                self.log.warning(
                    "%s: invocations still running on %r at stop", self.name, listener.queue_name
                )
        for timer in self._timers:
            timer.stop(deadline)
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._dispatch_pool:
            self._dispatch_pool.shutdown(wait=False, cancel_futures=True)
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread:
                self._loop_thread.join(timeout=5)
            if not self._loop.is_running():
                self._loop.close()
            self._loop = None
        for storage in self._storages.values():
            storage.close()
        self._listeners.clear()
        self._timers.clear()
        self._storages.clear()
        for key, previous in self._saved_env.items():
            if previous is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = previous
        self._saved_env.clear()

    def _storage(self, connection: str | None, fn: IndexedFunction) -> _Storage:
        name = connection or "AzureWebJobsStorage"
        conn = self.settings.get(name) or self.settings.get(f"AzureWebJobs{name}") or os.environ.get(name)
        if not conn:
            raise RunnerConfigError(
                f"function {fn.name!r}: the connection setting {name!r} is missing "
                "(the host would not start its listener)"
            )
        if conn not in self._storages:
            self._storages[conn] = _Storage(conn)
        return self._storages[conn]

    # ----------------------------------------------------------------- invocation

    def _call_user(self, fn: IndexedFunction, kwargs: dict[str, Any]) -> Any:
        if fn.is_async:
            assert self._loop
            return asyncio.run_coroutine_threadsafe(fn.user_function(**kwargs), self._loop).result()
        assert self._pool
        return self._pool.submit(fn.user_function, **kwargs).result()

    def _invoke(self, fn: IndexedFunction, trigger_value: Any) -> _Outcome:
        invocation_id = str(uuid.uuid4())
        outs = {b["name"]: _Out() for b in fn.outputs if b["name"] != "$return"}
        kwargs: dict[str, Any] = {fn.trigger_arg: trigger_value, **outs}
        if fn.wants_context:
            kwargs["context"] = _Context(invocation_id, fn.name, str(self.app_dir), self._tls)
        started = time.time()
        outcome = _Outcome(ok=False)
        try:
            result = self._call_user(fn, kwargs)
            outcome.result = result
            http_out = next((b for b in fn.outputs if b["type"] == "http"), None)
            if http_out is not None:
                value = result if http_out["name"] == "$return" else outs[http_out["name"]].get()
                outcome.http = _http_result(value)
            # Queue outputs are written last and only once the function has succeeded.
            for b in fn.outputs:
                if b["type"] != "queue":
                    continue
                value = result if b["name"] == "$return" else outs[b["name"]].get()
                self._write_queue_output(fn, b, value)
            outcome.ok = True
        except Exception as exc:
            outcome.error = exc
            self.log.error("Exception while executing function: Functions.%s", fn.name, exc_info=exc)
        ended = time.time()
        record = {
            "function": fn.name,
            "trigger": fn.trigger_type,
            "started": started,
            "ended": ended,
            "outcome": "success" if outcome.ok else "failure",
            "error": None if outcome.ok else f"{type(outcome.error).__name__}: {outcome.error}",
            "invocation_id": invocation_id,
        }
        with self._invocations_lock:
            self.invocations.append(record)
        self.log.info(
            "Executed 'Functions.%s' (%s, trigger=%s, Id=%s, Duration=%dms)",
            fn.name,
            "Succeeded" if outcome.ok else "Failed",
            fn.trigger_type,
            invocation_id,
            round((ended - started) * 1000),
        )
        return outcome

    def _write_queue_output(self, fn: IndexedFunction, binding: dict[str, Any], value: Any) -> None:
        messages = _queue_output_messages(value)
        if not messages:
            return
        storage = self._storage(binding.get("connection"), fn)
        queue_name = binding["queueName"]
        for message in messages:
            data = message if isinstance(message, bytes) else message.encode("utf-8")
            if self.host_config.queues.message_encoding == "base64":
                text = base64.b64encode(data).decode("ascii")
            else:
                text = data.decode("utf-8", errors="replace")
            storage.send(queue_name, text)
        for listener in self._listeners:
            if listener.queue_name == queue_name and listener.storage is storage:
                listener.poke()

    # ----------------------------------------------------------------- HTTP

    def _dispatch_http(self, method: str, raw_path: str, headers: Any, body: bytes) -> HttpResult:
        parts = urlsplit(raw_path)
        path = parts.path or "/"
        lowered = path.rstrip("/").lower()
        if lowered == "/runtime/webhooks/eventgrid":
            return self._eventgrid(method, parts.query, headers, body)
        if lowered == "/admin/host/status":
            return _json_response(200, {"state": "Running", "id": self.host_id, "name": self.name})
        if lowered.startswith("/admin/functions/") and method == "POST":
            return self._admin_invoke(path.rstrip("/").split("/")[-1], body)
        for route in self._routes:
            m = route.pattern.match(path)
            if not m or (route.methods is not None and method not in route.methods):
                continue
            route_params = {
                name: unquote(value)
                for name, value in zip(route.params, m.groups(), strict=False)
                if value is not None
            }
            return self._invoke_http(
                fn=route.fn, method=method, parts=parts, headers=headers, body=body, route_params=route_params
            )
        return 404, [], b""

    def _invoke_http(
        self,
        *,
        fn: IndexedFunction,
        method: str,
        parts: Any,
        headers: Any,
        body: bytes,
        route_params: dict[str, str],
    ) -> HttpResult:
        params: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            # The host passes repeated values joined with commas (StringValues.ToString()).
            params[key] = f"{params[key]},{value}" if key in params else value
        items = list(headers.items())
        if self.easy_auth is not None:
            try:
                items = self.easy_auth.front(items)
            except UnauthenticatedError as refused:
                return refused.response
        merged: dict[str, str] = {}
        for raw_key, value in items:
            key = raw_key.lower()
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        host_header = headers.get("Host") or f"{self.host}:{self.port}"
        url = f"http://{host_header}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        request = func.HttpRequest(
            method=method, url=url, headers=merged, params=params, route_params=route_params, body=body
        )
        outcome = self._invoke(fn, request)
        if not outcome.ok or outcome.http is None:
            return 500, [], b""
        return outcome.http

    def _admin_invoke(self, name: str, body: bytes) -> HttpResult:
        """``POST /admin/functions/NAME {"input": ...}``: run a non-HTTP function now, like ``func start``."""
        fn = next((f for f in self.functions if f.name.lower() == name.lower()), None)
        if fn is None or fn.trigger_type == "httpTrigger":
            return 404, [], b""
        try:
            payload = json.loads(body or b"{}").get("input")
        except (ValueError, AttributeError):
            return 400, [], b""
        value: Any
        if fn.trigger_type == "timerTrigger":
            value = TimerRequest(past_due=False)
        elif fn.trigger_type == "queueTrigger":
            text = payload if isinstance(payload, str) else json.dumps(payload)
            value = FuncQueueMessage(id=str(uuid.uuid4()), body=text, dequeue_count=1, pop_receipt=None)
        else:
            event = payload if isinstance(payload, dict) else json.loads(payload or "{}")
            value = _event_grid_binding(event, isolate_dependencies=self._isolate_dependencies())
        assert self._dispatch_pool
        self._dispatch_pool.submit(self._invoke, fn, value)
        return 202, [], b""

    # ----------------------------------------------------------------- Event Grid

    def _isolate_dependencies(self) -> bool:
        return self.settings.get("PYTHON_ISOLATE_WORKER_DEPENDENCIES", "").strip().lower() in ("1", "true")

    def _eventgrid(self, method: str, query: str, headers: Any, body: bytes) -> HttpResult:
        if method == "OPTIONS":
            # CloudEvents abuse-protection handshake.
            origin = headers.get("WebHook-Request-Origin")
            return 200, ([("WebHook-Allowed-Origin", origin)] if origin else []), b""
        if method != "POST":
            return 405, [], b""
        wanted = dict(parse_qsl(query)).get("functionName", "")
        fn = next(
            (
                f
                for f in self.functions
                if f.trigger_type == "eventGridTrigger" and f.name.lower() == wanted.lower()
            ),
            None,
        )
        if fn is None:
            return 404, [], b""
        kind = (headers.get("aeg-event-type") or "").strip().lower()
        if kind not in ("subscriptionvalidation", "notification", "unsubscribe"):
            return 400, [], b""
        if kind == "unsubscribe":
            return 202, [], b""
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            return 400, [], b""
        events = payload if isinstance(payload, list) else [payload]
        if not all(isinstance(e, dict) for e in events):
            return 400, [], b""
        if kind == "subscriptionvalidation":
            code = ((events[0] if events else {}).get("data") or {}).get("validationCode")
            if code is None:
                return 400, [], b""
            return _json_response(200, {"validationResponse": code})
        isolate = self._isolate_dependencies()
        assert self._dispatch_pool
        futures = [
            self._dispatch_pool.submit(self._invoke, fn, _event_grid_binding(e, isolate_dependencies=isolate))
            for e in events
        ]
        ok = all(f.result().ok for f in futures)
        return (202, [], b"") if ok else (500, [], b"")


# --------------------------------------------------------------------------- CLI


def _load_settings(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    # Accept local.settings.json ({"Values": {...}}) as well as a flat mapping.
    if isinstance(data, dict) and isinstance(data.get("Values"), dict):
        data = data["Values"]
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a JSON object of settings")
    return {str(k): str(v) for k, v in data.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.runner", description="Local Azure Functions host"
    )
    parser.add_argument("--app-dir", type=Path, required=True)
    parser.add_argument("--settings-file", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--queue-lease-seconds", type=float, default=HOST_QUEUE_LEASE_SECONDS)
    parser.add_argument("--lock-retry-seconds", type=float, default=None)
    parser.add_argument("--name", default="runner")
    parser.add_argument("--easy-auth", type=Path, default=None, help="App Service Authentication's key file")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The SDK logs every storage request at INFO; the host's own polling would drown the app's logs.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    runner = FunctionsRunner(
        args.app_dir,
        settings=_load_settings(args.settings_file),
        host=args.host,
        port=args.port,
        queue_lease_seconds=args.queue_lease_seconds,
        name=args.name,
        lock_retry_seconds=args.lock_retry_seconds,
        easy_auth=EasyAuth.load(args.easy_auth) if args.easy_auth else None,
    )
    try:
        runner.start()
    except Exception:
        logger.exception("runner %s failed to start", args.name)
        return 1
    print(f"READY {runner.url}", flush=True)
    while not stop.wait(0.5):
        pass
    runner.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
