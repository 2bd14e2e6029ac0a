"""A simulated Azure Resource Manager for Microsoft.Compute virtual machine scale sets,
plus the few other resource types the patcher's triggers read: Compute Gallery image
definitions and versions, and Update Manager maintenance configurations and their runs
(``applyUpdates``).

Why it exists: the app talks to Azure only through the unmodified
``azure.mgmt.compute.ComputeManagementClient`` and ``DefaultAzureCredential``. To test
it without a subscription, this package serves the same REST surface over HTTPS (with the
sandbox CA from :mod:`sandbox.tls`), so the SDK, azure-core's ARM long-running-operation
poller, its retry policy and azure-identity's App Service managed-identity client all run
exactly as they would in Azure Functions. Nothing in the app needs a "sandbox" branch:
only ``base_url`` and the ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``/``REQUESTS_CA_BUNDLE``
settings differ.

Design:

* :class:`ComputeState` owns the scale sets, their VM instances and the long-running
  operations, all behind one lock. It is composed of one layer per resource provider
  (:mod:`~sandbox.arm.compute` with :mod:`~sandbox.arm.writes` and
  :mod:`~sandbox.arm.flexible`, :mod:`~sandbox.arm.gallery`, :mod:`~sandbox.arm.maintenance`)
  over :mod:`~sandbox.arm.store` (the lock, the stores, events) and :mod:`~sandbox.arm.lro`;
  each ``_api_*`` handler :mod:`~sandbox.arm.routes` names is a method of one layer.
  Time comes from the shared :class:`sandbox.world.World`: operation durations and the
  write-throttling bucket are given in cloud seconds and scaled by its clock, and
  completions are timers on its scheduler. Every state change is written to the world's
  history and announced to listeners *after* the lock is released, so a listener (e.g.
  the simulated Kubernetes API turning a node NotReady) may call back in.
* :class:`ArmServer` (:mod:`~sandbox.arm.server`) is the HTTP face: routing, bearer-token
  checks, ``api-version`` validation, fault injection, ARM headers and a request log. It
  also serves the App Service managed-identity token endpoint at ``/msi/token``
  (:mod:`~sandbox.arm.identity`), and only tokens it issued are accepted by the ARM
  routes, for the app's identity only what :mod:`~sandbox.arm.access` grants.
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
"""

from __future__ import annotations

from sandbox.arm.compute import computer_name
from sandbox.arm.faults import FaultInjector, HeldRequest
from sandbox.arm.gallery import IMAGE_VERSION_WRITE
from sandbox.arm.limits import WriteLimit
from sandbox.arm.maintenance import CANCELLATION_CUTOFF
from sandbox.arm.replies import arm_error
from sandbox.arm.server import ArmServer
from sandbox.arm.state import ComputeState
from sandbox.arm.store import ComputeDurations

__all__ = [
    "CANCELLATION_CUTOFF",
    "IMAGE_VERSION_WRITE",
    "ArmServer",
    "ComputeDurations",
    "ComputeState",
    "FaultInjector",
    "HeldRequest",
    "WriteLimit",
    "arm_error",
    "computer_name",
]
