"""The serving thread of a sandbox HTTP server (the simulated API servers, the runner).

Every simulated service is a stdlib ``ThreadingHTTPServer`` whose accept loop runs in a
daemon thread, so a test or the demo that forgets to stop it never keeps the process
alive; stopping must end the loop before the socket is closed, or ``serve_forever`` would
go on polling a closed socket.
"""

from __future__ import annotations

import socketserver
import threading


class ServingThread:
    """Runs ``httpd.serve_forever`` in a daemon thread named ``name``.

    ``start`` is idempotent; ``stop`` ends the loop (waiting up to five seconds for it) and
    closes the listening socket, also when the server was never started.
    """

    def __init__(self, httpd: socketserver.BaseServer, *, name: str, poll_interval: float = 0.5) -> None:
        self._httpd = httpd
        self._name = name
        self._poll_interval = poll_interval
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": self._poll_interval},
            name=self._name,
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
