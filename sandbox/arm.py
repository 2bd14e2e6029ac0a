"""A simulated Azure Resource Manager for Microsoft.Compute virtual machine scale sets,
plus the few other resource types the patcher's triggers read: Compute Gallery image
definitions and versions, Update Manager maintenance configurations and their runs
(``applyUpdates``), and Automation software update configurations and their runs.

Why it exists: the app talks to Azure only through the unmodified
``azure.mgmt.compute.ComputeManagementClient`` and ``DefaultAzureCredential``. To test
it without a subscription, this module serves the same REST surface over HTTPS (with the
sandbox CA from :mod:`sandbox.tls`), so the SDK, azure-core's ARM long-running-operation
poller, its retry policy and azure-identity's App Service managed-identity client all run
exactly as they would in Azure Functions. Nothing in the app needs a "sandbox" branch:
only ``base_url`` and the ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``/``REQUESTS_CA_BUNDLE``
settings differ.

Design:

* :class:`ComputeState` owns the scale sets, their VM instances and the long-running
  operations, all behind one lock. Time comes from the shared :class:`sandbox.world.World`:
  operation durations and the write-throttling bucket are given in cloud seconds and scaled
  by its clock, and completions are timers on its scheduler. Every state change is written
  to the world's history and announced to listeners *after* the lock is released, so a
  listener (e.g. the simulated Kubernetes API turning a node NotReady) may call back in.
* :class:`ArmServer` is the HTTP face: routing, bearer-token checks, ``api-version``
  validation, fault injection, ARM headers and a request log. It also serves the App
  Service managed-identity token endpoint at ``/msi/token``, and only tokens it issued
  are accepted by the ARM routes.
* :class:`FaultInjector` lets tests make the next N requests (or the next N LROs) of a
  kind fail the way Azure fails, and make writes ambiguous: accepted but answered with an
  error, accepted but never answered, or held before they are accepted (so that a test
  can kill the client meanwhile: a held write whose client went away is never accepted).

Fidelity choices (sources: Azure REST API reference, azure-docs, recorded responses):

* LROs answer 202 with ``Azure-AsyncOperation`` (``.../locations/LOC/operations/ID``),
  ``Location`` (the same URL with ``monitor=true``, as Compute does; ``operationResults/ID``
  is accepted too) and an integer ``Retry-After`` on the initial response only. Status
  polls carry no ``Retry-After`` (so the client's ``polling_interval`` applies after the
  first wait, as with Compute). The Location URL answers 202 while running and 200 with
  an empty body when done.
* ``reimage`` without ``exactVersion`` restores the image the instance already runs (REST
  reference: "If exact version is not provided, the OS disk is reimaged to the existing
  version of OS Disk"); only ``manualupgrade`` applies the scale set model, which makes
  ``latestModelApplied`` true. ``manualupgrade`` skips instances already on the latest
  model.
* A reimage, and an upgrade that changes the image, replaces the OS disk: the instance
  gets a new managed disk from the image (REST reference, Virtual Machines - Reimage:
  "If deleteOption is detach, the old OS disk will be preserved after reimage. If
  deleteOption is delete, the old OS disk will be deleted after reimage"), named as
  Compute names implicit OS disks, ``<vm>_OsDisk_1_<32 hex>``, with a fresh guid. So
  ``properties.storageProfile.osDisk.name`` and ``.managedDisk.id`` change (in GET vm and
  in the list) the moment the operation starts, which is also when the node is wiped;
  ``deleteOption`` is ``Delete``. ``vmId`` does not change. History: ``reimage_started``
  carries the new ``os_disk``.
* A reimage/manualupgrade/delete of an instance that another operation is still working
  on is accepted and *preempts* that operation: the older one ends ``Canceled`` with
  ``OperationPreempted`` ("Operation execution has been preempted by a more recent
  operation."), as Compute does. Writes to an instance being deleted answer 409
  ``OperationNotAllowed`` ("... since it is marked for deletion ...").
* Throttling: one token bucket per scale set for all writes to it or its VMs. An empty
  bucket answers 429 with ``Retry-After`` (sandbox seconds, rounded up, at least 1) and
  the Compute body ``OperationNotAllowed`` / detail ``TooManyRequests``. Responses carry
  ``x-ms-ratelimit-remaining-resource: Microsoft.Compute/<policy>;<count>``; read
  policies are reported but not enforced.
* Unknown instance ids in batch writes: 400 ``InvalidParameter`` "The provided instanceId
  N is not an active Virtual Machine Scale Set VM instanceId." (target ``instanceIds``).
* Flexible scale sets (``orchestrationMode: Flexible``; orchestration-modes-api-comparison.md):
  each instance is a ``Microsoft.Compute/virtualMachines`` resource named ``{scaleSet}_{8 hex}``
  with ``virtualMachineScaleSet.id`` and no ``latestModelApplied``, served by the VM API (list
  with ``$filter='virtualMachineScaleSet/id' eq 'ID'``, get, instance view, reimage LRO);
  ``manualupgrade`` takes VM names. The VMSS-VM routes, batch reimage and the scale set's
  instance view answer 400 ``BadRequest`` "Operation 'VirtualMachineScaleSets.…' is not
  allowed on Virtual Machine Scale Set '…'." (the message Compute gives the other way round).
* ``upgradePolicy`` (virtual-machine-scale-sets-upgrade-policy.md) is stored and validated
  with the model (mode Automatic/Manual/Rolling; ``maxBatchInstancePercent`` 5-100;
  ``pauseTimeBetweenBatches`` ISO 8601). After a model write that changes the image, Compute
  upgrades the instances itself: Automatic all at once, Rolling one batch at a time with the
  pause between batches, a failed batch stopping the upgrade; nothing is cordoned or drained.

Compute Gallery (REST examples of api-version 2022-01-03 and later; the SDK sends 2026-03-03):

* ``PUT .../galleries/G/images/I/versions/V`` is an LRO: 201 with ``provisioningState``
  ``Creating`` for a new version (200 ``Updating`` for an existing one) and an
  ``Azure-AsyncOperation`` URL served by the same Compute operations endpoint. The version
  stays ``Creating`` for the replication time, then becomes ``Succeeded`` (or ``Failed``
  with ``FaultInjector.fail_lro("image_version")``). ``$expand=ReplicationStatus`` adds
  ``replicationStatus`` (``aggregatedState`` ``InProgress``/``Completed``/``Failed`` and a
  per-region summary with ``progress``). Version names must be ``Major.Minor.Patch``.
  A completed version write is announced to listeners as ``resource_write`` (the event
  ARM's resource-group topic would publish as ``Microsoft.Resources.ResourceWriteSuccess``
  or ``...Failure``), with the write's ``x-ms-correlation-request-id``.
* Image definitions (``osType``, ``osState`` ``Generalized``, ``hyperVGeneration``,
  ``identifier``) are created at once (201 ``Succeeded`` plus a finished async operation).
* Scale-set models are *not* checked against the gallery: an ``imageReference.id`` may name
  a version the sandbox does not know, as the existing tests and the demo rely on.

Update Manager (``Microsoft.Maintenance``, spec 2023-09-01-preview):

* ``maintenanceConfigurations/{name}`` GET/PUT (``maintenanceScope``, ``maintenanceWindow``
  ``{startDateTime "YYYY-MM-DD hh:mm", duration "HH:mm", timeZone, recurEvery}``,
  ``extensionProperties.InGuestPatchMode``, ``installPatches``).
* A scheduled run is ``{configId}/providers/microsoft.maintenance/applyupdates/{yyyyMMddHHmmss}``
  (the ``correlationId`` and ``id`` of its pre/post events). GET answers ``status``
  ``Pending`` before the window, ``InProgress`` in it, ``Completed`` after it, ``Cancelled``
  once cancelled, judged by the wall clock against the absolute start/end given to
  :meth:`ComputeState.schedule_maintenance_run` (not scaled). The body id is lower-case,
  as in the REST examples.
* Cancel: ``PUT {correlationId}?api-version=2023-09-01-preview`` with
  ``{"properties": {"status": "Cancel"}}`` answers **202** with ``properties.status``
  ``"Cancel"`` (REST example ApplyUpdates_CreateOrUpdate_CancelMaintenance); later GETs say
  ``Cancelled``; a repeated cancel answers 202 again. At or after the cancellation cut-off
  (default start - 10 minutes, the documented "T-10") it answers 409 ``Conflict`` (the
  spec lists 409; the exact error code Azure uses is not documented, this one is the
  sandbox's). Older api-versions cannot cancel (400). History: ``maintenance_cancelled``.

Automation (``Microsoft.Automation``, JSON shapes of the REST examples, as
azure-mgmt-automation 2.0.0 deserialises them; it sends api-version 2024-10-23):

* ``softwareUpdateConfigurations`` GET/list (list items are the collection-item shape with
  ``frequency``/``startTime``/``nextRun`` at the top of ``properties``; ``$filter``
  ``properties/updateConfiguration/azureVirtualMachines/any(m: m eq 'ID')``) and
  ``softwareUpdateConfigurationRuns`` GET/list (``$filter`` on
  ``properties/softwareUpdateConfiguration/name``, ``properties/status``, ``properties/osType``).
  A run is ``InProgress`` for ``ComputeDurations.software_update_run``, then ``Succeeded``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import secrets
import select
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from sandbox.tls import SandboxTLS
from sandbox.world import World

logger = logging.getLogger(__name__)

__all__ = [
    "CANCELLATION_CUTOFF",
    "IMAGE_VERSION_WRITE",
    "ArmServer",
    "ComputeDurations",
    "ComputeState",
    "FaultInjector",
    "HeldRequest",
    "WriteLimit",
]

Listener = Callable[[str, dict[str, Any]], None]

_ARM_RESOURCES = {"https://management.azure.com", "https://management.core.windows.net"}
_VM_SIZE = "Standard_D4s_v5"
_TOKEN_LIFETIME_S = 24 * 3600

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
        # Automation
        "get_automation_account",
        "list_software_update_configurations",
        "get_software_update_configuration",
        "list_software_update_configuration_runs",
        "get_software_update_configuration_run",
    }
)
# Writes that start a long-running operation: what accept_then_fail / accept_then_drop /
# hold_next can target.
ACCEPTING_OPERATIONS = frozenset(
    {"reimage", "reimage_all", "manualupgrade", "delete_instances", "delete_vm", "update_model"}
)
# Kinds of long-running operation FaultInjector.fail_lro can target.
LRO_KINDS = frozenset({"reimage", "reimage_all", "manualupgrade", "update_model", "delete", "image_version"})

IMAGE_VERSION_WRITE = "Microsoft.Compute/galleries/images/versions/write"
CANCEL_API_VERSION = "2023-09-01-preview"
# Update Manager: "the latest time to call cancel is T-10 minutes" (pre-post-scripts-overview.md).
CANCELLATION_CUTOFF = timedelta(minutes=10)

_KNOWN_ERROR_MESSAGES = {
    "InternalExecutionError": "An internal execution error occurred. Please retry later.",
    "InternalServerError": "Encountered internal server error. Diagnostic information has been collected.",
    "ServiceUnavailable": "The service is currently unavailable. Please retry later.",
    "AllocationFailed": "Allocation failed. We do not have sufficient capacity for the requested VM size "
    "in this region.",
}


_UPGRADE_MODES = ("Automatic", "Manual", "Rolling")
# Operations that bring an instance to the scale set's model (the others restore its image).
_MODEL_UPGRADES = frozenset({"manualupgrade", "automatic_upgrade", "rolling_upgrade"})
# Compute's defaults for a Rolling policy's fields (RollingUpgradePolicy, REST reference).
_ROLLING_DEFAULTS: dict[str, Any] = {
    "maxBatchInstancePercent": 20,
    "maxUnhealthyInstancePercent": 20,
    "maxUnhealthyUpgradedInstancePercent": 20,
    "pauseTimeBetweenBatches": "PT0S",
}
_DURATION = re.compile(r"PT(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?", re.IGNORECASE)


def _duration_seconds(text: str) -> float:
    m = _DURATION.fullmatch(text or "")
    if m is None or text.upper() == "PT":
        raise ValueError(text)
    return int(m["h"] or 0) * 3600 + int(m["m"] or 0) * 60 + float(m["s"] or 0)


def _upgrade_policy(raw: Any, *, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ``upgradePolicy`` as Compute stores it (a PATCH merges into ``base``), or the 400
    Compute answers for a bad one."""
    if not isinstance(raw, dict):
        raise _ApiError(
            400,
            "InvalidParameter",
            "The value of parameter upgradePolicy is invalid.",
            target="upgradePolicy",
        )
    policy: dict[str, Any] = deepcopy(base) if base else {"mode": "Manual"}
    mode = raw.get("mode", policy.get("mode"))
    if mode not in _UPGRADE_MODES:
        raise _ApiError(
            400,
            "InvalidParameter",
            f"The value {mode!r} of parameter upgradePolicy.mode is invalid; allowed values are "
            f"{', '.join(_UPGRADE_MODES)}.",
            target="upgradePolicy.mode",
        )
    policy["mode"] = mode
    rolling = {**_ROLLING_DEFAULTS, **(policy.get("rollingUpgradePolicy") or {})}
    rolling.update({k: v for k, v in (raw.get("rollingUpgradePolicy") or {}).items() if v is not None})
    percent = rolling["maxBatchInstancePercent"]
    if not isinstance(percent, int) or not 5 <= percent <= 100:
        raise _ApiError(
            400,
            "InvalidParameter",
            "The value of parameter rollingUpgradePolicy.maxBatchInstancePercent must be between 5 and 100.",
            target="rollingUpgradePolicy.maxBatchInstancePercent",
        )
    try:
        _duration_seconds(str(rolling["pauseTimeBetweenBatches"]))
    except ValueError:
        raise _ApiError(
            400,
            "InvalidParameter",
            "The value of parameter rollingUpgradePolicy.pauseTimeBetweenBatches is not an ISO 8601 "
            "duration.",
            target="rollingUpgradePolicy.pauseTimeBetweenBatches",
        ) from None
    if mode == "Rolling" or "rollingUpgradePolicy" in policy or raw.get("rollingUpgradePolicy"):
        policy["rollingUpgradePolicy"] = rolling
    return policy


def _iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat()


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def computer_name(prefix: str, instance_id: str | int) -> str:
    """Uniform VMSS hostname: prefix + base-36 instance id, zero-padded to 6 (lower-case)."""
    return f"{prefix}{_base36(int(instance_id)).zfill(6)}"


def arm_error(
    code: str, message: str, *, target: str | None = None, details: list[dict] | None = None
) -> dict:
    err: dict[str, Any] = {"code": code, "message": message}
    if target is not None:
        err["target"] = target
    if details:
        err["details"] = details
    return {"error": err}


# --------------------------------------------------------------------------- public config


@dataclass
class ComputeDurations:
    """How long Compute takes, in cloud seconds; the World's clock scales them."""

    reimage: float = 240.0
    model_update: float = 20.0
    scale: float = 120.0
    delete: float = 60.0
    image_replication: float = 60.0  # a gallery version PUT: Creating -> Succeeded
    software_update_run: float = 300.0  # an Automation software update run: InProgress -> Succeeded


@dataclass
class WriteLimit:
    """Compute's "Update VMSS" per-resource token bucket (capacity / refill per cloud minute)."""

    burst: int = 12
    per_minute: float = 4.0


# --------------------------------------------------------------------------- faults


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


# --------------------------------------------------------------------------- internal state


class _TokenBucket:
    def __init__(self, capacity: float, refill_per_s: float) -> None:
        self.capacity = capacity
        self.rate = refill_per_s
        self.tokens = float(capacity)
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def take_soft(self) -> None:
        """Charge a read: counts down the reported headroom but never refuses."""
        self._refill()
        self.tokens = max(0.0, self.tokens - 1.0)

    def remaining(self) -> int:
        self._refill()
        return math.floor(self.tokens)

    def seconds_until_token(self) -> float:
        self._refill()
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


