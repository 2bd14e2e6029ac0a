"""Plumbing every sandbox HTTP server shares: serving from a daemon thread, started once
and stopped with its socket closed, and the URL clients are given.

Each server (ARM, Kubernetes, the Functions host) keeps its own request handling; only
this part is the same everywhere, so it lives here once."""

from __future__ import annotations

import socketserver
import threading
from typing import Any

# Every simulated service listens on the loopback interface, on a port the OS picks: the
# sandbox is for this machine only, and tests run side by side.
LOOPBACK = ("127.0.0.1", 0)


class ServerThread:
    """Runs ``httpd.serve_forever`` on a daemon thread named ``name``."""

    def __init__(self, httpd: socketserver.BaseServer, *, name: str, poll_interval: float = 0.5) -> None:
        self.httpd = httpd
        self.name = name
        self.poll_interval = poll_interval
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": self.poll_interval},
            name=self.name,
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket (also when never started)."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()


def server_url(server_address: tuple[Any, ...], *, tls: bool) -> str:
    """``http(s)://host:port`` of a bound server (its ``server_address``)."""
    host, port = server_address[:2]
    shown = host if isinstance(host, str) else host.decode()
    return f"{'https' if tls else 'http'}://{shown}:{port}"
