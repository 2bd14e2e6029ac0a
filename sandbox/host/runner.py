"""The Functions host stand-in: indexes the app, serves its triggers, invokes its functions."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.functions.queue import QueueMessage as FuncQueueMessage
from azure.functions.timer import TimerRequest

from sandbox.easy_auth import EasyAuth, UnauthenticatedError
from sandbox.host.bindings import (
    HttpResult,
    _Context,
    _http_result,
    _json_response,
    _Out,
    _Outcome,
    _queue_output_messages,
)
from sandbox.host.config import (
    DEFAULT_BODY_LIMIT,
    HOST_LOCK_RETRY_SECONDS,
    HOST_QUEUE_LEASE_SECONDS,
    HostConfig,
    QueueOptions,
    RunnerConfigError,
    load_host_config,
)
from sandbox.host.eventgrid import _event_grid_binding, eventgrid_webhook
from sandbox.host.http import _compile_route, _Handler, _Route, _Server
from sandbox.host.indexing import IndexedFunction, _describe, _index_app
from sandbox.host.queues import _QueueListener
from sandbox.host.storage import _Storage
from sandbox.host.timers import _TimerScheduler
from sandbox.httpserver import ServerThread


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
        self.log = logging.getLogger(f"sandbox.host.{name}")
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
        self._server: ServerThread | None = None
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

        server = _Server((self.host, self.port), _Handler)
        server.runner = self
        self.port = int(server.server_address[1])
        self._server = ServerThread(server, name=f"{self.name}-http", poll_interval=0.2)
        self._server.start()
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
            self._server.stop()
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
            return eventgrid_webhook(self, method, parts.query, headers, body)
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
