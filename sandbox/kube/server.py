"""The simulated API server itself: a ``KubeStore`` served over HTTP(S), its credentials,
request log, fault injection and kubeconfigs."""

from __future__ import annotations

import base64
import socket
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from sandbox.httpserver import LOOPBACK, ServerThread, server_url
from sandbox.kube.faults import KubeFaults
from sandbox.kube.http import APIHTTPServer, APIRequestHandler
from sandbox.kube.rbac import ADMIN, Authorizer, User
from sandbox.kube.registry import KubeStore
from sandbox.tls import SandboxTLS


class KubeAPIServer:
    """Serves a ``KubeStore`` over HTTP(S) as the Kubernetes REST API."""

    def __init__(
        self,
        store: KubeStore,
        *,
        tls: SandboxTLS | None = None,
        token: str | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.store = store
        self.host = LOOPBACK[0]
        self.tls = tls
        self.token = token  # the admin's (system:masters)
        # More identities (token -> user), authorized by ``authorizer`` as RBAC would.
        self.identities: dict[str, User] = {}
        self.authorizer = authorizer
        self.request_log: list[dict[str, Any]] = []
        self.faults = KubeFaults()
        # Opt-in: end every watch after at most this many seconds (0: at once, with an
        # empty stream), as a proxy's idle timeout or an API server shedding watches does.
        # None (the default) honours timeoutSeconds.
        self.watch_max_seconds: float | None = None
        self._log_lock = threading.Lock()
        self._ssl_context = tls.server_context() if tls is not None else None
        self._stopping = threading.Event()
        self._connections: set[Any] = set()
        self._conn_lock = threading.Lock()
        self._httpd = APIHTTPServer(LOOPBACK, APIRequestHandler)
        self._httpd.api = self
        self.port: int = self._httpd.server_address[1]
        self.url = server_url(self._httpd.server_address, tls=tls is not None)
        self._serving = ServerThread(self._httpd, name="sandbox-kube-apiserver", poll_interval=0.1)

    def start(self) -> None:
        self._serving.start()

    def stop(self) -> None:
        self._stopping.set()
        self.store.wake_watchers()
        self._serving.stop()
        # Idle keep-alive connections would otherwise go on answering after stop().
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def tokens(self) -> list[tuple[str, User]]:
        known = [(self.token, ADMIN)] if self.token else []
        return known + list(self.identities.items())

    def add_identity(self, token: str, user: User) -> None:
        self.identities[token] = user

    def write_kubeconfig(
        self, path: Path, *, cluster_name: str, token: str | None = None, user: str = "admin"
    ) -> None:
        """A kubeconfig for the admin (default) or for the identity of ``token``."""
        cluster = [f"    server: {self.url}"]
        if self.tls is not None:
            ca = base64.b64encode(self.tls.ca_pem()).decode()
            cluster.append(f"    certificate-authority-data: {ca}")
        token = token or self.token
        user_block = f"  user:\n    token: {token}" if token else "  user: {}"
        text = "\n".join(
            [
                "apiVersion: v1",
                "kind: Config",
                "clusters:",
                f"- name: {cluster_name}",
                "  cluster:",
                *cluster,
                "users:",
                f"- name: {cluster_name}-{user}",
                user_block,
                "contexts:",
                f"- name: {cluster_name}",
                "  context:",
                f"    cluster: {cluster_name}",
                f"    user: {cluster_name}-{user}",
                "    namespace: default",
                f"current-context: {cluster_name}",
                "",
            ]
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    # ---- internals used by the handler

    def _log_request(self, method: str, path: str, query: str, status: int, user_agent: str) -> None:
        entry = {
            "t": time.time(),
            "method": method,
            "path": path,
            "query": query,
            "status": status,
            "user_agent": user_agent,
        }
        with self._log_lock:
            self.request_log.append(entry)

    def _track(self, conn: Any, *, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
