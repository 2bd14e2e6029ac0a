"""A fault-injecting HTTP proxy in front of Azurite's table endpoint.

Azurite answers every request, and answers it right; the Table service does not always.
The two faults that matter to a run's bookkeeping are injected here, on the real HTTP
path, so that the app's real ``azure-data-tables`` client (its retry policy included)
meets them exactly as it would in Azure:

* **a write that fails with 503** (``fail_write``): the first write matching is answered
  503 ``ServerBusy`` without reaching Azurite, and so is every retry of that same write
  (same method, URL and body) for ``hold`` seconds: the SDK's own retries do not outlast
  it, and the app sees the write fail once. Other requests pass.
* **an answer lost after a successful write** (``lose_answer``): the first write matching
  reaches Azurite and is applied; its answer is then replaced by a 503 (what a gateway
  that timed out looks like: the SDK retries, and a create gets 409 for its own first
  attempt) or, with ``reply=None``, the connection is closed without an answer.

Tests reach the proxy as ``sandbox.table_proxy`` and arm faults the way they arm ARM's
(``sandbox.compute.faults``); ``request_log`` says which requests met which fault.
Matching is by regular expressions on ``"METHOD /path"`` (percent-decoded) and on the
request body, so a test can name "the run record's update that ends the run".
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

WRITE_METHODS = frozenset({"POST", "PUT", "MERGE", "PATCH", "DELETE"})
# Not forwarded: they describe one hop, not the request.
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)


@dataclass
class _Fault:
    kind: str  # "fail" | "lose"
    request: re.Pattern[str]
    body: re.Pattern[str] | None
    status: int
    code: str
    hold: float
    reply: int | None
    # For "fail": the write being failed (its signature) and until when its retries are.
    signature: str = ""
    until: float = 0.0
    hits: list[str] = field(default_factory=list)

    def matches(self, line: str, body: str) -> bool:
        return bool(self.request.search(line)) and (self.body is None or bool(self.body.search(body)))


class TableFaults:
    """What the proxy does to the next writes; thread-safe, each fault fires once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []

    def fail_write(
        self,
        request: str,
        *,
        body: str | None = None,
        status: int = 503,
        code: str = "ServerBusy",
        hold: float = 30.0,
    ) -> None:
        """Fail the next write whose ``"METHOD /path"`` matches ``request`` (and whose body
        matches ``body``), and its retries for ``hold`` seconds."""
        with self._lock:
            self._faults.append(_Fault("fail", re.compile(request), _compile(body), status, code, hold, None))

    def lose_answer(self, request: str, *, body: str | None = None, reply: int | None = 503) -> None:
        """Apply the next matching write, then answer ``reply`` instead (None: close the
        connection without an answer)."""
        with self._lock:
            self._faults.append(
                _Fault("lose", re.compile(request), _compile(body), reply or 0, "ServerBusy", 0.0, reply)
            )

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> int:
        """Faults armed that have not fired yet."""
        with self._lock:
            return sum(1 for f in self._faults if not f.signature)

    def _take(self, method: str, path: str, body: bytes) -> _Fault | None:
        if method not in WRITE_METHODS:
            return None
        line, text = f"{method} {unquote(path)}", body.decode("utf-8", "replace")
        signature = hashlib.sha256(f"{method} {path}\n".encode() + body).hexdigest()
        now = time.monotonic()
        with self._lock:
            for fault in list(self._faults):
                if fault.signature:  # a write being failed: only its retries, until its hold ends
                    if now > fault.until:
                        self._faults.remove(fault)
                    elif fault.signature == signature:
                        return fault
                    continue
                if fault.matches(line, text):
                    if fault.kind == "fail":
                        fault.signature, fault.until = signature, now + fault.hold
                    else:
                        self._faults.remove(fault)
                    return fault
        return None


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    return None if pattern is None else re.compile(pattern)


class TableFaultProxy:
    """Listens on a free loopback port and forwards to ``upstream`` (Azurite's table
    host:port); the account path is kept, so Shared Key signatures stay valid."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.faults = TableFaults()
        self.request_log: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def endpoint(self, account: str) -> str:
        return f"http://{self.host}:{self.port}/{account}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="table-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _log(self, **entry: Any) -> None:
        with self._log_lock:
            self.request_log.append(entry)


class _Handler(BaseHTTPRequestHandler):
    owner: TableFaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is the record

    _conn: http.client.HTTPConnection | None = None  # one upstream connection per client's

    def _upstream(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(*self.owner.upstream, timeout=30)
        return self._conn

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        method, path = self.command, self.path
        fault = self.owner.faults._take(method, path, body)
        entry: dict[str, Any] = {"method": method, "path": unquote(urlsplit(path).path)}
        if fault is not None and fault.kind == "fail":
            self.owner._log(**entry, status=fault.status, fault="failed")
            self._reply_error(fault.status, fault.code)
            return
        status, headers, answer = self._forward(method, path, body)
        if fault is not None:  # the write went through; its answer does not come back
            self.owner._log(**entry, status=status, fault="answer lost", reply=fault.reply)
            if fault.reply is None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._reply_error(fault.reply, fault.code)
            return
        self.owner._log(**entry, status=status, fault="")
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP_HEADERS and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _forward(self, method: str, path: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["Host"] = "{}:{}".format(*self.owner.upstream)
        for attempt in range(2):
            conn = self._upstream()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.getheaders(), resp.read()
            except (http.client.HTTPException, OSError):
                # Azurite closed an idle kept-alive connection: once more on a new one.
                conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _reply_error(self, status: int, code: str) -> None:
        text = json.dumps(
            {"odata.error": {"code": code, "message": {"lang": "en-US", "value": f"{code} (injected)"}}}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;odata=minimalmetadata;charset=utf-8")
        self.send_header("x-ms-error-code", code)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle  # noqa: N815

    def do_MERGE(self) -> None:
        self._handle()