@dataclass
class _Instance:
    instance_id: str
    computer_name: str
    zone: str | None
    image: dict[str, Any]
    model_version: int
    vm_id: str
    time_created: str
    provisioning_state: str = "Succeeded"
    power_state: str = "running"
    state_time: str = field(default_factory=_iso)
    failure: dict[str, str] | None = None
    op_id: str | None = None
    task_seq: int = 0
    task_kind: str | None = None
    target_image: dict[str, Any] | None = None
    target_model_version: int | None = None
    etag: int = 1
    # The managed OS disk's own guid: a reimage (and an upgrade that changes the image)
    # creates a new disk from the image, so the disk's name and id change with it.
    os_disk_guid: str = field(default_factory=lambda: uuid.uuid4().hex)
    os_disks: int = 1  # how many OS disks this instance has had
    # A Flexible scale set's VM is a Microsoft.Compute/virtualMachines resource of its own,
    # named ``{scaleSet}_{8 hex}``; its instance id *is* that name. Uniform: empty.
    vm_name: str = ""

    def os_disk_name(self, scale_set: str) -> str:
        return f"{self.vm_name or f'{scale_set}_{self.instance_id}'}_OsDisk_1_{self.os_disk_guid}"

    def public_id(self) -> str:
        """The id clients use: the instance id (Uniform) or the VM name (Flexible)."""
        return self.vm_name or self.instance_id


@dataclass
class _ScaleSet:
    resource_group: str
    name: str
    os_type: str
    prefix: str
    zones: list[str] | None
    tags: dict[str, str]
    image: dict[str, Any]
    model_version: int
    unique_id: str
    time_created: str
    bucket: _TokenBucket
    read_buckets: dict[str, _TokenBucket]
    instances: dict[str, _Instance] = field(default_factory=dict)
    next_id: int = 0
    provisioning_state: str = "Succeeded"
    model_ops_in_flight: int = 0
    etag: int = 1
    orchestration_mode: str = "Uniform"
    upgrade_policy: dict[str, Any] = field(default_factory=lambda: {"mode": "Manual"})

    @property
    def key(self) -> tuple[str, str]:
        return (self.resource_group.lower(), self.name.lower())

    @property
    def flexible(self) -> bool:
        return self.orchestration_mode == "Flexible"

    def capacity(self) -> int:
        return sum(1 for i in self.instances.values() if i.provisioning_state != "Deleting")


@dataclass
class _Operation:
    op_id: str
    kind: str
    key: tuple[str, str]
    start_time: str
    fail_code: str | None
    status: str = "InProgress"
    end_time: str | None = None
    error: dict[str, str] | None = None
    pending: set[str] = field(default_factory=set)
    model_pending: bool = False

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"startTime": self.start_time, "status": self.status, "name": self.op_id}
        if self.end_time:
            body["endTime"] = self.end_time
        if self.error:
            body["error"] = dict(self.error)
        return body


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    resource_group: str | None = None
    scale_set: str | None = None
    # No answer: hold the connection this long (or until the client leaves), then close it.
    drop_after: float | None = None
    fault: str | None = None  # the injected fault that shaped this answer, for the request log


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **kw: Any) -> None:
        super().__init__(message)
        self.reply = _Reply(status, arm_error(code, message, **kw))


@dataclass
class _Ctx:
    """What a handler needs from one HTTP request."""

    match: dict[str, str]
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    base_url: str
    api_version: str


def _resource_not_found(type_and_name: str, resource_group: str) -> _ApiError:
    return _ApiError(
        404,
        "ResourceNotFound",
        f"The Resource '{type_and_name}' under resource group '{resource_group}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def _parent_not_found(name: str) -> _ApiError:
    return _ApiError(
        404,
        "ParentResourceNotFound",
        f"Can not perform requested operation on nested resource. Parent resource '{name}' not found.",
    )


def _automation_error(status: int, code: str, message: str) -> _ApiError:
    """Automation answers its own errors as a flat ``{"code", "message"}`` object."""
    err = _ApiError(status, code, message)
    err.reply.body = {"code": code, "message": message}
    return err


def _require_body(ctx: _Ctx) -> dict[str, Any]:
    if not isinstance(ctx.body, dict):
        raise _ApiError(
            400, "InvalidRequestContent", "The request content was invalid and could not be deserialized."
        )
    return ctx.body


def _get_ci(obj: dict[str, Any], key: str) -> Any:
    """A JSON member looked up case-insensitively (the REST example sends ``"Status": 6``)."""
    for k, v in obj.items():
        if k.lower() == key.lower():
            return v
    return None


def _int_query(ctx: _Ctx, name: str) -> int | None:
    raw = ctx.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise _ApiError(400, "BadRequest", f"The value of parameter {name} is invalid.", target=name)
    return value


def _os_name(os_type: str) -> str:
    os_norm = {"linux": "Linux", "windows": "Windows"}.get(os_type.lower())
    if os_norm is None:
        raise ValueError(f"os_type must be Linux or Windows, got {os_type!r}")
    return os_norm


_REGION_NAMES = {
    "westeurope": "West Europe",
    "northeurope": "North Europe",
    "swedencentral": "Sweden Central",
    "germanywestcentral": "Germany West Central",
    "uksouth": "UK South",
    "eastus": "East US",
    "eastus2": "East US 2",
    "westus": "West US",
    "westus2": "West US 2",
    "westus3": "West US 3",
    "centralus": "Central US",
}


def _region_display_name(name: str) -> str:
    """Compute reports gallery target regions by display name ("West Europe")."""
    return _REGION_NAMES.get(name.replace(" ", "").lower(), name)


_VERSION_NAME = re.compile(r"(\d{1,10})\.(\d{1,10})\.(\d{1,10})")


def _version_key(v: Any) -> tuple[int, ...]:
    return tuple(int(p) for p in v.name.split("."))


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _zulu(value: datetime) -> str:
    return _as_utc(value).isoformat().replace("+00:00", "Z")


def _api_version_at_least(api_version: str, minimum: str) -> bool:
    """Compare ``YYYY-MM-DD[-preview]`` api-versions by date (a preview ranks below its GA)."""

    def key(v: str) -> tuple[str, int]:
        return v[:10], 0 if v[10:].lower().startswith("-preview") else 1

    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", api_version, re.IGNORECASE):
        return False
    return key(api_version) >= key(minimum)


_MAINTENANCE_SCOPES = frozenset(
    {"Host", "Resource", "OSImage", "Extension", "InGuestPatch", "SQLDB", "SQLManagedInstance"}
)
_CANCEL_ENUM = 6  # UpdateStatus.Cancel as a number, as the REST example sends it
_MC_ID = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)"
    r"/providers/microsoft\.maintenance/maintenanceconfigurations/(?P<name>[^/]+)",
    re.IGNORECASE,
)
_RUN_ID = re.compile(
    r"(?P<config>.+)/providers/microsoft\.maintenance/applyupdates/(?P<run>[^/]+)", re.IGNORECASE
)
_AA_ID = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)"
    r"/providers/microsoft\.automation/automationaccounts/(?P<name>[^/]+)",
    re.IGNORECASE,
)
_VM_FILTER = re.compile(
    r"\s*properties/updateConfiguration/azureVirtualMachines/any\(\s*(?P<var>\w+)\s*:\s*(?P=var)"
    r"\s+eq\s+'(?P<vm>[^']*)'\s*\)\s*",
    re.IGNORECASE,
)
_RUN_FILTER = re.compile(r"\s*(?P<field>properties/[A-Za-z/]+)\s+eq\s+'(?P<value>[^']*)'\s*", re.IGNORECASE)
_RUN_FILTER_FIELDS = {
    "properties/softwareupdateconfiguration/name": "config",
    "properties/status": "status",
    "properties/ostype": "os",
}


@dataclass
class _ImageVersion:
    name: str
    location: str
    tags: dict[str, str]
    target_regions: list[dict[str, Any]]
    storage_profile: dict[str, Any]
    published_date: str
    exclude_from_latest: bool = False
    end_of_life_date: str | None = None
    provisioning_state: str = "Creating"
    failure: dict[str, str] | None = None
    op_id: str | None = None
    task_seq: int = 0
    replicating_since: float = 0.0  # monotonic
    replicating_for: float = 0.0  # sandbox seconds


@dataclass
class _GalleryImage:
    name: str
    location: str
    os_type: str
    os_state: str
    hyper_v_generation: str
    identifier: dict[str, str]
    tags: dict[str, str]
    architecture: str = "x64"
    description: str | None = None
    versions: dict[str, _ImageVersion] = field(default_factory=dict)


@dataclass
class _Gallery:
    resource_group: str
    name: str
    location: str
    images: dict[str, _GalleryImage] = field(default_factory=dict)


@dataclass
class _MaintenanceRun:
    name: str  # yyyyMMddHHmmss of the window start
    correlation_id: str
    start: datetime
    end: datetime
    cutoff: datetime
    scheduled_at: datetime
    cancelled_at: datetime | None = None


@dataclass
class _MaintenanceConfig:
    resource_group: str
    name: str
    location: str
    tags: dict[str, str]
    properties: dict[str, Any]
    runs: dict[str, _MaintenanceRun] = field(default_factory=dict)


@dataclass
class _UpdateConfig:
    name: str
    os: str  # Linux | Windows
    vm_ids: list[str]
    duration: str
    created: str
    start_time: str
    pre_task: str | None = None
    post_task: str | None = None


@dataclass
class _UpdateRun:
    run_id: str
    config: str
    os: str
    duration: str
    computer_count: int
    start_time: str
    pre_task: str | None
    post_task: str | None
    status: str = "InProgress"
    end_time: str | None = None
    modified: str = field(default_factory=_iso)
    pre_job: str = field(default_factory=lambda: str(uuid.uuid4()))
    post_job: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class _AutomationAccount:
    resource_group: str
    name: str
    location: str
    created: str
    configs: dict[str, _UpdateConfig] = field(default_factory=dict)
    runs: dict[str, _UpdateRun] = field(default_factory=dict)


# --------------------------------------------------------------------------- compute state


