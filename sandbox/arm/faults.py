"""Faults injected into the simulated ARM: failed requests and operations, ambiguous writes."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


# Operation names used by the request log and FaultInjector.fail_next.
REQUEST_OPERATIONS = frozenset(
    {
        "get_scale_set",
        "list_scale_sets",
        "update_model",
        "get_scale_set_instance_view",
        "reimage",
        "reimage_all",
        "manualupgrade",
        "delete_instances",
        "list_vms",
        "get_vm",
        "get_instance_view",
        "delete_vm",
        "poll",
        "msi_token",
        # Compute Gallery
        "get_gallery",
        "list_gallery_images",
        "get_gallery_image",
        "put_gallery_image",
        "list_gallery_image_versions",
        "get_gallery_image_version",
        "put_gallery_image_version",
        # Update Manager
        "list_maintenance_configurations",
        "get_maintenance_configuration",
        "put_maintenance_configuration",
        "get_maintenance_run",
        "cancel_maintenance_run",
    }
)
# Writes that start a long-running operation: what accept_then_fail / accept_then_drop /
# hold_next can target.
ACCEPTING_OPERATIONS = frozenset(
    {"reimage", "reimage_all", "manualupgrade", "delete_instances", "delete_vm", "update_model"}
)
# Kinds of long-running operation FaultInjector.fail_lro can target.
LRO_KINDS = frozenset({"reimage", "reimage_all", "manualupgrade", "update_model", "delete", "image_version"})


@dataclass
class _RequestFault:
    operation: str
    remaining: int
    status: int
    code: str
    retry_after: int | None


@dataclass
class _LroFault:
    operation: str
    remaining: int
    code: str


@dataclass
class _AcceptedFault:
    """What the client gets for a write ARM did accept: an error status, or no answer."""

    operation: str
    remaining: int
    status: int | None  # None: no answer at all
    code: str
    drop_after: float


@dataclass
class _HoldFault:
    operation: str
    remaining: int
    max_hold: float


class HeldRequest:
    """A write held before ARM saw it (``FaultInjector.hold_next``).

    It is accepted when released (or after ``max_hold`` seconds); if its client goes away
    first (the process was killed, or it timed out and closed the connection), it is
    dropped unseen, exactly as if it had never been sent. ``outcome`` says which.
    """

    def __init__(self, operation: str, client: tuple[str, int], server_port: int) -> None:
        self.operation = operation
        self.client = client
        self.server_port = server_port
        self.held_at = time.time()
        self.outcome = ""  # "" while held; then "accepted" or "abandoned"
        self._released = threading.Event()
        self._done = threading.Event()

    def release(self) -> None:
        """Let the request through to ARM."""
        self._released.set()

    def wait(self, timeout: float) -> str:
        """Wait until the request is accepted or abandoned; returns the outcome ("" if neither yet)."""
        self._done.wait(timeout)
        return self.outcome

    def client_pid(self, candidates: Iterable[int] | None = None) -> int | None:
        """The process holding the client end of the connection (Linux /proc), if any.

        ``candidates`` limits the search to those pids (the runners, say)."""
        return _socket_owner(self.client[1], self.server_port, candidates)

    def _finish(self, outcome: str) -> None:
        self.outcome = outcome
        self._done.set()


def _socket_owner(local_port: int, remote_port: int, candidates: Iterable[int] | None) -> int | None:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    local, remote, inode = parts[1], parts[2], parts[9]
                    if int(local.rsplit(":", 1)[1], 16) == local_port and (
                        int(remote.rsplit(":", 1)[1], 16) == remote_port
                    ):
                        inodes.add(f"socket:[{inode}]")
        except OSError:
            continue
    if not inodes:
        return None
    pids = (
        list(candidates) if candidates is not None else [int(d) for d in os.listdir("/proc") if d.isdigit()]
    )
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None


class FaultInjector:
    """Makes the next requests or LROs of a kind fail as Azure would.

    Besides failing requests (``fail_next``) and operations (``fail_lro``), it makes
    writes ambiguous, the cases a client cannot tell from its answer whether ARM acted:

    * ``accept_then_fail``: ARM accepts the write (the operation starts, instances are
      reimaged) but the client gets an error status (500 by default; 408, 409, 503 ...);
    * ``accept_then_drop``: ARM accepts the write and never answers: the connection is
      held for ``after`` seconds (or until the client gives up) and then closed without
      a response, which the client sees as a read timeout or a dropped connection;
    * ``hold_next``: the write is held *before* ARM sees it, until ``HeldRequest.release``
      or ``max_hold`` seconds; ``wait_held`` hands the test the held request, so that it
      can kill the client process meanwhile. A held write whose client went away is
      never accepted, as if the process had died just before sending it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._request_faults: list[_RequestFault] = []
        self._lro_faults: list[_LroFault] = []
        self._accepted_faults: list[_AcceptedFault] = []
        self._hold_faults: list[_HoldFault] = []
        self._held: list[HeldRequest] = []
        self._held_cond = threading.Condition(self._lock)

    def fail_next(
        self,
        operation: str,
        count: int = 1,
        *,
        status: int = 500,
        code: str = "InternalServerError",
        retry_after: int | None = None,
    ) -> None:
        if operation != "any" and operation not in REQUEST_OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; known: any, {sorted(REQUEST_OPERATIONS)}")
        with self._lock:
            self._request_faults.append(_RequestFault(operation, count, status, code, retry_after))

    def fail_lro(self, operation: str, count: int = 1, *, code: str = "InternalExecutionError") -> None:
        # "delete_instances"/"delete_vm" are accepted as aliases so callers can reuse request names.
        kind = "delete" if operation in {"delete_instances", "delete_vm"} else operation
        if kind != "any" and kind not in LRO_KINDS:
            raise ValueError(f"unknown LRO kind {operation!r}; known: any, {sorted(LRO_KINDS)}")
        with self._lock:
            self._lro_faults.append(_LroFault(kind, count, code))

    def accept_then_fail(
        self, operation: str, count: int = 1, *, status: int = 500, code: str = "InternalServerError"
    ) -> None:
        """The next ``count`` accepted writes of ``operation`` are answered ``status``."""
        self._check_accepting(operation)
        with self._lock:
            self._accepted_faults.append(_AcceptedFault(operation, count, status, code, 0.0))

    def accept_then_drop(self, operation: str, count: int = 1, *, after: float = 3.0) -> None:
        """The next ``count`` accepted writes of ``operation`` get no answer: the
        connection is closed after ``after`` seconds (sooner if the client gives up)."""
        self._check_accepting(operation)
        with self._lock:
            self._accepted_faults.append(_AcceptedFault(operation, count, None, "", after))

    def hold_next(self, operation: str, count: int = 1, *, max_hold: float = 60.0) -> None:
        """Hold the next ``count`` writes of ``operation`` before ARM sees them."""
        self._check_accepting(operation)
        with self._lock:
            self._hold_faults.append(_HoldFault(operation, count, max_hold))

    def wait_held(self, timeout: float = 30.0) -> HeldRequest:
        """The oldest request being held now (waiting up to ``timeout`` for one)."""
        deadline = time.monotonic() + timeout
        with self._held_cond:
            while True:
                waiting = [h for h in self._held if not h.outcome]
                if waiting:
                    return waiting[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no request was held within {timeout}s")
                self._held_cond.wait(left)

    @property
    def held(self) -> list[HeldRequest]:
        """Every request held so far, in order, with its outcome."""
        with self._lock:
            return list(self._held)

    def clear(self) -> None:
        with self._lock:
            self._request_faults.clear()
            self._lro_faults.clear()
            self._accepted_faults.clear()
            self._hold_faults.clear()
            for held in self._held:
                held.release()

    @staticmethod
    def _check_accepting(operation: str) -> None:
        if operation != "any" and operation not in ACCEPTING_OPERATIONS:
            raise ValueError(
                f"not a write that starts an operation: {operation!r}; known: any, "
                f"{sorted(ACCEPTING_OPERATIONS)}"
            )

    def _take_accepted_fault(self, operation: str) -> _AcceptedFault | None:
        return self._take(self._accepted_faults, operation)

    def _take_hold(self, operation: str) -> _HoldFault | None:
        return self._take(self._hold_faults, operation)

    def _take(self, faults: list[Any], operation: str, *, any_matches: bool = True) -> Any:
        """The first fault armed for ``operation`` (or for "any", if ``any_matches``), one
        of its count used up; None if there is none."""
        with self._lock:
            for fault in faults:
                if fault.operation == operation or (any_matches and fault.operation == "any"):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        faults.remove(fault)
                    return fault
        return None

    def _hold(
        self,
        fault: _HoldFault,
        operation: str,
        client: tuple[str, int],
        server_port: int,
        client_gone: Callable[[], bool],
    ) -> bool:
        """Hold one request; True if it may go on to ARM, False if its client went away."""
        held = HeldRequest(operation, client, server_port)
        with self._held_cond:
            self._held.append(held)
            self._held_cond.notify_all()
        deadline = time.monotonic() + fault.max_hold
        while not held._released.wait(0.05):
            if client_gone():
                logger.info("sandbox ARM: held %s from %s abandoned by its client", operation, client)
                held._finish("abandoned")
                return False
            if time.monotonic() >= deadline:
                break
        held._finish("accepted")
        return True

    def _take_request_fault(self, operation: str) -> _RequestFault | None:
        # "any" never matches the identity endpoint: breaking token acquisition
        # silently would make every other fault look like an auth problem.
        fault: _RequestFault | None = self._take(
            self._request_faults, operation, any_matches=operation != "msi_token"
        )
        return fault

    def _take_lro_fault(self, kind: str) -> str | None:
        fault = self._take(self._lro_faults, kind)
        return None if fault is None else str(fault.code)
