"""Azurite (the Azure Storage emulator) as a child process on free ports.

Tests and the sandbox need real queue, blob-lease and table semantics (visibility
timeouts, dequeue counts, pop receipts, lease conflicts, ETags), which is what Azurite
gives. Each instance picks its own three ports so that several test sessions can run
side by side, and it is started with ``--skipApiVersionCheck`` (current SDKs send API
versions newer than Azurite knows) and ``--disableTelemetry`` (there is no internet
here, and telemetry would otherwise be attempted).
"""

from __future__ import annotations

import atexit
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"

ACCOUNT_NAME = "devstoreaccount1"
# Azurite's published development key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RuntimeError):
    pass


# Azurite's access log (morgan's "common" format): one line per request it answered.
_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) ')


@dataclass(frozen=True)
class StorageRequest:
    """One request Azurite answered: one Storage transaction on the bill."""

    method: str
    target: str  # path and query, as sent
    status: int

    @property
    def service(self) -> str:
        """queue, table or blob, told apart by the shape of the request, since the three
        services share one log and the line carries no port."""
        path, _, query = self.target.partition("?")
        segments = [s for s in path.split("/") if s][1:]  # after the account name
        if path.endswith("/messages") or "/messages/" in path or "comp=metadata" in query:
            return "queue"
        if not segments or segments[0] in ("Tables", "$batch") or "(" in path:
            return "table"
        if "restype=container" in query or "comp=lease" in query or len(segments) >= 2:
            return "blob"
        # One segment: a queue created (PUT) or an entity inserted into a table (POST).
        return "queue" if self.method in ("PUT", "DELETE") else "table"


def _free_port(host: str) -> int:
    # The port is released before Azurite binds it; a collision is possible but rare,
    # and start() then reports Azurite's own error rather than hanging.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Azurite:
    """One Azurite process serving blob, queue and table endpoints from ``data_dir``."""

    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", access_log: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        # Every request as a line of ``log_path`` (what a Storage bill counts as a
        # transaction), read back by ``storage_requests``. Off by default: it costs
        # Azurite a write per request.
        self.access_log = access_log
        self.blob_port = 0
        self.queue_port = 0
        self.table_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "azurite.log"

    def _endpoint(self, port: int) -> str:
        return f"http://{self.host}:{port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return self.connection_string_with()

    def connection_string_with(self, *, table_endpoint: str | None = None) -> str:
        """The connection string, with the table endpoint replaced when given (a proxy
        in front of Azurite's, see sandbox/tableproxy.py)."""
        if not self._proc:
            raise AzuriteError("Azurite is not running: call start() first")
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self._endpoint(self.blob_port)};QueueEndpoint={self._endpoint(self.queue_port)};"
            f"TableEndpoint={table_endpoint or self._endpoint(self.table_port)};"
        )

    def start(self, timeout: float = 20.0) -> None:
        if self._proc:
            return
        if not AZURITE_BIN.exists():
            raise AzuriteError(f"{AZURITE_BIN} not found: run `make install` (npm ci) in {REPO_ROOT}")
        if not shutil.which("node"):
            raise AzuriteError("node is not on PATH; Azurite needs Node.js")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.blob_port, self.queue_port, self.table_port = (_free_port(self.host) for _ in range(3))
        cmd = [
            str(AZURITE_BIN),
            *([] if self.access_log else ["--silent"]),
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--location",
            str(self.data_dir),
            "--blobHost",
            self.host,
            "--blobPort",
            str(self.blob_port),
            "--queueHost",
            self.host,
            "--queuePort",
            str(self.queue_port),
            "--tableHost",
            self.host,
            "--tablePort",
            str(self.table_port),
        ]
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        # A caller that dies without stop() must not leave Azurite holding its ports.
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        ports = (self.blob_port, self.queue_port, self.table_port)
        while True:
            code = self._proc.poll()
            if code is not None:
                self._cleanup()
                raise AzuriteError(f"Azurite exited with code {code} during start-up:\n{self._log_tail()}")
            if all(_accepts(self.host, port) for port in ports):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise AzuriteError(
                    f"Azurite did not listen on {ports} within {timeout} s:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        proc = self._proc
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._cleanup()

    def _cleanup(self) -> None:
        atexit.unregister(self.stop)
        self._proc = None
        if self._log:
            self._log.close()
            self._log = None

    def log_offset(self) -> int:
        """Where the log ends now: ``storage_requests(since=...)`` reads what comes after."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def storage_requests(self, *, since: int = 0, until: int | None = None) -> list[StorageRequest]:
        """The requests the access log recorded between two ``log_offset`` marks."""
        if not self.access_log:
            raise AzuriteError("Azurite was started without access_log=True: it logs no requests")
        with self.log_path.open("rb") as f:
            f.seek(since)
            data = f.read() if until is None else f.read(max(0, until - since))
        found = []
        for line in data.decode("utf-8", errors="replace").splitlines():
            m = _ACCESS_LINE.search(line)
            if m:
                found.append(StorageRequest(m["method"], m["target"], int(m["status"])))
        return found

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> Azurite:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
