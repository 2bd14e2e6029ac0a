"""The declarative configuration: clusters, pools, budgets, drain options, timings.

One YAML file, its path in the app setting ``PATCHER_CONFIG_PATH``, validated once at
start-up. Every duration is a setting with a production default, so the sandbox can run
the same code with short ones. Errors name the offending field and value.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from shared import PRODUCT_PREFIX
from shared.errors import ConfigError

SCALE_SET_ID_RE = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<resource_group>[^/]+)"
    r"/providers/Microsoft\.Compute/virtualMachineScaleSets/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
PERCENT_RE = re.compile(r"^(\d{1,3})%$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


Seconds = Annotated[timedelta, Field(description="seconds, or ISO 8601 (PT10M), or HH:MM:SS")]


class SettingRef(_Model):
    """A value kept in an app setting (in Azure: a Key Vault reference), never in this file."""

    setting: str = Field(min_length=1)


class DrainOptions(_Model):
    timeout: Seconds = timedelta(minutes=15)
    delete_emptydir_data: bool = Field(False, alias="deleteEmptyDirData")
    force: bool = False
    grace_period_seconds: int | None = Field(None, alias="gracePeriodSeconds", ge=0)
    on_timeout: Literal["fail", "skip"] = Field("fail", alias="onTimeout")


class PoolConfig(_Model):
    name: str = Field(min_length=1, max_length=63)
    scale_set_id: str = Field(alias="scaleSetId")
    os: Literal["linux", "windows"] = "linux"
    max_unavailable: int | str = Field(1, alias="maxUnavailable")
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    opt_out_label: str = Field(f"{PRODUCT_PREFIX}/opt-out", alias="optOutLabel")
    drain: DrainOptions = DrainOptions()
    reimage_timeout: Seconds = Field(timedelta(minutes=60), alias="reimageTimeout")
    boot_timeout: Seconds | None = Field(None, alias="bootTimeout")

    @field_validator("scale_set_id")
    @classmethod
    def _scale_set_id(cls, value: str) -> str:
        if not SCALE_SET_ID_RE.match(value):
            raise ValueError(
                "must be a scale set resource id "
                "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/NAME"
            )
        return value

    @field_validator("max_unavailable")
    @classmethod
    def _max_unavailable(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("must be at least 1 (a budget of 0 would never patch anything)")
            return value
        match = PERCENT_RE.match(value.strip())
        if not match or not 1 <= int(match.group(1)) <= 100:
            raise ValueError("must be a positive count or a percentage from 1% to 100%")
        return value.strip()

    @property
    def effective_boot_timeout(self) -> timedelta:
        # Windows nodes take several times longer to boot and join than Linux ones.
        if self.boot_timeout is not None:
            return self.boot_timeout
        return timedelta(minutes=30) if self.os == "windows" else timedelta(minutes=15)

    @cached_property
    def scale_set(self) -> dict[str, str]:
        match = SCALE_SET_ID_RE.match(self.scale_set_id)
        assert match is not None
        return match.groupdict()


class ClusterConfig(_Model):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    kubeconfig: SettingRef
    max_concurrent_nodes: int = Field(4, alias="maxConcurrentNodes", ge=1)
    max_failed_nodes: int = Field(1, alias="maxFailedNodes", ge=1)
    pools: list[PoolConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_pools(self) -> ClusterConfig:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique within a cluster, repeated: {dupes}")
        return self

    def pool(self, name: str) -> PoolConfig:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


class WorkflowTiming(_Model):
    """How the per-node workflow waits. Production defaults; the sandbox shortens them."""

    poll_interval: Seconds = Field(timedelta(seconds=15), alias="pollInterval")
    drain_retry_interval: Seconds = Field(timedelta(seconds=5), alias="drainRetryInterval")
    lease_duration: Seconds = Field(timedelta(minutes=2), alias="leaseDuration")
    stall_after: Seconds = Field(timedelta(minutes=10), alias="stallAfter")
    max_transient_retries: int = Field(8, alias="maxTransientRetries", ge=0)
    retry_backoff_initial: Seconds = Field(timedelta(seconds=2), alias="retryBackoffInitial")
    retry_backoff_max: Seconds = Field(timedelta(minutes=5), alias="retryBackoffMax")
    max_reimage_attempts: int = Field(2, alias="maxReimageAttempts", ge=1)

    @model_validator(mode="after")
    def _stall_longer_than_lease(self) -> WorkflowTiming:
        if self.stall_after <= self.lease_duration:
            raise ValueError(
                "stallAfter must be longer than leaseDuration, or the sweeper races live workers"
            )
        if self.stall_after <= self.retry_backoff_max or self.stall_after <= self.poll_interval:
            raise ValueError(
                "stallAfter must be longer than retryBackoffMax and pollInterval, or waiting looks stalled"
            )
        return self


class PatcherConfig(_Model):
    clusters: list[ClusterConfig] = Field(min_length=1)
    workflow: WorkflowTiming = WorkflowTiming()

    @model_validator(mode="after")
    def _unique_clusters(self) -> PatcherConfig:
        names = [c.name for c in self.clusters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cluster names must be unique, repeated: {dupes}")
        return self

    def cluster(self, name: str) -> ClusterConfig:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(name)


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_config(data: Any, *, source: str = "configuration") -> PatcherConfig:
    try:
        return PatcherConfig.model_validate(data)
    except PydanticValidationError as exc:
        problems = []
        for err in exc.errors():
            where = _location(err["loc"]) or "(top level)"
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
            problems.append(f"{where}: {err['msg']} (got {shown})")
        raise ConfigError(f"invalid {source}: " + "; ".join(problems)) from None


def load_config(path: str | Path) -> PatcherConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
    return parse_config(data, source=f"configuration file {path}")
