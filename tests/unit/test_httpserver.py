"""The serving thread the sandbox's servers share (sandbox/httpserver.py)."""

from __future__ import annotations

import socket
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sandbox.httpserver import ServerThread, server_url


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def test_a_started_server_answers_and_a_stopped_one_has_closed_its_socket() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    serving = ServerThread(httpd, name="test-http", poll_interval=0.05)
    url = server_url(httpd.server_address, tls=False)
    serving.start()
    serving.start()  # a second start is a no-op, not a second thread on the same socket
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.read() == b"hello"
    serving.stop()
    assert _refused(url)


def test_stopping_a_server_never_started_still_frees_its_port() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    url = server_url(httpd.server_address, tls=False)
    ServerThread(httpd, name="test-http").stop()
    assert _refused(url)


def test_the_url_says_https_under_tls() -> None:
    assert server_url(("127.0.0.1", 8443), tls=True) == "https://127.0.0.1:8443"
    assert server_url((b"localhost", 80), tls=False) == "http://localhost:80"