class ComputeState:
    """Scale sets, their instances and LROs; the single source of truth behind ArmServer."""

    def __init__(
        self,
        world: World,
        *,
        subscription_id: str,
        location: str = "westeurope",
        durations: ComputeDurations | None = None,
        write_limit: WriteLimit | None = None,
    ) -> None:
        self.world = world
        self.subscription_id = subscription_id
        self.location = location
        self.durations = durations or ComputeDurations()
        self.write_limit = write_limit or WriteLimit()
        self.faults = FaultInjector()
        self.page_size = 50  # VMs per page of the list API (Compute's own page size varies)
        self._lock = threading.RLock()
        self._scale_sets: dict[tuple[str, str], _ScaleSet] = {}
        self._galleries: dict[tuple[str, str], _Gallery] = {}
        self._maintenance: dict[tuple[str, str], _MaintenanceConfig] = {}
        self._automation: dict[tuple[str, str], _AutomationAccount] = {}
        self._operations: dict[str, _Operation] = {}
        self._listeners: list[Listener] = []
        self._pending_events: list[tuple[str, dict[str, Any]]] = []
        self._tls = threading.local()  # transaction nesting depth, per thread

    # ---------------------------------------------------------------- public API

    def add_scale_set(
        self,
        *,
        resource_group: str,
        name: str,
        os_type: str,
        capacity: int,
        image_reference: dict,
        computer_name_prefix: str,
        zones: list[str] | None = None,
        tags: dict | None = None,
        orchestration_mode: str = "Uniform",
        upgrade_policy: dict[str, Any] | None = None,
    ) -> dict:
        """Create a scale set whose instances already exist and run (no instance_created events)."""
        os_norm = {"linux": "Linux", "windows": "Windows"}.get(os_type.lower())
        if os_norm is None:
            raise ValueError(f"os_type must be Linux or Windows, got {os_type!r}")
        if orchestration_mode not in ("Uniform", "Flexible"):
            raise ValueError(f"orchestration_mode must be Uniform or Flexible, got {orchestration_mode!r}")
        try:
            policy = _upgrade_policy(upgrade_policy or {"mode": "Manual"})
        except _ApiError as exc:
            raise ValueError(str(exc)) from None
        with self._transaction():
            key = (resource_group.lower(), name.lower())
            if key in self._scale_sets:
                raise ValueError(f"scale set {resource_group}/{name} already exists")
            clock = self.world.clock
            ss = _ScaleSet(
                resource_group=resource_group,
                name=name,
                os_type=os_norm,
                prefix=computer_name_prefix,
                zones=list(zones) if zones else None,
                tags=dict(tags or {}),
                image=deepcopy(image_reference),
                model_version=1,
                unique_id=str(uuid.uuid4()),
                time_created=_iso(),
                bucket=_TokenBucket(
                    self.write_limit.burst, self.write_limit.per_minute / clock.seconds(60.0)
                ),
                read_buckets={
                    # Documented Compute read limits (per resource): low-cost 36/12, high-cost 30/10.
                    "GetVMScaleSet3Min": _TokenBucket(36, 12 / clock.seconds(60.0)),
                    "HighCostGetVMScaleSet3Min": _TokenBucket(30, 10 / clock.seconds(60.0)),
                    "GetVMScaleSetVM3Min": _TokenBucket(36, 12 / clock.seconds(60.0)),
                },
                orchestration_mode=orchestration_mode,
                upgrade_policy=policy,
            )
            for _ in range(capacity):
                self._new_instance(ss, state="Succeeded")
            self._scale_sets[key] = ss
            self.world.history.append(
                "scale_set_added",
                resource_group=resource_group,
                scale_set=name,
                os_type=os_norm,
                capacity=capacity,
                image=deepcopy(image_reference),
            )
            return self._scale_set_json(ss)

    def scale_set(self, resource_group: str, name: str) -> dict:
        with self._lock:
            return self._scale_set_json(self._require(resource_group, name))

    def vms(self, resource_group: str, name: str) -> list[dict]:
        with self._lock:
            ss = self._require(resource_group, name)
            render = self._flex_vm_json if ss.flexible else self._vm_json
            return [render(ss, inst, expand=True) for inst in self._sorted(ss)]

    def add_listener(self, fn: Callable[[str, dict], None]) -> None:
        with self._lock:
            self._listeners.append(fn)

    # ---------------------------------------------------------------- locking and events

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Hold the state lock; deliver the events raised inside after releasing it.

        Events are delivered even when the block raises: the state changes they describe
        have already happened.
        """
        self._lock.acquire()
        depth = getattr(self._tls, "depth", 0)
        self._tls.depth = depth + 1
        events: list[tuple[str, dict[str, Any]]] = []
        listeners: list[Listener] = []
        try:
            yield
        finally:
            self._tls.depth = depth
            if depth == 0:
                events, self._pending_events = self._pending_events, []
                listeners = list(self._listeners)
            self._lock.release()
            for kind, payload in events:
                for fn in listeners:
                    try:
                        fn(kind, deepcopy(payload))
                    except Exception:  # one broken listener must not break the others or the server
                        logger.exception("compute listener failed on %s", kind)

    def _emit(
        self, kind: str, ss: _ScaleSet, inst: _Instance | None, image: dict[str, Any], **extra: Any
    ) -> None:
        payload: dict[str, Any] = {
            "resource_group": ss.resource_group,
            "scale_set": ss.name,
            "os_type": ss.os_type,
            "image_reference": deepcopy(image),
        }
        history: dict[str, Any] = {
            "resource_group": ss.resource_group,
            "scale_set": ss.name,
            "image": deepcopy(image),
        }
        if inst is not None:
            payload.update(instance_id=inst.instance_id, computer_name=inst.computer_name, zone=inst.zone)
            payload["vm_name"] = inst.vm_name or f"{ss.name}_{inst.instance_id}"
            history.update(instance_id=inst.instance_id, computer_name=inst.computer_name, zone=inst.zone)
        history.update(extra)
        self.world.history.append(kind, **history)
        self._pending_events.append((kind, payload))

    # ---------------------------------------------------------------- helpers

    def _require(self, resource_group: str, name: str) -> _ScaleSet:
        ss = self._scale_sets.get((resource_group.lower(), name.lower()))
        if ss is None:
            raise KeyError(f"no scale set {resource_group}/{name}")
        return ss

    @staticmethod
    def _sorted(ss: _ScaleSet) -> list[_Instance]:
        return sorted(ss.instances.values(), key=lambda i: int(i.instance_id))

    def _new_instance(self, ss: _ScaleSet, *, state: str) -> _Instance:
        iid = str(ss.next_id)
        ss.next_id += 1
        zone = ss.zones[int(iid) % len(ss.zones)] if ss.zones else None
        inst = _Instance(
            instance_id=iid,
            computer_name=computer_name(ss.prefix, iid),
            zone=zone,
            image=deepcopy(ss.image),
            model_version=ss.model_version,
            vm_id=str(uuid.uuid4()),
            time_created=_iso(),
            provisioning_state=state,
            power_state="running" if state == "Succeeded" else "starting",
            vm_name=f"{ss.name}_{uuid.uuid4().hex[:8]}" if ss.flexible else "",
        )
        ss.instances[iid] = inst
        return inst

    def _resource_id(self, ss: _ScaleSet) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{ss.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachineScaleSets/{ss.name}"
        )

    def _os_config(self, ss: _ScaleSet) -> dict[str, Any]:
        if ss.os_type == "Windows":
            return {
                "windowsConfiguration": {
                    "provisionVMAgent": True,
                    "enableAutomaticUpdates": False,
                    "patchSettings": {"patchMode": "Manual"},
                }
            }
        return {
            "linuxConfiguration": {
                "disablePasswordAuthentication": True,
                "provisionVMAgent": True,
                "patchSettings": {"patchMode": "ImageDefault"},
            }
        }

    def _scale_set_json(self, ss: _ScaleSet) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": ss.name,
            "id": self._resource_id(ss),
            "type": "Microsoft.Compute/virtualMachineScaleSets",
            "location": self.location,
            "tags": dict(ss.tags),
            "etag": f'"{ss.etag}"',
            "sku": {"name": _VM_SIZE, "tier": "Standard", "capacity": ss.capacity()},
            "properties": {
                "singlePlacementGroup": False,
                "orchestrationMode": ss.orchestration_mode,
                "upgradePolicy": deepcopy(ss.upgrade_policy),
                "virtualMachineProfile": {
                    "osProfile": {
                        "computerNamePrefix": ss.prefix,
                        "adminUsername": "azureuser",
                        **self._os_config(ss),
                        "secrets": [],
                        "allowExtensionOperations": True,
                        "requireGuestProvisionSignal": True,
                    },
                    "storageProfile": {
                        "imageReference": deepcopy(ss.image),
                        "osDisk": {
                            "osType": ss.os_type,
                            "createOption": "FromImage",
                            "caching": "ReadOnly",
                            "managedDisk": {"storageAccountType": "Premium_LRS"},
                            "diskSizeGB": 128,
                        },
                    },
                },
                "provisioningState": ss.provisioning_state,
                "overprovision": False,
                "doNotRunExtensionsOnOverprovisionedVMs": False,
                "uniqueId": ss.unique_id,
                "platformFaultDomainCount": 1,
                "timeCreated": ss.time_created,
            },
        }
        if ss.zones:
            body["zones"] = list(ss.zones)
        return body

    def _instance_view(self, ss: _ScaleSet, inst: _Instance) -> dict[str, Any]:
        ps = inst.provisioning_state.lower()
        if ps == "failed":
            failure = inst.failure or {"code": "InternalExecutionError", "message": ""}
            prov: dict[str, Any] = {
                "code": f"ProvisioningState/failed/{failure['code']}",
                "level": "Error",
                "displayStatus": "Provisioning failed",
                "message": failure["message"],
                "time": inst.state_time,
            }
        else:
            display = "Provisioning succeeded" if ps == "succeeded" else inst.provisioning_state
            prov = {"code": f"ProvisioningState/{ps}", "level": "Info", "displayStatus": display}
            if ps == "succeeded":
                prov["time"] = inst.state_time
        power = {
            "code": f"PowerState/{inst.power_state}",
            "level": "Info",
            "displayStatus": f"VM {inst.power_state}",
        }
        linux = ss.os_type == "Linux"
        return {
            "platformUpdateDomain": int(inst.instance_id) % 5,
            "platformFaultDomain": 0,
            "computerName": inst.computer_name,
            "osName": "ubuntu" if linux else "Windows Server 2022 Datacenter",
            "osVersion": "22.04" if linux else "10.0.20348",
            "hyperVGeneration": "V2",
            "statuses": [prov, power],
        }

    def _vm_json(self, ss: _ScaleSet, inst: _Instance, *, expand: bool) -> dict[str, Any]:
        vm_res = f"{self._resource_id(ss)}/virtualMachines/{inst.instance_id}"
        disk_name = inst.os_disk_name(ss.name)
        props: dict[str, Any] = {
            "latestModelApplied": inst.model_version == ss.model_version,
            "modelDefinitionApplied": "VirtualMachineScaleSet",
            "vmId": inst.vm_id,
            "hardwareProfile": {"vmSize": _VM_SIZE},
            "storageProfile": {
                "imageReference": deepcopy(inst.image),
                "osDisk": {
                    "osType": ss.os_type,
                    "name": disk_name,
                    "createOption": "FromImage",
                    "caching": "ReadOnly",
                    "managedDisk": {
                        "storageAccountType": "Premium_LRS",
                        "id": f"/subscriptions/{self.subscription_id}/resourceGroups/{ss.resource_group}"
                        f"/providers/Microsoft.Compute/disks/{disk_name}",
                    },
                    "deleteOption": "Delete",
                    "diskSizeGB": 128,
                },
                "dataDisks": [],
            },
            "osProfile": {
                "computerName": inst.computer_name,
                "adminUsername": "azureuser",
                **self._os_config(ss),
                "secrets": [],
                "allowExtensionOperations": True,
                "requireGuestProvisionSignal": True,
            },
            "provisioningState": inst.provisioning_state,
            "timeCreated": inst.time_created,
        }
        if expand:
            props["instanceView"] = self._instance_view(ss, inst)
        body: dict[str, Any] = {
            "name": f"{ss.name}_{inst.instance_id}",
            "id": vm_res,
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": self.location,
            "tags": dict(ss.tags),
            "instanceId": inst.instance_id,
            "sku": {"name": _VM_SIZE, "tier": "Standard"},
            "etag": f'"{inst.etag}"',
            "properties": props,
        }
        if inst.zone:
            body["zones"] = [inst.zone]
        return body

    # ---------------------------------------------------------------- API: lookup and throttling

    def _check_subscription(self, ctx: _Ctx) -> None:
        sub = ctx.match["sub"]
        if sub.lower() != self.subscription_id.lower():
            raise _ApiError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")

    def _require_group(self, rg: str) -> None:
        """A resource group exists when the sandbox holds any resource in it."""
        key = rg.lower()
        stores: list[Any] = [self._scale_sets, self._galleries, self._maintenance, self._automation]
        if not any(k[0] == key for store in stores for k in store):
            raise _ApiError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")

    def _lookup(self, ctx: _Ctx, *, parent: bool = False) -> _ScaleSet:
        self._check_subscription(ctx)
        rg, name = ctx.match["rg"], ctx.match["vmss"]
        self._require_group(rg)
        ss = self._scale_sets.get((rg.lower(), name.lower()))
        if ss is None:
            if parent:
                raise _ApiError(
                    404,
                    "ParentResourceNotFound",
                    "Can not perform requested operation on nested resource. "
                    f"Parent resource '{name}' not found.",
                )
            raise _ApiError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/{name}' under resource group "
                f"'{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        return ss

    def _lookup_vm(self, ctx: _Ctx) -> tuple[_ScaleSet, _Instance]:
        ss = self._lookup(ctx, parent=True)
        self._uniform_only(ss, "virtualMachines")
        iid = ctx.match["iid"]
        inst = ss.instances.get(iid)
        if inst is None:
            raise _ApiError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/{ss.name}/virtualMachines/{iid}' "
                f"under resource group '{ss.resource_group}' was not found. "
                "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        return ss, inst

    def _read_headers(self, ss: _ScaleSet, policy: str) -> dict[str, str]:
        bucket = ss.read_buckets[policy]
        bucket.take_soft()
        return {"x-ms-ratelimit-remaining-resource": f"Microsoft.Compute/{policy};{bucket.remaining()}"}

    def _charge_write(self, ss: _ScaleSet) -> dict[str, str]:
        """Take a write token or raise 429 the way Compute does."""
        ok = ss.bucket.take()
        policy = "VMScaleSetActions3Min"
        header = {"x-ms-ratelimit-remaining-resource": f"Microsoft.Compute/{policy};{ss.bucket.remaining()}"}
        if ok:
            return header
        wait = ss.bucket.seconds_until_token()
        now = time.time()
        detail = {
            "operationGroup": "VMScaleSetActions3Min",
            "startTime": _iso(now),
            "endTime": _iso(now + wait),
            "allowedRequestCount": self.write_limit.burst,
            "measuredRequestCount": self.write_limit.burst + 1,
        }
        err = _ApiError(
            429,
            "OperationNotAllowed",
            "The server rejected the request because too many requests have been received "
            "for this subscription.",
            details=[
                {"code": "TooManyRequests", "target": "VMScaleSetActions3Min", "message": json.dumps(detail)}
            ],
        )
        err.reply.headers.update(header)
        err.reply.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        raise err

    # ---------------------------------------------------------------- API: reads

    def _api_get_scale_set(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx)
        return _Reply(200, self._scale_set_json(ss), self._read_headers(ss, "GetVMScaleSet3Min"))

    def _api_list_scale_sets(self, ctx: _Ctx) -> _Reply:
        self._check_subscription(ctx)
        rg = ctx.match.get("rg")
        if rg is not None:
            self._require_group(rg)
        items = [
            self._scale_set_json(ss)
            for key, ss in sorted(self._scale_sets.items())
            if rg is None or key[0] == rg.lower()
        ]
        return _Reply(
            200,
            {"value": items},
            {"x-ms-ratelimit-remaining-resource": "Microsoft.Compute/HighCostGet3Min;159"},
        )

    def _api_scale_set_instance_view(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx)
        self._uniform_only(ss, "instanceView.GET")
        counts: dict[str, int] = {}
        for inst in ss.instances.values():
            code = f"ProvisioningState/{inst.provisioning_state.lower()}"
            counts[code] = counts.get(code, 0) + 1
        body = {
            "virtualMachine": {
                "statusesSummary": [{"code": c, "count": n} for c, n in sorted(counts.items())]
            },
            "statuses": [
                {
                    "code": f"ProvisioningState/{ss.provisioning_state.lower()}",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded"
                    if ss.provisioning_state == "Succeeded"
                    else ss.provisioning_state,
                    "time": ss.time_created,
                }
            ],
        }
        return _Reply(200, body, self._read_headers(ss, "HighCostGetVMScaleSet3Min"))

    def _api_list_vms(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx, parent=True)
        self._uniform_only(ss, "virtualMachines")
        expand = ctx.query.get("$expand", "").lower() == "instanceview"
        flt = ctx.query.get("$filter")
        want_latest: bool | None = None
        if flt:
            m = re.fullmatch(r"\s*properties/latestModelApplied\s+eq\s+(true|false)\s*", flt, re.IGNORECASE)
            if not m:
                raise _ApiError(
                    400,
                    "InvalidParameter",
                    f"The value of parameter $filter is invalid (the sandbox supports only "
                    f"'properties/latestModelApplied eq true|false'): {flt}",
                    target="$filter",
                )
            want_latest = m.group(1).lower() == "true"
        after = -1
        token = ctx.query.get("$skiptoken")
        if token:
            try:
                after = int(base64.urlsafe_b64decode(token.encode() + b"==").decode())
            except ValueError as exc:
                raise _ApiError(
                    400, "InvalidParameter", "The $skiptoken is invalid.", target="$skiptoken"
                ) from exc
        # Paging by "instance ids after X" keeps pages stable while instances come and go.
        candidates = [
            i
            for i in self._sorted(ss)
            if int(i.instance_id) > after
            and (want_latest is None or (i.model_version == ss.model_version) == want_latest)
        ]
        page = candidates[: max(1, self.page_size)]
        body: dict[str, Any] = {"value": [self._vm_json(ss, i, expand=expand) for i in page]}
        if len(candidates) > len(page):
            # Absolute, and carrying every original parameter: the SDK follows it verbatim.
            params = {k: v for k, v in ctx.query.items() if k != "$skiptoken"}
            params["$skiptoken"] = (
                base64.urlsafe_b64encode(page[-1].instance_id.encode()).decode().rstrip("=")
            )
            path = f"{self._resource_id(ss)}/virtualMachines"
            body["nextLink"] = f"{ctx.base_url}{quote(path)}?{urlencode(params, safe='$')}"
        return _Reply(200, body, self._read_headers(ss, "HighCostGetVMScaleSet3Min"))

    def _api_get_vm(self, ctx: _Ctx) -> _Reply:
        ss, inst = self._lookup_vm(ctx)
        expand = ctx.query.get("$expand", "").lower() == "instanceview"
        return _Reply(
            200, self._vm_json(ss, inst, expand=expand), self._read_headers(ss, "GetVMScaleSetVM3Min")
        )

    def _api_get_instance_view(self, ctx: _Ctx) -> _Reply:
        ss, inst = self._lookup_vm(ctx)
        return _Reply(200, self._instance_view(ss, inst), self._read_headers(ss, "GetVMScaleSetVM3Min"))

    def _api_poll(self, ctx: _Ctx) -> _Reply:
        self._check_subscription(ctx)
        op = self._operations.get(ctx.match["op"])
        headers = {"x-ms-ratelimit-remaining-resource": "Microsoft.Compute/GetOperation3Min;14999"}
        if op is None:
            raise _ApiError(404, "NotFound", "The entity was not found in this Azure location.")
        monitor = (
            ctx.match["kind"].lower() == "operationresults" or ctx.query.get("monitor", "").lower() == "true"
        )
        if not monitor:
            return _Reply(200, op.json(), headers)
        # Location-header semantics: 202 until done, then the (empty) result or the error.
        if op.status == "InProgress":
            loc = self._op_urls(ctx, op.op_id)[1]
            headers.update({"Location": loc, "Retry-After": "1"})
            return _Reply(202, None, headers)
        if op.status == "Succeeded":
            return _Reply(200, None, headers)
        return _Reply(409 if op.status == "Canceled" else 500, {"error": dict(op.error or {})}, headers)

    # ---------------------------------------------------------------- API: writes

    def _op_urls(self, ctx: _Ctx, op_id: str) -> tuple[str, str]:
        base = (
            f"{ctx.base_url}/subscriptions/{self.subscription_id}/providers/Microsoft.Compute"
            f"/locations/{self.location}/operations/{op_id}"
        )
        v = quote(ctx.api_version, safe="")
        return f"{base}?api-version={v}", f"{base}?monitor=true&api-version={v}"

    def _start_op(self, ctx: _Ctx, ss: _ScaleSet, kind: str) -> _Operation:
        return self._new_operation(ss, kind)

    def _new_operation(self, ss: _ScaleSet, kind: str) -> _Operation:
        op = _Operation(
            op_id=str(uuid.uuid4()),
            kind=kind,
            key=ss.key,
            start_time=_iso(),
            fail_code=self.faults._take_lro_fault(kind),
        )
        self._operations[op.op_id] = op
        return op

    def _accepted(self, ctx: _Ctx, op: _Operation, duration: float, headers: dict[str, str]) -> _Reply:
        async_url, location_url = self._op_urls(ctx, op.op_id)
        # Integer seconds, as the SDK parses it with int(); never 0 so clients do not spin.
        retry_after = max(1, math.ceil(self.world.clock.seconds(min(duration, 10.0))))
        headers = {
            **headers,
            "Azure-AsyncOperation": async_url,
            "Location": location_url,
            "Retry-After": str(retry_after),
            "x-ms-request-id": op.op_id,
        }
        self._maybe_finish_op(op)
        return _Reply(202, None, headers)

    def _instance_ids(self, ss: _ScaleSet, body: Any, *, required: bool) -> list[str]:
        ids = body.get("instanceIds") if isinstance(body, dict) else None
        if ids is None or (required and not ids):
            if required:
                raise _ApiError(
                    400,
                    "InvalidParameter",
                    "Required parameter 'instanceIds' is missing (null).",
                    target="instanceIds",
                )
            return [i.instance_id for i in self._sorted(ss) if i.provisioning_state != "Deleting"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _ApiError(
                400,
                "InvalidParameter",
                "The value of parameter instanceIds is invalid.",
                target="instanceIds",
            )
        # Flexible: "the instanceIds parameter refers to ... the instance name"
        # (virtual-machine-scale-sets-perform-manual-upgrades.md), matched as ARM names are.
        by_name = {i.vm_name.lower(): i.instance_id for i in ss.instances.values() if i.vm_name}
        resolved = []
        for iid in ids:
            internal = by_name.get(iid.lower()) if ss.flexible else iid
            if internal is None or internal not in ss.instances:
                raise _ApiError(
                    400,
                    "InvalidParameter",
                    f"The provided instanceId {iid} is not an active "
                    "Virtual Machine Scale Set VM instanceId.",
                    target="instanceIds",
                )
            resolved.append(internal)
        return list(dict.fromkeys(resolved))

    def _check_writable(self, ss: _ScaleSet, inst: _Instance, verb: str) -> None:
        if inst.provisioning_state == "Deleting" and verb != "delete":
            raise _ApiError(
                409,
                "OperationNotAllowed",
                f"Operation '{verb}' is not allowed on VM '{ss.name}_{inst.instance_id}' "
                "since it is marked for deletion. You can only retry the Delete operation "
                "(or wait for an ongoing one to complete).",
            )
        if inst.provisioning_state == "Creating" and verb != "delete":
            raise _ApiError(
                409,
                "OperationNotAllowed",
                f"Operation '{verb}' is not allowed on VM '{ss.name}_{inst.instance_id}' "
                "since the VM is being created. Retry after the create operation completes.",
            )

    def _claim(self, ss: _ScaleSet, inst: _Instance, op: _Operation, kind: str, delay: float) -> None:
        """Give ``inst`` to ``op``; an operation still working on it is preempted."""
        previous = self._operations.get(inst.op_id) if inst.op_id else None
        if previous is not None and previous is not op and inst.instance_id in previous.pending:
            previous.pending.discard(inst.instance_id)
            if previous.status == "InProgress":
                previous.status = "Canceled"
                previous.end_time = _iso()
                previous.error = {
                    "code": "OperationPreempted",
                    "message": "Operation execution has been preempted by a more recent operation.",
                }
            self.world.history.append(
                "operation_preempted",
                resource_group=ss.resource_group,
                scale_set=ss.name,
                instance_id=inst.instance_id,
                operation_id=previous.op_id,
                preempted_by=op.op_id,
            )
            self._maybe_finish_op(previous)
        inst.op_id = op.op_id
        inst.task_seq += 1
        inst.task_kind = kind
        inst.etag += 1
        op.pending.add(inst.instance_id)
        seq, key, iid = inst.task_seq, ss.key, inst.instance_id
        self.world.scheduler.call_later(
            self.world.clock.seconds(delay), lambda: self._finish_instance_task(key, iid, seq)
        )

    def _start_reimage(
        self, ctx: _Ctx, ss: _ScaleSet, ids: list[str], kind: str, headers: dict[str, str]
    ) -> _Reply:
        for iid in ids:
            self._check_writable(
                ss, ss.instances[iid], "reimage" if kind != "manualupgrade" else "manualupgrade"
            )
        op = self._start_op(ctx, ss, kind)
        for iid in ids:
            self._begin_instance_task(ss, ss.instances[iid], op, kind)
        return self._accepted(ctx, op, self.durations.reimage, headers)

    def _begin_instance_task(self, ss: _ScaleSet, inst: _Instance, op: _Operation, kind: str) -> None:
        """Start reimaging ``inst`` (``kind`` reimage / reimage_all), or upgrading it to the
        model (manualupgrade, or an upgrade the scale set's policy started)."""
        if kind in _MODEL_UPGRADES:
            if inst.model_version == ss.model_version and inst.op_id is None:
                return  # already on the latest model: Compute leaves it alone
            target, version = deepcopy(ss.image), ss.model_version
        else:
            # A plain reimage restores what the instance runs (or was being upgraded to).
            target = deepcopy(inst.target_image if inst.target_image is not None else inst.image)
            version = (
                inst.target_model_version if inst.target_model_version is not None else inst.model_version
            )
        if kind not in _MODEL_UPGRADES or target != inst.image:
            # The OS disk is replaced as the operation starts (the node is wiped then
            # too): a new disk from the image, with a new name and id.
            inst.os_disk_guid, inst.os_disks = uuid.uuid4().hex, inst.os_disks + 1
        inst.target_image, inst.target_model_version = target, version
        inst.provisioning_state, inst.power_state, inst.failure = "Updating", "starting", None
        inst.state_time = _iso()
        self._claim(ss, inst, op, kind, self.durations.reimage)
        self._emit(
            "reimage_started",
            ss,
            inst,
            target,
            operation=kind,
            operation_id=op.op_id,
            os_disk=inst.os_disk_name(ss.name),
        )

    def _start_delete(self, ctx: _Ctx, ss: _ScaleSet, ids: list[str], headers: dict[str, str]) -> _Reply:
        op = self._start_op(ctx, ss, "delete")
        for iid in ids:
            inst = ss.instances[iid]
            if inst.provisioning_state == "Deleting":
                continue
            inst.provisioning_state, inst.power_state = "Deleting", "stopping"
            inst.state_time = _iso()
            self._claim(ss, inst, op, "delete", self.durations.delete)
        return self._accepted(ctx, op, self.durations.delete, headers)

    def _api_reimage(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx)
        self._uniform_only(ss, "reimage.POST")
        headers = self._charge_write(ss)
        ids = self._instance_ids(ss, ctx.body, required=False)
        return self._start_reimage(ctx, ss, ids, "reimage", headers)

    def _api_reimage_all(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx)
        self._uniform_only(ss, "reimageall.POST")
        headers = self._charge_write(ss)
        ids = self._instance_ids(ss, ctx.body, required=False)
        return self._start_reimage(ctx, ss, ids, "reimage_all", headers)

    def _api_manualupgrade(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx)
        headers = self._charge_write(ss)
        ids = self._instance_ids(ss, ctx.body, required=True)
        return self._start_reimage(ctx, ss, ids, "manualupgrade", headers)

    def _api_delete_instances(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx)
        headers = self._charge_write(ss)
        ids = self._instance_ids(ss, ctx.body, required=True)
        return self._start_delete(ctx, ss, ids, headers)

    def _api_vm_reimage(self, ctx: _Ctx, kind: str = "reimage") -> _Reply:
        ss, inst = self._lookup_vm(ctx)
        headers = self._charge_write(ss)
        return self._start_reimage(ctx, ss, [inst.instance_id], kind, headers)

    def _api_vm_reimage_all(self, ctx: _Ctx) -> _Reply:
        return self._api_vm_reimage(ctx, "reimage_all")

    def _api_delete_vm(self, ctx: _Ctx) -> _Reply:
        ss, inst = self._lookup_vm(ctx)
        headers = self._charge_write(ss)
        return self._start_delete(ctx, ss, [inst.instance_id], headers)

    def _api_update_model(self, ctx: _Ctx, *, patch: bool) -> _Reply:
        ss = self._lookup(ctx)
        if_match = ctx.headers.get("if-match")
        if if_match and if_match not in ("*", f'"{ss.etag}"'):
            raise _ApiError(
                412, "PreconditionFailed", f"The specified precondition 'If-Match = {if_match}' failed."
            )
        body = ctx.body
        if not isinstance(body, dict):
            raise _ApiError(
                400, "InvalidRequestContent", "The request content was invalid and could not be deserialized."
            )
        headers = self._charge_write(ss)
        props = body.get("properties") or {}
        vm_profile = props.get("virtualMachineProfile") or {}
        image = (vm_profile.get("storageProfile") or {}).get("imageReference")
        prefix = (vm_profile.get("osProfile") or {}).get("computerNamePrefix")
        if prefix is not None and prefix != ss.prefix:
            raise _ApiError(
                409,
                "PropertyChangeNotAllowed",
                "Changing property 'computerNamePrefix' is not allowed.",
                target="computerNamePrefix",
            )
        policy = props.get("upgradePolicy")
        if policy is not None:
            policy = _upgrade_policy(policy, base=ss.upgrade_policy if patch else None)
        capacity = (body.get("sku") or {}).get("capacity")
        if capacity is not None and (not isinstance(capacity, int) or capacity < 0):
            raise _ApiError(
                400,
                "InvalidParameter",
                "The value of parameter sku.capacity is invalid.",
                target="sku.capacity",
            )

        op = self._start_op(ctx, ss, "update_model")
        if policy is not None:
            ss.upgrade_policy = policy
        image_changed = False
        if isinstance(image, dict) and image:
            # Compute returns only the fields it knows; drop client-side nulls before comparing.
            new_image = {k: v for k, v in image.items() if v is not None}
            if new_image != ss.image:
                ss.image = new_image
                ss.model_version += 1
                image_changed = True
        if "tags" in body or not patch:
            ss.tags = dict(body.get("tags") or {})
        ss.etag += 1
        ss.provisioning_state = "Updating"
        ss.model_ops_in_flight += 1
        op.model_pending = True
        key, op_id = ss.key, op.op_id
        self.world.scheduler.call_later(
            self.world.clock.seconds(self.durations.model_update),
            lambda: self._finish_model_task(key, op_id, image_changed),
        )
        duration = self.durations.model_update
        if capacity is not None:
            current = self._sorted(ss)
            live = [i for i in current if i.provisioning_state != "Deleting"]
            if capacity > len(live):
                for _ in range(capacity - len(live)):
                    inst = self._new_instance(ss, state="Creating")
                    self._claim(ss, inst, op, "create", self.durations.scale)
                duration = max(duration, self.durations.scale)
            elif capacity < len(live):
                # Default scale-in policy removes the highest instance ids first.
                for inst in sorted(live, key=lambda i: int(i.instance_id), reverse=True)[
                    : len(live) - capacity
                ]:
                    inst.provisioning_state, inst.power_state = "Deleting", "stopping"
                    inst.state_time = _iso()
                    self._claim(ss, inst, op, "delete", self.durations.delete)
                duration = max(duration, self.durations.delete)
        async_url, _ = self._op_urls(ctx, op.op_id)
        headers.update({"Azure-AsyncOperation": async_url, "x-ms-request-id": op.op_id})
        return _Reply(200, self._scale_set_json(ss), headers)

    def _api_put_scale_set(self, ctx: _Ctx) -> _Reply:
        return self._api_update_model(ctx, patch=False)

    def _api_patch_scale_set(self, ctx: _Ctx) -> _Reply:
        return self._api_update_model(ctx, patch=True)

    # ---------------------------------------------------------------- completions (scheduler thread)

    def _finish_instance_task(self, key: tuple[str, str], iid: str, seq: int) -> None:
        with self._transaction():
            ss = self._scale_sets.get(key)
            inst = ss.instances.get(iid) if ss else None
            if ss is None or inst is None or inst.task_seq != seq:
                return  # preempted or gone: a newer task owns this instance
            op = self._operations.get(inst.op_id or "")
            kind = inst.task_kind
            fail_code = op.fail_code if op is not None else None
            inst.op_id, inst.task_kind = None, None
            inst.state_time = _iso()
            if kind == "delete" and fail_code is not None:
                inst.provisioning_state, inst.power_state = "Failed", "running"
                inst.failure = {"code": fail_code, "message": self._error_message(fail_code)}
            elif kind == "delete":
                del ss.instances[iid]
                self._emit("instance_deleted", ss, inst, inst.image, operation_id=op.op_id if op else None)
            elif kind == "create":
                inst.provisioning_state, inst.power_state = "Succeeded", "running"
                self._emit("instance_created", ss, inst, inst.image, operation_id=op.op_id if op else None)
            elif fail_code is not None:
                inst.provisioning_state, inst.power_state = "Failed", "running"
                inst.failure = {"code": fail_code, "message": self._error_message(fail_code)}
                inst.target_image, inst.target_model_version = None, None
                self._emit(
                    "reimage_failed",
                    ss,
                    inst,
                    inst.image,
                    error_code=fail_code,
                    operation_id=op.op_id if op else None,
                )
            else:
                if inst.target_image is not None:
                    inst.image = inst.target_image
                if inst.target_model_version is not None:
                    inst.model_version = inst.target_model_version
                inst.target_image, inst.target_model_version = None, None
                inst.provisioning_state, inst.power_state = "Succeeded", "running"
                inst.etag += 1
                self._emit("reimage_completed", ss, inst, inst.image, operation_id=op.op_id if op else None)
            if op is not None:
                op.pending.discard(iid)
                self._maybe_finish_op(op)

    def _finish_model_task(self, key: tuple[str, str], op_id: str, image_changed: bool) -> None:
        with self._transaction():
            ss = self._scale_sets.get(key)
            op = self._operations.get(op_id)
            if ss is None or op is None:
                return
            op.model_pending = False
            ss.model_ops_in_flight -= 1
            if op.fail_code is not None:
                ss.provisioning_state = "Failed"
            elif ss.model_ops_in_flight == 0:
                ss.provisioning_state = "Succeeded"
            if image_changed and op.fail_code is None:
                self._emit("model_updated", ss, None, ss.image, operation_id=op_id)
                self._upgrade_by_policy(ss)
            self._maybe_finish_op(op)

    def _maybe_finish_op(self, op: _Operation) -> None:
        if op.pending or op.model_pending or op.status != "InProgress":
            return
        op.end_time = _iso()
        if op.fail_code is not None:
            op.status = "Failed"
            op.error = {"code": op.fail_code, "message": self._error_message(op.fail_code)}
        else:
            op.status = "Succeeded"
        self.world.history.append(
            "operation_finished", operation_id=op.op_id, operation=op.kind, status=op.status, error=op.error
        )
        if op.kind == "rolling_upgrade":
            self._next_rolling_batch(op)

    @staticmethod
    def _error_message(code: str) -> str:
        return _KNOWN_ERROR_MESSAGES.get(code, f"The operation failed with error code '{code}'.")

    # ---------------------------------------------------------------- upgrade policies

    def _upgrade_by_policy(self, ss: _ScaleSet) -> None:
        """What Compute does itself after a model change, by ``upgradePolicy.mode``
        (virtual-machine-scale-sets-upgrade-policy.md): Manual nothing; Automatic upgrades
        every instance at once ("might take down all virtual machines at the same time");
        Rolling in batches of ``maxBatchInstancePercent`` of the instances, one batch after
        the other, ``pauseTimeBetweenBatches`` apart. Nobody cordons or drains anything."""
        mode = ss.upgrade_policy.get("mode")
        if mode == "Automatic":
            op = self._new_operation(ss, "automatic_upgrade")
            stale = self._stale_instances(ss)
            self.world.history.append(
                "automatic_upgrade_started",
                resource_group=ss.resource_group,
                scale_set=ss.name,
                instance_ids=[i.public_id() for i in stale],
                operation_id=op.op_id,
            )
            for inst in stale:
                self._begin_instance_task(ss, inst, op, "automatic_upgrade")
            self._maybe_finish_op(op)
        elif mode == "Rolling":
            self.world.history.append(
                "rolling_upgrade_started", resource_group=ss.resource_group, scale_set=ss.name
            )
            self._rolling_batch(ss.key)

    @staticmethod
    def _stale_instances(ss: _ScaleSet) -> list[_Instance]:
        return [
            i
            for i in ComputeState._sorted(ss)
            if i.model_version != ss.model_version and i.provisioning_state not in ("Deleting", "Creating")
        ]

    def _rolling_batch(self, key: tuple[str, str]) -> None:
        with self._transaction():
            ss = self._scale_sets.get(key)
            if ss is None or ss.upgrade_policy.get("mode") != "Rolling":
                return
            stale = self._stale_instances(ss)
            if not stale:
                self.world.history.append(
                    "rolling_upgrade_completed", resource_group=ss.resource_group, scale_set=ss.name
                )
                return
            percent = ss.upgrade_policy["rollingUpgradePolicy"]["maxBatchInstancePercent"]
            size = max(1, ss.capacity() * percent // 100)
            op = self._new_operation(ss, "rolling_upgrade")
            batch = stale[:size]
            self.world.history.append(
                "rolling_upgrade_batch",
                resource_group=ss.resource_group,
                scale_set=ss.name,
                instance_ids=[i.public_id() for i in batch],
                operation_id=op.op_id,
            )
            for inst in batch:
                self._begin_instance_task(ss, inst, op, "rolling_upgrade")
            self._maybe_finish_op(op)

    def _next_rolling_batch(self, op: _Operation) -> None:
        """A batch is done: the next one after the pause; a failed batch stops the upgrade."""
        ss = self._scale_sets.get(op.key)
        if ss is None or op.status != "Succeeded":
            return
        pause = _duration_seconds(ss.upgrade_policy["rollingUpgradePolicy"]["pauseTimeBetweenBatches"])
        key = op.key
        self.world.scheduler.call_later(self.world.clock.seconds(pause), lambda: self._rolling_batch(key))

    # ---------------------------------------------------------------- Flexible orchestration

    @staticmethod
    def _uniform_only(ss: _ScaleSet, operation: str) -> None:
        """The VMSS-VM and batch instance APIs a Flexible scale set does not serve: its
        instances are managed through the single-VM APIs (orchestration-modes-api-comparison.md)."""
        if ss.flexible:
            raise _ApiError(
                400,
                "BadRequest",
                f"Operation 'VirtualMachineScaleSets.{operation}' is not allowed on "
                f"Virtual Machine Scale Set '{ss.name}'.",
            )

    def _flex_vm_id(self, ss: _ScaleSet, inst: _Instance) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{ss.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{inst.vm_name}"
        )

    def _flex_vm_json(self, ss: _ScaleSet, inst: _Instance, *, expand: bool) -> dict[str, Any]:
        """A Flexible instance as the VM API shows it: a virtualMachines resource naming its
        scale set, with no instance id and no model flag."""
        body = self._vm_json(ss, inst, expand=expand)
        props = body["properties"]
        props.pop("latestModelApplied")
        props.pop("modelDefinitionApplied")
        props["virtualMachineScaleSet"] = {"id": self._resource_id(ss)}
        body.pop("instanceId")
        body.pop("sku")
        body.update(
            name=inst.vm_name, id=self._flex_vm_id(ss, inst), type="Microsoft.Compute/virtualMachines"
        )
        return body

    def _flex_scale_sets(self, rg: str) -> list[_ScaleSet]:
        return [ss for key, ss in sorted(self._scale_sets.items()) if ss.flexible and key[0] == rg.lower()]

    def _lookup_flex_vm(self, ctx: _Ctx) -> tuple[_ScaleSet, _Instance]:
        self._check_subscription(ctx)
        rg, name = ctx.match["rg"], ctx.match["vm"]
        self._require_group(rg)
        for ss in self._flex_scale_sets(rg):
            for inst in ss.instances.values():
                if inst.vm_name.lower() == name.lower():
                    return ss, inst
        raise _resource_not_found(f"Microsoft.Compute/virtualMachines/{name}", rg)

    def _api_list_flex_vms(self, ctx: _Ctx) -> _Reply:
        """``GET .../virtualMachines``, optionally ``$filter='virtualMachineScaleSet/id' eq 'ID'``
        (the VM List filter the REST reference documents for Flexible members)."""
        self._check_subscription(ctx)
        rg = ctx.match["rg"]
        self._require_group(rg)
        flt = ctx.query.get("$filter")
        wanted: str | None = None
        if flt:
            m = re.fullmatch(r"\s*'virtualMachineScaleSet/id'\s+eq\s+'(?P<id>[^']+)'\s*", flt, re.IGNORECASE)
            if not m:
                raise _ApiError(
                    400,
                    "InvalidParameter",
                    f"The value of parameter $filter is invalid: {flt}",
                    target="$filter",
                )
            wanted = m.group("id").lower()
        expand = ctx.query.get("$expand", "").lower() == "instanceview"
        items = [
            self._flex_vm_json(ss, inst, expand=expand)
            for ss in self._flex_scale_sets(rg)
            if wanted is None or self._resource_id(ss).lower() == wanted
            for inst in self._sorted(ss)
        ]
        return _Reply(
            200,
            {"value": items},
            {"x-ms-ratelimit-remaining-resource": "Microsoft.Compute/HighCostGet3Min;159"},
        )

    def _api_get_flex_vm(self, ctx: _Ctx) -> _Reply:
        ss, inst = self._lookup_flex_vm(ctx)
        expand = ctx.query.get("$expand", "").lower() == "instanceview"
        return _Reply(
            200, self._flex_vm_json(ss, inst, expand=expand), self._read_headers(ss, "GetVMScaleSetVM3Min")
        )

    def _api_flex_vm_instance_view(self, ctx: _Ctx) -> _Reply:
        ss, inst = self._lookup_flex_vm(ctx)
        return _Reply(200, self._instance_view(ss, inst), self._read_headers(ss, "GetVMScaleSetVM3Min"))

    def _api_flex_vm_reimage(self, ctx: _Ctx) -> _Reply:
        """``POST .../virtualMachines/NAME/reimage``: an LRO like the VMSS one, restoring the
        image the VM runs (no ``exactVersion``)."""
        ss, inst = self._lookup_flex_vm(ctx)
        headers = self._charge_write(ss)
        return self._start_reimage(ctx, ss, [inst.instance_id], "reimage", headers)

    # ================================================================ Compute Gallery

    def add_gallery_image(
        self,
        resource_group: str,
        gallery: str,
        image: str,
        *,
        os_type: str,
        hyper_v_generation: str = "V2",
        identifier: dict[str, str] | None = None,
    ) -> str:
        """Create an image definition (and its gallery if needed); returns its resource id.

        Adding a definition that exists with the same OS type is a no-op.
        """
        os_norm = _os_name(os_type)
        with self._transaction():
            g = self._galleries.get((resource_group.lower(), gallery.lower()))
            if g is None:
                g = _Gallery(resource_group=resource_group, name=gallery, location=self.location)
                self._galleries[(resource_group.lower(), gallery.lower())] = g
                self.world.history.append("gallery_added", resource_group=resource_group, gallery=gallery)
            img = g.images.get(image.lower())
            if img is not None:
                if img.os_type != os_norm:
                    raise ValueError(f"image definition {gallery}/{image} exists with osType {img.os_type}")
                return self._image_id(g, img)
            img = _GalleryImage(
                name=image,
                location=self.location,
                os_type=os_norm,
                os_state="Generalized",
                hyper_v_generation=hyper_v_generation,
                identifier=dict(identifier or {"publisher": "sandbox", "offer": gallery, "sku": image}),
                tags={},
            )
            g.images[image.lower()] = img
            self.world.history.append(
                "gallery_image_added",
                resource_id=self._image_id(g, img),
                os_type=os_norm,
            )
            return self._image_id(g, img)

    def publish_image_version(
        self,
        resource_group: str,
        gallery: str,
        image: str,
        version: str,
        *,
        tags: dict[str, str] | None = None,
        replicate_seconds: float = 60.0,
        target_regions: list[str] | None = None,
    ) -> str:
        """What a ``PUT .../versions/{version}`` does, without HTTP; returns the version id.

        The version is ``Creating`` for ``replicate_seconds`` cloud seconds, then
        ``Succeeded`` (0 or less: at once). Its completion is announced as
        ``resource_write``, like a PUT through the API.
        """
        with self._transaction():
            g = self._galleries.get((resource_group.lower(), gallery.lower()))
            img = g.images.get(image.lower()) if g else None
            if g is None or img is None:
                raise KeyError(f"no image definition {resource_group}/{gallery}/{image}")
            if not _VERSION_NAME.fullmatch(version):
                raise ValueError(f"gallery image version names are Major.Minor.Patch, got {version!r}")
            current = img.versions.get(version)
            if current is not None and current.provisioning_state in ("Creating", "Updating"):
                raise ValueError(f"image version {version} is still {current.provisioning_state}")
            body: dict[str, Any] = {"location": self.location, "tags": dict(tags or {})}
            if target_regions:
                body["properties"] = {
                    "publishingProfile": {"targetRegions": [{"name": r} for r in target_regions]}
                }
            v, _ = self._write_version(
                g,
                img,
                version,
                body,
                correlation_id=str(uuid.uuid4()),
                api_version=None,
                replicate_seconds=replicate_seconds,
                op=None,
            )
            return self._version_id(g, img, v)

    # ---------------------------------------------------------------- gallery ids and JSON

    def _gallery_id(self, g: _Gallery) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{g.resource_group}"
            f"/providers/Microsoft.Compute/galleries/{g.name}"
        )

    def _image_id(self, g: _Gallery, img: _GalleryImage) -> str:
        return f"{self._gallery_id(g)}/images/{img.name}"

    def _version_id(self, g: _Gallery, img: _GalleryImage, v: _ImageVersion) -> str:
        return f"{self._image_id(g, img)}/versions/{v.name}"

    def _gallery_json(self, g: _Gallery) -> dict[str, Any]:
        return {
            "id": self._gallery_id(g),
            "name": g.name,
            "type": "Microsoft.Compute/galleries",
            "location": g.location,
            "tags": {},
            "properties": {
                "identifier": {"uniqueName": f"{self.subscription_id}-{g.name.upper()}"},
                "provisioningState": "Succeeded",
            },
        }

    def _gallery_image_json(self, g: _Gallery, img: _GalleryImage) -> dict[str, Any]:
        props: dict[str, Any] = {
            "osType": img.os_type,
            "osState": img.os_state,
            "hyperVGeneration": img.hyper_v_generation,
            "identifier": dict(img.identifier),
            "architecture": img.architecture,
            "provisioningState": "Succeeded",
        }
        if img.description is not None:
            props["description"] = img.description
        return {
            "id": self._image_id(g, img),
            "name": img.name,
            "type": "Microsoft.Compute/galleries/images",
            "location": img.location,
            "tags": dict(img.tags),
            "properties": props,
        }

    def _image_version_json(
        self, g: _Gallery, img: _GalleryImage, v: _ImageVersion, *, replication: bool = False
    ) -> dict[str, Any]:
        publishing: dict[str, Any] = {
            "targetRegions": deepcopy(v.target_regions),
            "replicaCount": 1,
            "excludeFromLatest": v.exclude_from_latest,
            "publishedDate": v.published_date,
            "storageAccountType": "Standard_LRS",
            "replicationMode": "Full",
        }
        if v.end_of_life_date is not None:
            publishing["endOfLifeDate"] = v.end_of_life_date
        props: dict[str, Any] = {
            "publishingProfile": publishing,
            "storageProfile": deepcopy(v.storage_profile),
            "safetyProfile": {
                "allowDeletionOfReplicatedLocations": True,
                "reportedForPolicyViolation": False,
            },
            "provisioningState": v.provisioning_state,
        }
        if replication:
            props["replicationStatus"] = self._replication_status(v)
        return {
            "id": self._version_id(g, img, v),
            "name": v.name,
            "type": "Microsoft.Compute/galleries/images/versions",
            "location": v.location,
            "tags": dict(v.tags),
            "properties": props,
        }

    @staticmethod
    def _replication_status(v: _ImageVersion) -> dict[str, Any]:
        if v.provisioning_state == "Succeeded":
            aggregated, state, progress, details = "Completed", "Completed", 100, ""
        elif v.provisioning_state == "Failed":
            failure = v.failure or {}
            aggregated, state, progress = "Failed", "Failed", 0
            details = failure.get("message", "")
        else:
            elapsed = time.monotonic() - v.replicating_since
            fraction = 1.0 if v.replicating_for <= 0 else min(1.0, elapsed / v.replicating_for)
            aggregated, state, progress, details = (
                "InProgress",
                "Replicating",
                min(99, int(fraction * 100)),
                "",
            )
        return {
            "aggregatedState": aggregated,
            "summary": [
                {"region": r["name"], "state": state, "details": details, "progress": progress}
                for r in v.target_regions
            ],
        }

    def _target_region(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _ApiError(
                400,
                "InvalidParameter",
                "The value of parameter publishingProfile.targetRegions is invalid.",
                target="publishingProfile.targetRegions",
            )
        region: dict[str, Any] = {
            "name": _region_display_name(raw["name"]),
            "regionalReplicaCount": int(raw.get("regionalReplicaCount") or 1),
            "storageAccountType": raw.get("storageAccountType") or "Standard_LRS",
        }
        if raw.get("excludeFromLatest") is not None:
            region["excludeFromLatest"] = bool(raw["excludeFromLatest"])
        return region

    # ---------------------------------------------------------------- gallery writes

    def _write_version(
        self,
        g: _Gallery,
        img: _GalleryImage,
        name: str,
        body: dict[str, Any],
        *,
        correlation_id: str,
        api_version: str | None,
        replicate_seconds: float,
        op: _Operation | None,
    ) -> tuple[_ImageVersion, bool]:
        props = body.get("properties") or {}
        publishing = props.get("publishingProfile") or {}
        location = str(body.get("location") or self.location)
        regions = [self._target_region(r) for r in publishing.get("targetRegions") or [{"name": location}]]
        storage = deepcopy(props.get("storageProfile") or {})
        storage.setdefault("osDiskImage", {"sizeInGB": 30, "hostCaching": "ReadOnly"})
        storage.setdefault("dataDiskImages", [])
        v = img.versions.get(name)
        created = v is None
        if v is None:
            v = _ImageVersion(
                name=name,
                location=location,
                tags={},
                target_regions=regions,
                storage_profile=storage,
                published_date=_iso(),
            )
            img.versions[name] = v
        else:
            v.provisioning_state = "Updating"
        v.tags = {str(k): str(val) for k, val in (body.get("tags") or {}).items()}
        v.target_regions, v.storage_profile = regions, storage
        v.exclude_from_latest = bool(publishing.get("excludeFromLatest") or False)
        v.end_of_life_date = publishing.get("endOfLifeDate")
        v.failure = None
        v.op_id = op.op_id if op else None
        v.task_seq += 1
        delay = self.world.clock.seconds(max(0.0, replicate_seconds))
        v.replicating_since, v.replicating_for = time.monotonic(), delay
        fail_code = self.faults._take_lro_fault("image_version")
        version_id = self._version_id(g, img, v)
        self.world.history.append(
            "image_version_write_started",
            resource_id=version_id,
            created=created,
            correlation_id=correlation_id,
            tags=dict(v.tags),
        )
        key = (g.resource_group.lower(), g.name.lower(), img.name.lower(), name)
        seq = v.task_seq

        def finish() -> None:
            self._finish_version(key, seq, fail_code, correlation_id, api_version)

        if delay <= 0:
            finish()
        else:
            self.world.scheduler.call_later(delay, finish)
        return v, created

    def _finish_version(
        self,
        key: tuple[str, str, str, str],
        seq: int,
        fail_code: str | None,
        correlation_id: str,
        api_version: str | None,
    ) -> None:
        with self._transaction():
            g = self._galleries.get(key[:2])
            img = g.images.get(key[2]) if g else None
            v = img.versions.get(key[3]) if img else None
            if g is None or img is None or v is None or v.task_seq != seq:
                return
            op = self._operations.get(v.op_id or "")
            v.op_id = None
            if fail_code is not None:
                v.provisioning_state = "Failed"
                v.failure = {"code": fail_code, "message": self._error_message(fail_code)}
            else:
                v.provisioning_state = "Succeeded"
            if op is not None:
                op.fail_code, op.model_pending = fail_code, False
                self._maybe_finish_op(op)
            version_id = self._version_id(g, img, v)
            status = v.provisioning_state
            self.world.history.append(
                "image_version_published",
                resource_id=version_id,
                status=status,
                correlation_id=correlation_id,
                tags=dict(v.tags),
            )
            url = f"https://management.azure.com{version_id}"
            if api_version:
                url += f"?api-version={api_version}"
            self._pending_events.append(
                (
                    "resource_write",
                    {
                        "resource_id": version_id,
                        "operation_name": IMAGE_VERSION_WRITE,
                        "status": status,
                        "resource_provider": "Microsoft.Compute",
                        "subscription_id": self.subscription_id,
                        "resource_group": g.resource_group,
                        "correlation_id": correlation_id,
                        "http_method": "PUT",
                        "http_url": url,
                        "tags": dict(v.tags),
                    },
                )
            )

    # ---------------------------------------------------------------- gallery API

    def _lookup_gallery(self, ctx: _Ctx, *, parent: bool = False) -> _Gallery:
        self._check_subscription(ctx)
        rg, name = ctx.match["rg"], ctx.match["gallery"]
        self._require_group(rg)
        g = self._galleries.get((rg.lower(), name.lower()))
        if g is None:
            if parent:
                raise _parent_not_found(name)
            raise _resource_not_found(f"Microsoft.Compute/galleries/{name}", rg)
        return g

    def _lookup_gallery_image(self, ctx: _Ctx, *, parent: bool = False) -> tuple[_Gallery, _GalleryImage]:
        g = self._lookup_gallery(ctx, parent=True)
        name = ctx.match["image"]
        img = g.images.get(name.lower())
        if img is None:
            if parent:
                raise _parent_not_found(f"{g.name}/{name}")
            raise _resource_not_found(f"Microsoft.Compute/galleries/{g.name}/images/{name}", g.resource_group)
        return g, img

    def _api_get_gallery(self, ctx: _Ctx) -> _Reply:
        return _Reply(200, self._gallery_json(self._lookup_gallery(ctx)))

    def _api_list_gallery_images(self, ctx: _Ctx) -> _Reply:
        g = self._lookup_gallery(ctx, parent=True)
        items = [self._gallery_image_json(g, img) for _, img in sorted(g.images.items())]
        return _Reply(200, {"value": items})

    def _api_get_gallery_image(self, ctx: _Ctx) -> _Reply:
        g, img = self._lookup_gallery_image(ctx)
        return _Reply(200, self._gallery_image_json(g, img))

    def _api_put_gallery_image(self, ctx: _Ctx) -> _Reply:
        g = self._lookup_gallery(ctx, parent=True)
        body = _require_body(ctx)
        if not body.get("location"):
            raise _ApiError(400, "LocationRequired", "The location property is required for this definition.")
        props = body.get("properties") or {}
        os_type = props.get("osType")
        identifier = props.get("identifier")
        if os_type not in ("Linux", "Windows"):
            raise _ApiError(
                400,
                "InvalidParameter",
                "The value of parameter galleryImage.properties.osType is invalid.",
                target="galleryImage.properties.osType",
            )
        if not isinstance(identifier, dict) or not all(
            identifier.get(k) for k in ("publisher", "offer", "sku")
        ):
            raise _ApiError(
                400,
                "InvalidParameter",
                "Required parameter 'galleryImage.properties.identifier' is missing (null).",
                target="galleryImage.properties.identifier",
            )
        name = ctx.match["image"]
        img = g.images.get(name.lower())
        created = img is None
        if img is None:
            img = _GalleryImage(
                name=name,
                location=str(body["location"]),
                os_type=os_type,
                os_state=str(props.get("osState") or "Generalized"),
                hyper_v_generation=str(props.get("hyperVGeneration") or "V1"),
                identifier={k: str(identifier[k]) for k in ("publisher", "offer", "sku")},
                tags={},
            )
            g.images[name.lower()] = img
        elif img.os_type != os_type:
            raise _ApiError(
                409,
                "PropertyChangeNotAllowed",
                "Changing property 'galleryImage.properties.osType' is not allowed.",
                target="galleryImage.properties.osType",
            )
        img.tags = {str(k): str(v) for k, v in (body.get("tags") or {}).items()}
        img.description = props.get("description")
        if props.get("architecture"):
            img.architecture = str(props["architecture"])
        self.world.history.append(
            "gallery_image_added" if created else "gallery_image_updated",
            resource_id=self._image_id(g, img),
            os_type=img.os_type,
        )
        op = self._finished_op("gallery_image", self._image_id(g, img))
        headers = {"Azure-AsyncOperation": self._op_urls(ctx, op.op_id)[0], "x-ms-request-id": op.op_id}
        return _Reply(201 if created else 200, self._gallery_image_json(g, img), headers)

    def _api_list_gallery_image_versions(self, ctx: _Ctx) -> _Reply:
        g, img = self._lookup_gallery_image(ctx, parent=True)
        items = [self._image_version_json(g, img, v) for v in sorted(img.versions.values(), key=_version_key)]
        return _Reply(200, {"value": items})

    def _api_get_gallery_image_version(self, ctx: _Ctx) -> _Reply:
        g, img = self._lookup_gallery_image(ctx, parent=True)
        name = ctx.match["version"]
        v = img.versions.get(name)
        if v is None:
            raise _resource_not_found(
                f"Microsoft.Compute/galleries/{g.name}/images/{img.name}/versions/{name}", g.resource_group
            )
        expand = ctx.query.get("$expand", "").lower()
        if expand and expand not in ("replicationstatus", "uefisettings"):
            raise _ApiError(
                400,
                "InvalidParameter",
                f"The value '{ctx.query['$expand']}' of parameter '$expand' is invalid.",
                target="$expand",
            )
        return _Reply(200, self._image_version_json(g, img, v, replication=expand == "replicationstatus"))

    def _api_put_gallery_image_version(self, ctx: _Ctx) -> _Reply:
        g, img = self._lookup_gallery_image(ctx, parent=True)
        name = ctx.match["version"]
        if not _VERSION_NAME.fullmatch(name):
            raise _ApiError(
                400,
                "InvalidParameter",
                f"The gallery image version name '{name}' is invalid. It must follow the "
                "Major(int32).Minor(int32).Patch(int32) format.",
                target="galleryImageVersionName",
            )
        body = _require_body(ctx)
        if not body.get("location"):
            raise _ApiError(400, "LocationRequired", "The location property is required for this definition.")
        current = img.versions.get(name)
        if current is not None and current.provisioning_state in ("Creating", "Updating"):
            raise _ApiError(
                409,
                "OperationNotAllowed",
                f"Operation 'Update' is not allowed on gallery image version '{name}' since a previous "
                "operation on it is still in progress. Please retry after it completes.",
            )
        version_id = f"{self._image_id(g, img)}/versions/{name}"  # the op's key: the resource it writes
        op = _Operation(
            op_id=str(uuid.uuid4()),
            kind="image_version",
            key=("gallery", version_id.lower()),
            start_time=_iso(),
            fail_code=None,
            model_pending=True,
        )
        self._operations[op.op_id] = op
        v, created = self._write_version(
            g,
            img,
            name,
            body,
            correlation_id=ctx.headers.get("x-ms-correlation-request-id") or str(uuid.uuid4()),
            api_version=ctx.api_version,
            replicate_seconds=self.durations.image_replication,
            op=op,
        )
        headers = {"Azure-AsyncOperation": self._op_urls(ctx, op.op_id)[0], "x-ms-request-id": op.op_id}
        # A zero replication time finishes inside _write_version: answer what the resource is now.
        return _Reply(201 if created else 200, self._image_version_json(g, img, v), headers)

    def _finished_op(self, kind: str, resource_id: str) -> _Operation:
        """An async operation that is already done (for writes Compute finishes at once)."""
        now = _iso()
        op = _Operation(
            op_id=str(uuid.uuid4()),
            kind=kind,
            key=("resource", resource_id.lower()),
            start_time=now,
            fail_code=None,
            status="Succeeded",
            end_time=now,
        )
        self._operations[op.op_id] = op
        return op

    # ================================================================ Update Manager (Microsoft.Maintenance)

    def add_maintenance_configuration(
        self,
        resource_group: str,
        name: str,
        *,
        location: str | None = None,
        window: dict[str, str] | None = None,
    ) -> str:
        """An InGuestPatch maintenance configuration (weekly window by default); returns its id."""
        with self._transaction():
            key = (resource_group.lower(), name.lower())
            if key in self._maintenance:
                raise ValueError(f"maintenance configuration {resource_group}/{name} already exists")
            now = datetime.now(UTC)
            props: dict[str, Any] = {
                "namespace": "Microsoft.Maintenance",
                "extensionProperties": {"InGuestPatchMode": "User"},
                "maintenanceScope": "InGuestPatch",
                "maintenanceWindow": {
                    "startDateTime": now.strftime("%Y-%m-%d %H:%M"),
                    "expirationDateTime": "9999-12-31 23:59",
                    "duration": "03:55",
                    "timeZone": "UTC",
                    "recurEvery": "1Week Saturday",
                    **(window or {}),
                },
                "visibility": "Custom",
                "installPatches": {
                    "rebootSetting": "IfRequired",
                    "linuxParameters": {
                        "classificationsToInclude": ["Critical", "Security"],
                        "packageNameMasksToExclude": [],
                        "packageNameMasksToInclude": [],
                    },
                    "windowsParameters": {
                        "classificationsToInclude": ["Critical", "Security"],
                        "kbNumbersToExclude": [],
                        "kbNumbersToInclude": [],
                        "excludeKbsRequiringReboot": False,
                    },
                },
            }
            mc = _MaintenanceConfig(
                resource_group=resource_group,
                name=name,
                location=location or self.location,
                tags={},
                properties=props,
            )
            self._maintenance[key] = mc
            self.world.history.append("maintenance_configuration_added", resource_id=self._mc_id(mc))
            return self._mc_id(mc)

    def schedule_maintenance_run(
        self, config_id: str, start: datetime, end: datetime, *, cutoff: datetime | None = None
    ) -> tuple[str, str]:
        """Schedule one run of a configuration's window; returns ``(run_id, correlation_id)``.

        ``run_id`` is the applyUpdates name (``yyyyMMddHHmmss`` of ``start``, UTC);
        ``correlation_id`` is the run's resource id, exactly as the pre/post events carry
        it in ``id`` and ``data.correlationId``. ``start``/``end``/``cutoff`` are absolute
        wall-clock instants (naive means UTC); the cut-off defaults to start - 10 minutes.
        Listeners get ``maintenance_scheduled`` now, then ``maintenance_started`` and
        ``maintenance_completed`` at the window's start and end unless it is cancelled.
        """
        start_utc, end_utc = _as_utc(start), _as_utc(end)
        if end_utc <= start_utc:
            raise ValueError("a maintenance window must end after it starts")
        cutoff_utc = _as_utc(cutoff) if cutoff is not None else start_utc - CANCELLATION_CUTOFF
        with self._transaction():
            mc = self._maintenance_from_id(config_id)
            name = start_utc.strftime("%Y%m%d%H%M%S")
            if name in mc.runs:
                raise ValueError(f"{config_id} already has a run starting at {name}")
            run = _MaintenanceRun(
                name=name,
                correlation_id=f"{self._mc_id(mc)}/providers/microsoft.maintenance/applyupdates/{name}",
                start=start_utc,
                end=end_utc,
                cutoff=cutoff_utc,
                scheduled_at=datetime.now(UTC),
            )
            mc.runs[name] = run
            self._announce("maintenance_scheduled", self._run_event(mc, run))
            key = (mc.resource_group.lower(), mc.name.lower())
            for when, kind in ((start_utc, "maintenance_started"), (end_utc, "maintenance_completed")):
                delay = max(0.0, (when - datetime.now(UTC)).total_seconds())
                self.world.scheduler.call_later(delay, partial(self._maintenance_tick, key, name, kind))
            return name, run.correlation_id

    def maintenance_run(self, correlation_id: str) -> dict[str, Any]:
        """The run as ``GET {correlationId}`` answers it (``properties.status`` etc.)."""
        with self._lock:
            mc, run = self._find_run(correlation_id)
            return self._apply_update_json(mc, run)

    # ---------------------------------------------------------------- maintenance helpers

    def _mc_id(self, mc: _MaintenanceConfig) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{mc.resource_group}"
            f"/providers/Microsoft.Maintenance/maintenanceConfigurations/{mc.name}"
        )

    def _maintenance_from_id(self, config_id: str) -> _MaintenanceConfig:
        m = _MC_ID.fullmatch(config_id.rstrip("/"))
        if m is None or m["sub"].lower() != self.subscription_id.lower():
            raise KeyError(f"not a maintenance configuration id of this subscription: {config_id}")
        mc = self._maintenance.get((m["rg"].lower(), m["name"].lower()))
        if mc is None:
            raise KeyError(f"no maintenance configuration {config_id}")
        return mc

    def _find_run(self, correlation_id: str) -> tuple[_MaintenanceConfig, _MaintenanceRun]:
        m = _RUN_ID.fullmatch(correlation_id.rstrip("/"))
        if m is None:
            raise KeyError(f"not a maintenance run id: {correlation_id}")
        mc = self._maintenance_from_id(m["config"])
        run = mc.runs.get(m["run"])
        if run is None:
            raise KeyError(f"no maintenance run {correlation_id}")
        return mc, run

    @staticmethod
    def _run_status(run: _MaintenanceRun, now: datetime) -> str:
        if run.cancelled_at is not None:
            return "Cancelled"
        if now < run.start:
            return "Pending"
        return "InProgress" if now < run.end else "Completed"

    def _apply_update_json(
        self, mc: _MaintenanceConfig, run: _MaintenanceRun, *, status: str | None = None
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        if run.cancelled_at is not None:
            updated = run.cancelled_at
        elif now >= run.end:
            updated = run.end
        elif now >= run.start:
            updated = run.start
        else:
            updated = run.scheduled_at
        return {
            "id": run.correlation_id.lower(),
            "name": run.name,
            "type": "Microsoft.Maintenance/applyUpdates",
            "properties": {
                "status": status or self._run_status(run, now),
                "resourceId": self._mc_id(mc),
                "lastUpdateTime": _zulu(updated),
            },
        }

    def _run_event(self, mc: _MaintenanceConfig, run: _MaintenanceRun) -> dict[str, Any]:
        return {
            "maintenance_configuration_id": self._mc_id(mc),
            "correlation_id": run.correlation_id,
            "run_id": run.name,
            "start": _zulu(run.start),
            "end": _zulu(run.end),
            "cutoff": _zulu(run.cutoff),
            "status": self._run_status(run, datetime.now(UTC)),
        }

    def _announce(self, kind: str, payload: dict[str, Any]) -> None:
        """Record ``kind`` in the history and queue it for listeners (inside a transaction)."""
        self.world.history.append(kind, **payload)
        self._pending_events.append((kind, payload))

    def _maintenance_tick(self, key: tuple[str, str], name: str, kind: str) -> None:
        with self._transaction():
            mc = self._maintenance.get(key)
            run = mc.runs.get(name) if mc else None
            if mc is None or run is None or run.cancelled_at is not None:
                return
            self._announce(kind, self._run_event(mc, run))

    def _maintenance_mc_json(self, mc: _MaintenanceConfig) -> dict[str, Any]:
        return {
            "id": self._mc_id(mc),
            "name": mc.name,
            "type": "Microsoft.Maintenance/maintenanceConfigurations",
            "location": mc.location,
            "tags": dict(mc.tags),
            "properties": deepcopy(mc.properties),
        }

    # ---------------------------------------------------------------- maintenance API

    def _lookup_mc(self, ctx: _Ctx, *, parent: bool = False) -> _MaintenanceConfig:
        self._check_subscription(ctx)
        rg, name = ctx.match["rg"], ctx.match["mc"]
        self._require_group(rg)
        mc = self._maintenance.get((rg.lower(), name.lower()))
        if mc is None:
            if parent:
                raise _parent_not_found(name)
            raise _resource_not_found(f"Microsoft.Maintenance/maintenanceConfigurations/{name}", rg)
        return mc

    def _api_list_maintenance_configurations(self, ctx: _Ctx) -> _Reply:
        self._check_subscription(ctx)
        self._require_group(ctx.match["rg"])
        rg = ctx.match["rg"].lower()
        items = [self._maintenance_mc_json(mc) for k, mc in sorted(self._maintenance.items()) if k[0] == rg]
        return _Reply(200, {"value": items})

    def _api_get_maintenance_configuration(self, ctx: _Ctx) -> _Reply:
        return _Reply(200, self._maintenance_mc_json(self._lookup_mc(ctx)))

    def _api_put_maintenance_configuration(self, ctx: _Ctx) -> _Reply:
        self._check_subscription(ctx)
        rg, name = ctx.match["rg"], ctx.match["mc"]
        self._require_group(rg)
        body = _require_body(ctx)
        if not body.get("location"):
            raise _ApiError(400, "LocationRequired", "The location property is required for this definition.")
        props = body.get("properties") or {}
        scope = props.get("maintenanceScope")
        if scope is not None and scope not in _MAINTENANCE_SCOPES:
            raise _ApiError(
                400,
                "InvalidParameter",
                f"The value '{scope}' of property 'maintenanceScope' is invalid.",
                target="properties.maintenanceScope",
            )
        key = (rg.lower(), name.lower())
        mc = self._maintenance.get(key)
        properties = {"namespace": "Microsoft.Maintenance", "visibility": "Custom", **deepcopy(props)}
        if mc is None:
            mc = _MaintenanceConfig(
                resource_group=rg, name=name, location=str(body["location"]), tags={}, properties=properties
            )
            self._maintenance[key] = mc
        else:
            mc.properties = properties
        mc.tags = {str(k): str(v) for k, v in (body.get("tags") or {}).items()}
        self.world.history.append("maintenance_configuration_put", resource_id=self._mc_id(mc))
        return _Reply(200, self._maintenance_mc_json(mc))

    def _lookup_run(self, ctx: _Ctx) -> tuple[_MaintenanceConfig, _MaintenanceRun]:
        mc = self._lookup_mc(ctx, parent=True)
        name = ctx.match["run"]
        run = mc.runs.get(name)
        if run is None:
            raise _ApiError(
                404,
                "NotFound",
                f"Maintenance run '{name}' of maintenance configuration '{mc.name}' was not found.",
            )
        return mc, run

    def _api_get_maintenance_run(self, ctx: _Ctx) -> _Reply:
        mc, run = self._lookup_run(ctx)
        return _Reply(200, self._apply_update_json(mc, run))

    def _api_cancel_maintenance_run(self, ctx: _Ctx) -> _Reply:
        if not _api_version_at_least(ctx.api_version, CANCEL_API_VERSION):
            raise _ApiError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{ctx.api_version}' does not support cancelling a maintenance run. "
                f"Use api-version '{CANCEL_API_VERSION}' or later.",
            )
        mc, run = self._lookup_run(ctx)
        body = _require_body(ctx)
        props = {str(k).lower(): v for k, v in (_get_ci(body, "properties") or {}).items()}
        wanted = props.get("status")
        if not (isinstance(wanted, str) and wanted.lower() == "cancel") and wanted != _CANCEL_ENUM:
            raise _ApiError(
                400,
                "InvalidParameter",
                "Only status 'Cancel' can be requested for a maintenance configuration's run.",
                target="properties.status",
            )
        now = datetime.now(UTC)
        if run.cancelled_at is None:
            if now >= run.cutoff:
                raise _ApiError(
                    409,
                    "Conflict",
                    f"Maintenance run '{run.name}' of maintenance configuration '{mc.name}' can no longer be "
                    f"cancelled: its cancellation cut-off time {_zulu(run.cutoff)} has passed "
                    f"(status {self._run_status(run, now)}).",
                )
            run.cancelled_at = now
            self._announce("maintenance_cancelled", self._run_event(mc, run))
        return _Reply(202, self._apply_update_json(mc, run, status="Cancel"))

    # ================================================================ Automation (Microsoft.Automation)

    def add_automation_account(self, resource_group: str, name: str) -> str:
        """An Automation account to hold software update configurations; returns its id."""
        with self._transaction():
            key = (resource_group.lower(), name.lower())
            if key in self._automation:
                raise ValueError(f"automation account {resource_group}/{name} already exists")
            aa = _AutomationAccount(
                resource_group=resource_group, name=name, location=self.location, created=_iso()
            )
            self._automation[key] = aa
            self.world.history.append("automation_account_added", resource_id=self._aa_id(aa))
            return self._aa_id(aa)

    def add_software_update_configuration(
        self,
        account_id: str,
        name: str,
        *,
        vm_ids: list[str],
        os: str = "Linux",
        duration: str = "PT2H",
        pre_task: str | None = None,
        post_task: str | None = None,
    ) -> dict[str, Any]:
        """A weekly software update configuration targeting ``vm_ids``; returns its GET body."""
        os_norm = _os_name(os)
        with self._transaction():
            aa = self._automation_from_id(account_id)
            if name.lower() in aa.configs:
                raise ValueError(f"software update configuration {name} already exists")
            created = datetime.now(UTC)
            cfg = _UpdateConfig(
                name=name,
                os=os_norm,
                vm_ids=list(vm_ids),
                duration=duration,
                created=_iso(created.timestamp()),
                start_time=_iso((created + timedelta(days=1)).replace(microsecond=0).timestamp()),
                pre_task=pre_task,
                post_task=post_task,
            )
            aa.configs[name.lower()] = cfg
            self.world.history.append(
                "software_update_configuration_added",
                resource_id=self._suc_id(aa, cfg),
                vm_ids=list(vm_ids),
                os=os_norm,
            )
            return self._suc_json(aa, cfg)

    def start_software_update_run(self, account_id: str, name: str) -> str:
        """Start a run of a configuration now; returns the run id (a GUID).

        The run is ``InProgress`` for ``ComputeDurations.software_update_run`` cloud
        seconds, then ``Succeeded``. Listeners get ``software_update_run_started`` and
        ``software_update_run_finished``.
        """
        with self._transaction():
            aa = self._automation_from_id(account_id)
            cfg = aa.configs.get(name.lower())
            if cfg is None:
                raise KeyError(f"no software update configuration {name} in {account_id}")
            run = _UpdateRun(
                run_id=str(uuid.uuid4()),
                config=cfg.name,
                os=cfg.os,
                duration=cfg.duration,
                computer_count=len({v.lower() for v in cfg.vm_ids}),
                start_time=_iso(),
                pre_task=cfg.pre_task,
                post_task=cfg.post_task,
            )
            aa.runs[run.run_id] = run
            self._announce("software_update_run_started", self._update_run_event(aa, run, cfg))
            key = (aa.resource_group.lower(), aa.name.lower())
            self.world.scheduler.call_later(
                self.world.clock.seconds(self.durations.software_update_run),
                lambda: self._finish_update_run(key, run.run_id),
            )
            return run.run_id

    # ---------------------------------------------------------------- automation helpers

    def _aa_id(self, aa: _AutomationAccount) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{aa.resource_group}"
            f"/providers/Microsoft.Automation/automationAccounts/{aa.name}"
        )

    def _suc_id(self, aa: _AutomationAccount, cfg: _UpdateConfig) -> str:
        return f"{self._aa_id(aa)}/softwareUpdateConfigurations/{cfg.name}"

    def _automation_from_id(self, account_id: str) -> _AutomationAccount:
        m = _AA_ID.fullmatch(account_id.rstrip("/"))
        if m is None or m["sub"].lower() != self.subscription_id.lower():
            raise KeyError(f"not an automation account id of this subscription: {account_id}")
        aa = self._automation.get((m["rg"].lower(), m["name"].lower()))
        if aa is None:
            raise KeyError(f"no automation account {account_id}")
        return aa

    def _update_run_event(
        self, aa: _AutomationAccount, run: _UpdateRun, cfg: _UpdateConfig | None
    ) -> dict[str, Any]:
        return {
            "automation_account_id": self._aa_id(aa),
            "software_update_configuration": run.config,
            "run_id": run.run_id,
            "status": run.status,
            "vm_ids": list(cfg.vm_ids) if cfg else [],
        }

    def _finish_update_run(self, key: tuple[str, str], run_id: str) -> None:
        with self._transaction():
            aa = self._automation.get(key)
            run = aa.runs.get(run_id) if aa else None
            if aa is None or run is None or run.status != "InProgress":
                return
            run.status, run.end_time = "Succeeded", _iso()
            run.modified = run.end_time
            self._announce(
                "software_update_run_finished",
                self._update_run_event(aa, run, aa.configs.get(run.config.lower())),
            )

    def _update_configuration_json(self, cfg: _UpdateConfig) -> dict[str, Any]:
        linux = cfg.os == "Linux"
        return {
            "operatingSystem": cfg.os,
            "windows": None
            if linux
            else {
                "includedUpdateClassifications": "Critical, Security",
                "excludedKbNumbers": None,
                "includedKbNumbers": None,
                "rebootSetting": "IfRequired",
            },
            "linux": {
                "includedPackageClassifications": "Critical, Security",
                "excludedPackageNameMasks": None,
                "includedPackageNameMasks": None,
                "rebootSetting": "IfRequired",
            }
            if linux
            else None,
            "duration": cfg.duration,
            "azureVirtualMachines": list(cfg.vm_ids),
            "nonAzureComputerNames": [],
            "targets": {"azureQueries": [], "nonAzureQueries": []},
        }

    @staticmethod
    def _suc_tasks(pre: str | None, post: str | None) -> dict[str, Any]:
        return {
            "preTask": {"source": pre, "parameters": None} if pre else None,
            "postTask": {"source": post, "parameters": None} if post else None,
        }

    def _suc_json(self, aa: _AutomationAccount, cfg: _UpdateConfig) -> dict[str, Any]:
        return {
            "id": self._suc_id(aa, cfg),
            "name": cfg.name,
            "type": "Microsoft.Automation/AutomationAccounts/softwareUpdateConfigurations",
            "properties": {
                "updateConfiguration": self._update_configuration_json(cfg),
                "scheduleInfo": {
                    "description": "",
                    "startTime": cfg.start_time,
                    "startTimeOffsetMinutes": 0,
                    "expiryTime": "9999-12-31T23:59:59.9999999+00:00",
                    "expiryTimeOffsetMinutes": 0,
                    "isEnabled": True,
                    "nextRun": cfg.start_time,
                    "nextRunOffsetMinutes": 0,
                    "interval": 1,
                    "frequency": "Week",
                    "creationTime": cfg.created,
                    "lastModifiedTime": cfg.created,
                    "timeZone": "UTC",
                    "advancedSchedule": {
                        "weekDays": ["Saturday"],
                        "monthDays": None,
                        "monthlyOccurrences": None,
                    },
                },
                "tasks": self._suc_tasks(cfg.pre_task, cfg.post_task),
                "provisioningState": "Succeeded",
                "createdBy": "",
                "error": None,
                "creationTime": cfg.created,
                "lastModifiedBy": "",
                "lastModifiedTime": cfg.created,
            },
        }

    def _suc_item_json(self, aa: _AutomationAccount, cfg: _UpdateConfig) -> dict[str, Any]:
        return {
            "name": cfg.name,
            "id": self._suc_id(aa, cfg),
            "properties": {
                "updateConfiguration": self._update_configuration_json(cfg),
                "tasks": self._suc_tasks(cfg.pre_task, cfg.post_task),
                "frequency": "Week",
                "startTime": cfg.start_time,
                "creationTime": cfg.created,
                "lastModifiedTime": cfg.created,
                "provisioningState": "Succeeded",
                "nextRun": cfg.start_time,
            },
        }

    def _update_run_json(self, aa: _AutomationAccount, run: _UpdateRun) -> dict[str, Any]:
        def task(source: str | None, job: str, started: bool) -> dict[str, Any] | None:
            if not source:
                return None
            return {"jobId": job, "source": source, "status": "Completed" if started else "New"}

        return {
            "id": f"{self._aa_id(aa)}/softwareUpdateConfigurationRuns/{run.run_id}",
            "name": run.run_id,
            "properties": {
                "softwareUpdateConfiguration": {"name": run.config},
                "status": run.status,
                "tasks": {
                    "preTask": task(run.pre_task, run.pre_job, True),
                    "postTask": task(run.post_task, run.post_job, run.end_time is not None),
                },
                "configuredDuration": run.duration,
                "osType": run.os,
                "startTime": run.start_time,
                "endTime": run.end_time,
                "computerCount": run.computer_count,
                "failedCount": 0,
                "creationTime": run.start_time,
                "createdBy": "",
                "lastModifiedBy": "",
                "lastModifiedTime": run.modified,
            },
        }

    # ---------------------------------------------------------------- automation API

    def _lookup_aa(self, ctx: _Ctx, *, parent: bool = False) -> _AutomationAccount:
        self._check_subscription(ctx)
        rg, name = ctx.match["rg"], ctx.match["aa"]
        self._require_group(rg)
        aa = self._automation.get((rg.lower(), name.lower()))
        if aa is None:
            if parent:
                raise _parent_not_found(name)
            raise _resource_not_found(f"Microsoft.Automation/automationAccounts/{name}", rg)
        return aa

    def _api_get_automation_account(self, ctx: _Ctx) -> _Reply:
        aa = self._lookup_aa(ctx)
        body = {
            "id": self._aa_id(aa),
            "name": aa.name,
            "type": "Microsoft.Automation/AutomationAccounts",
            "location": aa.location,
            "tags": {},
            "properties": {
                "sku": {"name": "Basic"},
                "state": "Ok",
                "creationTime": aa.created,
                "lastModifiedTime": aa.created,
                "publicNetworkAccess": True,
                "disableLocalAuth": False,
            },
        }
        return _Reply(200, body)

    def _api_list_software_update_configurations(self, ctx: _Ctx) -> _Reply:
        aa = self._lookup_aa(ctx, parent=True)
        configs = [cfg for _, cfg in sorted(aa.configs.items())]
        flt = ctx.query.get("$filter")
        if flt:
            m = _VM_FILTER.fullmatch(flt)
            if m is None:
                raise _automation_error(
                    400,
                    "BadRequest",
                    "The $filter is invalid: the sandbox supports only "
                    "properties/updateConfiguration/azureVirtualMachines/any(m: m eq 'ID').",
                )
            vm = m["vm"].lower()
            configs = [c for c in configs if vm in {v.lower() for v in c.vm_ids}]
        return _Reply(200, {"value": [self._suc_item_json(aa, c) for c in configs]})

    def _api_get_software_update_configuration(self, ctx: _Ctx) -> _Reply:
        aa = self._lookup_aa(ctx, parent=True)
        name = ctx.match["suc"]
        cfg = aa.configs.get(name.lower())
        if cfg is None:
            raise _automation_error(404, "NotFound", f"Software update configuration '{name}' was not found.")
        return _Reply(200, self._suc_json(aa, cfg))

    def _api_list_software_update_configuration_runs(self, ctx: _Ctx) -> _Reply:
        aa = self._lookup_aa(ctx, parent=True)
        runs = sorted(aa.runs.values(), key=lambda r: r.start_time, reverse=True)
        flt = ctx.query.get("$filter")
        if flt:
            for clause in re.split(r"\s+and\s+", flt.strip(), flags=re.IGNORECASE):
                m = _RUN_FILTER.fullmatch(clause)
                field_name = m["field"].lower() if m else ""
                if m is None or field_name not in _RUN_FILTER_FIELDS:
                    raise _automation_error(
                        400,
                        "BadRequest",
                        f"The $filter clause '{clause}' is invalid: the sandbox supports 'eq' on "
                        "properties/softwareUpdateConfiguration/name, properties/status, properties/osType.",
                    )
                attr, value = _RUN_FILTER_FIELDS[field_name], m["value"].lower()
                runs = [r for r in runs if str(getattr(r, attr)).lower() == value]
        skip = _int_query(ctx, "$skip")
        top = _int_query(ctx, "$top")
        runs = runs[skip or 0 :]
        if top is not None:
            runs = runs[:top]
        return _Reply(200, {"value": [self._update_run_json(aa, r) for r in runs]})

    def _api_get_software_update_configuration_run(self, ctx: _Ctx) -> _Reply:
        aa = self._lookup_aa(ctx, parent=True)
        run_id = ctx.match["run"]
        run = aa.runs.get(run_id.lower())
        if run is None:
            raise _automation_error(
                404, "NotFound", f"Software update configuration run '{run_id}' was not found."
            )
        return _Reply(200, self._update_run_json(aa, run))


