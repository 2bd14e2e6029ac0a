"""The HTTP trigger's routing (ASP.NET route templates) and the host's HTTP server."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from sandbox.host.config import RunnerConfigError
from sandbox.host.indexing import IndexedFunction

if TYPE_CHECKING:
    from sandbox.host.runner import FunctionsRunner


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
