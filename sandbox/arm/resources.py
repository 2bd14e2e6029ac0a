"""The records the simulated ARM keeps: scale sets, instances, operations, gallery images, maintenance."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sandbox.arm.limits import _TokenBucket
from sandbox.arm.replies import _iso


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