# --------------------------------------------------------------------------- HTTP server

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourcegroups/(?P<rg>[^/]+)"
_VMSS_COLL = r"/providers/microsoft\.compute/virtualmachinescalesets"
_VMSS = _RG + _VMSS_COLL + r"/(?P<vmss>[^/]+)"
_VM = _VMSS + r"/virtualmachines/(?P<iid>[^/]+)"
_VM_COLL = _RG + r"/providers/microsoft\.compute/virtualmachines"
_FLEX_VM = _VM_COLL + r"/(?P<vm>[^/]+)"
_OPS = (
    _SUB
    + r"/providers/microsoft\.compute/locations/(?P<loc>[^/]+)"
    + r"/(?P<kind>operations|operationresults)/(?P<op>[^/]+)"
)
_GALLERY = _RG + r"/providers/microsoft\.compute/galleries/(?P<gallery>[^/]+)"
_GALLERY_IMAGE = _GALLERY + r"/images/(?P<image>[^/]+)"
_IMAGE_VERSION = _GALLERY_IMAGE + r"/versions/(?P<version>[^/]+)"
_MC_COLL = _RG + r"/providers/microsoft\.maintenance/maintenanceconfigurations"
_MC = _MC_COLL + r"/(?P<mc>[^/]+)"
_APPLY_UPDATE = _MC + r"/providers/microsoft\.maintenance/applyupdates/(?P<run>[^/]+)"
_AA = _RG + r"/providers/microsoft\.automation/automationaccounts/(?P<aa>[^/]+)"
_SUC_COLL = _AA + r"/softwareupdateconfigurations"
_SUC_RUNS = _AA + r"/softwareupdateconfigurationruns"

