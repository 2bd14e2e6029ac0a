"""The HTTP(S) plumbing: connections, TLS handshakes in the handler thread, bodies, dropped answers."""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.arm.server import ArmServer


logger = logging.getLogger(__name__)


class IncompleteBodyError(ConnectionError):
    """The client closed its end before the body its headers announced had arrived."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], arm: ArmServer, ssl_context: ssl.SSLContext | None) -> None:
        self.arm = arm
        self.ssl_context = ssl_context
        super().__init__(addr, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            # Handshake later, in the handler thread, so one slow client cannot stall accept().
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("sandbox ARM connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("sandbox ARM: " + format, *args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline()
                if not line:
                    raise IncompleteBodyError("the client went away inside a chunked body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise IncompleteBodyError("the client went away inside a chunked body")
                chunks.append(chunk)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if len(raw) < length:
            # A real server never acts on half a request: an empty reimage body would mean
            # "every instance".
            raise IncompleteBodyError(f"the client went away after {len(raw)} of {length} body bytes")
        return raw

    def _client_gone(self) -> bool:
        """True once the client closed its end (or the connection broke). The client sends
        nothing while it waits for an answer, so a readable socket means EOF or reset;
        the raw socket is peeked, under TLS too, without consuming anything."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            # socket.socket.recv is the plain socket's: it peeks below the TLS layer.
            return socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def _serve(self) -> None:
        # The body is always drained first: answering early would leave it in the
        # keep-alive stream and corrupt the next request on this connection.
        try:
            raw = self._read_body()
        except IncompleteBodyError:
            self.close_connection = True
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.arm._dispatch(
            self.command,
            self.path,
            headers,
            raw,
            client=(str(self.client_address[0]), int(self.client_address[1])),
            client_gone=self._client_gone,
        )
        if reply.drop_after is not None:
            # Accepted, never answered: the client waits until it gives up, or sees the
            # connection closed without a response.
            deadline = time.monotonic() + reply.drop_after
            while time.monotonic() < deadline and not self._client_gone():
                time.sleep(0.05)
            self.close_connection = True
            return
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()