# (method, path regex, operation name, is write, ComputeState handler name)
_ROUTES: list[tuple[str, re.Pattern[str], str, bool, str]] = [
    (m, re.compile(p + r"/?", re.IGNORECASE), op, w, h)
    for m, p, op, w, h in [
        ("GET", _SUB + _VMSS_COLL, "list_scale_sets", False, "_api_list_scale_sets"),
        ("GET", _RG + _VMSS_COLL, "list_scale_sets", False, "_api_list_scale_sets"),
        ("GET", _VMSS, "get_scale_set", False, "_api_get_scale_set"),
        ("PUT", _VMSS, "update_model", True, "_api_put_scale_set"),
        ("PATCH", _VMSS, "update_model", True, "_api_patch_scale_set"),
        (
            "GET",
            _VMSS + r"/instanceview",
            "get_scale_set_instance_view",
            False,
            "_api_scale_set_instance_view",
        ),
        ("POST", _VMSS + r"/reimage", "reimage", True, "_api_reimage"),
        ("POST", _VMSS + r"/reimageall", "reimage_all", True, "_api_reimage_all"),
        ("POST", _VMSS + r"/manualupgrade", "manualupgrade", True, "_api_manualupgrade"),
        ("POST", _VMSS + r"/delete", "delete_instances", True, "_api_delete_instances"),
        ("GET", _VMSS + r"/virtualmachines", "list_vms", False, "_api_list_vms"),
        ("GET", _VM, "get_vm", False, "_api_get_vm"),
        ("DELETE", _VM, "delete_vm", True, "_api_delete_vm"),
        ("GET", _VM + r"/instanceview", "get_instance_view", False, "_api_get_instance_view"),
        ("POST", _VM + r"/reimage", "reimage", True, "_api_vm_reimage"),
        ("POST", _VM + r"/reimageall", "reimage_all", True, "_api_vm_reimage_all"),
        ("GET", _OPS, "poll", False, "_api_poll"),
        # Flexible scale sets' instances, through the single-VM API
        ("GET", _VM_COLL, "list_vms", False, "_api_list_flex_vms"),
        ("GET", _FLEX_VM, "get_vm", False, "_api_get_flex_vm"),
        ("GET", _FLEX_VM + r"/instanceview", "get_instance_view", False, "_api_flex_vm_instance_view"),
        ("POST", _FLEX_VM + r"/reimage", "reimage", True, "_api_flex_vm_reimage"),
        # Compute Gallery
        ("GET", _GALLERY, "get_gallery", False, "_api_get_gallery"),
        ("GET", _GALLERY + r"/images", "list_gallery_images", False, "_api_list_gallery_images"),
        ("GET", _GALLERY_IMAGE, "get_gallery_image", False, "_api_get_gallery_image"),
        ("PUT", _GALLERY_IMAGE, "put_gallery_image", True, "_api_put_gallery_image"),
        (
            "GET",
            _GALLERY_IMAGE + r"/versions",
            "list_gallery_image_versions",
            False,
            "_api_list_gallery_image_versions",
        ),
        ("GET", _IMAGE_VERSION, "get_gallery_image_version", False, "_api_get_gallery_image_version"),
        ("PUT", _IMAGE_VERSION, "put_gallery_image_version", True, "_api_put_gallery_image_version"),
        # Update Manager
        (
            "GET",
            _MC_COLL,
            "list_maintenance_configurations",
            False,
            "_api_list_maintenance_configurations",
        ),
        ("GET", _MC, "get_maintenance_configuration", False, "_api_get_maintenance_configuration"),
        ("PUT", _MC, "put_maintenance_configuration", True, "_api_put_maintenance_configuration"),
        ("GET", _APPLY_UPDATE, "get_maintenance_run", False, "_api_get_maintenance_run"),
        ("PUT", _APPLY_UPDATE, "cancel_maintenance_run", True, "_api_cancel_maintenance_run"),
        # Automation
        ("GET", _AA, "get_automation_account", False, "_api_get_automation_account"),
        (
            "GET",
            _SUC_COLL,
            "list_software_update_configurations",
            False,
            "_api_list_software_update_configurations",
        ),
        (
            "GET",
            _SUC_COLL + r"/(?P<suc>[^/]+)",
            "get_software_update_configuration",
            False,
            "_api_get_software_update_configuration",
        ),
        (
            "GET",
            _SUC_RUNS,
            "list_software_update_configuration_runs",
            False,
            "_api_list_software_update_configuration_runs",
        ),
        (
            "GET",
            _SUC_RUNS + r"/(?P<run>[^/]+)",
            "get_software_update_configuration_run",
            False,
            "_api_get_software_update_configuration_run",
        ),
    ]
]


@dataclass
class _Issued:
    resource: str
    expires_on: int


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


class ArmServer:
    """HTTPS front for a ComputeState, plus the managed-identity token endpoint."""

    def __init__(
        self,
        state: ComputeState,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: SandboxTLS | None = None,
    ) -> None:
        self.state = state
        self.identity_header = secrets.token_urlsafe(24)
        self.client_id = str(uuid.uuid4())
        self.tenant_id = str(uuid.uuid4())
        self.request_log: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        self._tokens: dict[str, _Issued] = {}
        self._token_lock = threading.Lock()
        self._httpd = _Server((host, port), self, tls.server_context() if tls else None)
        bound_host, bound_port = self._httpd.server_address[:2]
        shown = bound_host if isinstance(bound_host, str) else bound_host.decode()
        self.url = f"{'https' if tls else 'http'}://{shown}:{bound_port}"
        self.identity_endpoint = self.url + "/msi/token"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sandbox-arm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ArmServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def issue_token(self, resource: str = "https://management.azure.com/") -> str:
        """Mint a token as the identity endpoint would (for tests that bypass azure-identity)."""
        now = int(time.time())
        expires_on = now + _TOKEN_LIFETIME_S

        def b64(obj: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

        # JWT-shaped so tools that peek at claims see something plausible; it is not signed.
        token = ".".join(
            [
                b64({"typ": "JWT", "alg": "none"}),
                b64(
                    {
                        "aud": resource,
                        "iss": f"https://sts.windows.net/{self.tenant_id}/",
                        "iat": now,
                        "nbf": now,
                        "exp": expires_on,
                        "appid": self.client_id,
                        "oid": self.client_id,
                        "tid": self.tenant_id,
                        "jti": secrets.token_hex(8),
                    }
                ),
                secrets.token_urlsafe(16),
            ]
        )
        with self._token_lock:
            self._tokens[token] = _Issued(resource.rstrip("/"), expires_on)
        return token

    # ---------------------------------------------------------------- dispatch

    def _log(self, **entry: Any) -> None:
        with self._log_lock:
            self.request_log.append(entry)

    def _dispatch(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        raw: bytes,
        *,
        client: tuple[str, int] | None = None,
        client_gone: Callable[[], bool] | None = None,
    ) -> _Reply:
        parts = urlsplit(target)
        path = unquote(parts.path).rstrip("/") or "/"
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        lquery = {k.lower(): v for k, v in query.items()}
        started = time.time()
        if path.lower() == "/msi/token":
            reply = self._msi(method, headers, lquery)
            self._log(
                t=started,
                method=method,
                path=path,
                query=query,
                status=reply.status,
                operation="msi_token",
                write=False,
                resource_group=None,
                scale_set=None,
            )
            return reply

        operation: str | None = None
        write = False
        handler: str | None = None
        match: dict[str, str] = {}
        path_known = False
        for r_method, rx, r_op, r_write, r_handler in _ROUTES:
            m = rx.fullmatch(path)
            if m:
                path_known = True
                if r_method == method:
                    operation, write, handler, match = r_op, r_write, r_handler, m.groupdict()
                    break

        # ARM assigns the correlation id before the provider sees the request (resource
        # events carry it as data.correlationId), so handlers get it in their headers.
        corr = headers.get("x-ms-correlation-request-id") or str(uuid.uuid4())
        headers = {**headers, "x-ms-correlation-request-id": corr}
        reply = self._serve_arm(
            method=method,
            path=path,
            headers=headers,
            raw=raw,
            query=query,
            lquery=lquery,
            operation=operation,
            handler=handler,
            match=match,
            path_known=path_known,
            client=client,
            client_gone=client_gone,
        )
        reply.headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        reply.headers["x-ms-correlation-request-id"] = corr
        reply.headers["x-ms-routing-request-id"] = (
            f"{self.state.location.upper()}:{datetime.now(UTC):%Y%m%dT%H%M%SZ}:{corr}"
        )
        if reply.status != 401:
            kind = "writes" if write else "reads"
            reply.headers[f"x-ms-ratelimit-remaining-subscription-{kind}"] = "1199" if write else "11999"
        reply.headers.update({"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "-1"})
        entry: dict[str, Any] = {}
        if reply.fault is not None:
            entry["fault"] = reply.fault
        self._log(
            t=started,
            method=method,
            path=path,
            query=query,
            # 0: the client got no answer (a dropped connection, or a held write abandoned).
            status=0 if reply.drop_after is not None else reply.status,
            operation=operation,
            write=write,
            resource_group=match.get("rg"),
            scale_set=match.get("vmss"),
            **entry,
        )
        return reply

    def _serve_arm(
        self,
        *,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        query: dict[str, str],
        lquery: dict[str, str],
        operation: str | None,
        handler: str | None,
        match: dict[str, str],
        path_known: bool,
        client: tuple[str, int] | None = None,
        client_gone: Callable[[], bool] | None = None,
    ) -> _Reply:
        denied = self._authenticate(headers)
        if denied is not None:
            return denied
        api_version = lquery.get("api-version", "")
        if not api_version:
            return _Reply(
                400,
                arm_error(
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                ),
            )
        if handler is None or operation is None:
            if path_known:
                return _Reply(
                    405,
                    arm_error(
                        "MethodNotAllowed", f"The HTTP method '{method}' is not supported at '{path}'."
                    ),
                )
            return _Reply(404, arm_error("NotFound", f"No HTTP resource was found that matches '{path}'."))

        fault = self.state.faults._take_request_fault(operation)
        if fault is not None:
            reply = _Reply(
                fault.status,
                arm_error(
                    fault.code,
                    _KNOWN_ERROR_MESSAGES.get(fault.code, f"Injected failure '{fault.code}'.")
                    + " (injected by the sandbox)",
                ),
            )
            if fault.retry_after is not None:
                reply.headers["Retry-After"] = str(fault.retry_after)
            return reply

        body: Any = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                return _Reply(
                    400,
                    arm_error(
                        "InvalidRequestContent",
                        "The request content was invalid and could not be deserialized.",
                    ),
                )
        ctx = _Ctx(
            match=match,
            query={k if not k.startswith("$") else k.lower(): v for k, v in query.items()},
            body=body,
            headers=headers,
            base_url=self.url,
            api_version=api_version,
        )
        state = self.state
        hold = state.faults._take_hold(operation)
        if hold is not None:
            port = int(self._httpd.server_address[1])
            if not state.faults._hold(
                hold, operation, client or ("", 0), port, client_gone or (lambda: False)
            ):
                # The client is gone: ARM never saw the request, and nobody reads an answer.
                return _Reply(0, drop_after=0.0, fault="held_abandoned")
        try:
            with state._transaction():
                answer: _Reply = getattr(state, handler)(ctx)
        except _ApiError as err:
            return err.reply
        except Exception:
            logger.exception("sandbox ARM handler %s failed", handler)
            return _Reply(500, arm_error("InternalServerError", "The sandbox failed to process the request."))
        if answer.status < 300:
            accepted = state.faults._take_accepted_fault(operation)
            if accepted is not None:
                return self._ambiguous_answer(accepted, answer)
        return answer

    @staticmethod
    def _ambiguous_answer(fault: _AcceptedFault, accepted: _Reply) -> _Reply:
        """What the client gets for a write ARM accepted, under an ``accept_then_*`` fault."""
        request_id = accepted.headers.get("x-ms-request-id")
        if fault.status is None:
            reply = _Reply(0, drop_after=fault.drop_after, fault="accept_then_drop")
        else:
            reply = _Reply(
                fault.status,
                arm_error(
                    fault.code,
                    _KNOWN_ERROR_MESSAGES.get(fault.code, f"Injected failure '{fault.code}'.")
                    + " (injected by the sandbox after accepting the request)",
                ),
                fault="accept_then_fail",
            )
        if request_id:
            reply.headers["x-ms-request-id"] = request_id
        return reply

    def _authenticate(self, headers: dict[str, str]) -> _Reply | None:
        challenge = {
            "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/'
            f'{self.tenant_id}", error="invalid_token", error_description="The authentication failed."'
        }
        auth = headers.get("authorization", "")
        if not auth:
            return _Reply(
                401,
                arm_error(
                    "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
                ),
                dict(challenge),
            )
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _Reply(
                401,
                arm_error(
                    "AuthenticationFailed", "Authentication failed. The 'Authorization' header is invalid."
                ),
                dict(challenge),
            )
        with self._token_lock:
            issued = self._tokens.get(token.strip())
        if issued is None:
            return _Reply(
                401,
                arm_error("InvalidAuthenticationToken", "The access token is invalid."),
                dict(challenge),
            )
        if issued.expires_on <= time.time():
            return _Reply(
                401,
                arm_error(
                    "ExpiredAuthenticationToken",
                    "The access token expiry UTC time is earlier than current UTC time.",
                ),
                dict(challenge),
            )
        if issued.resource not in _ARM_RESOURCES:
            return _Reply(
                401,
                arm_error(
                    "InvalidAuthenticationTokenAudience",
                    f"The access token has been obtained for wrong audience or resource '{issued.resource}'.",
                ),
                dict(challenge),
            )
        return None

    def _msi(self, method: str, headers: dict[str, str], query: dict[str, str]) -> _Reply:
        """App Service managed identity protocol (api-version 2019-08-01)."""

        def fail(status: int, message: str) -> _Reply:
            return _Reply(
                status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())}
            )

        if method != "GET":
            return fail(405, "Only GET is supported.")
        secret = headers.get("x-identity-header")
        if not secret:
            return fail(400, "The X-IDENTITY-HEADER header is required.")
        if not secrets.compare_digest(secret, self.identity_header):
            return fail(401, "Unauthorized: the X-IDENTITY-HEADER value does not match.")
        fault = self.state.faults._take_request_fault("msi_token")
        if fault is not None:
            reply = fail(fault.status, f"Injected failure '{fault.code}' (injected by the sandbox).")
            if fault.retry_after is not None:
                reply.headers["Retry-After"] = str(fault.retry_after)
            return reply
        if not query.get("api-version"):
            return fail(400, "The api-version query parameter is required.")
        resource = query.get("resource")
        if not resource:
            return fail(400, "The resource query parameter is required.")
        wanted = query.get("client_id")
        if wanted and wanted != self.client_id:
            return fail(400, f"No managed identity with client_id '{wanted}' is assigned to this app.")
        token = self.issue_token(resource)
        with self._token_lock:
            expires_on = self._tokens[token].expires_on
        return _Reply(
            200,
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": self.client_id,
            },
        )
