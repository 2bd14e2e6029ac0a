"""The declarative configuration: clusters, pools, budgets, drain options, timings.

One YAML file, its path in the app setting ``PATCHER_CONFIG_PATH``, validated once at
start-up. Every duration is a setting with a production default, so the sandbox can run
the same code with short ones. Errors name the offending field and value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

from shared import PRODUCT_PREFIX
from shared.errors import ConfigError
from shared.validation import POOL_NAME_PATTERN, label_term_ok

SCALE_SET_ID_RE = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<resource_group>[^/]+)"
    r"/providers/Microsoft\.Compute/virtualMachineScaleSets/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
logger = logging.getLogger(__name__)
PERCENT_RE = re.compile(r"^(\d{1,3})%$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# Go's duration syntax (what Kubernetes users write: 15m, 720h, 1h30m) next to what
# pydantic already reads (seconds as a number, ISO 8601, HH:MM:SS).
_GO_DURATION_RE = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d))+$")


def _go_duration(value: Any) -> Any:
    if isinstance(value, str) and _GO_DURATION_RE.match(value.strip()):
        import durationpy

        try:
            return durationpy.from_str(value.strip())
        except durationpy.DurationError as exc:  # e.g. an overflow the pattern lets through
            raise ValueError(f"not a duration: {value!r} ({exc})") from None
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("a duration cannot be negative")
    return value


Seconds = Annotated[
    timedelta,
    BeforeValidator(_go_duration),
    AfterValidator(_not_negative),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "description": "seconds"},
                {
                    "type": "string",
                    "pattern": _GO_DURATION_RE.pattern,
                    "description": "Go duration: 15m, 720h",
                },
                {"type": "string", "pattern": "^P", "description": "ISO 8601: PT15M, P30D"},
                {"type": "string", "pattern": r"^\d+:\d{2}:\d{2}$", "description": "HH:MM:SS"},
            ]
        },
        mode="validation",
    ),
    Field(description="a duration: seconds (a number), Go style (15m, 720h), ISO 8601 (PT15M) or HH:MM:SS"),
]


class SettingRef(_Model):
    """A value kept in an app setting (in Azure: a Key Vault reference), never in this file."""

    setting: str = Field(min_length=1)


class DrainOptions(_Model):
    timeout: Seconds = timedelta(minutes=15)
    delete_emptydir_data: bool = Field(False, alias="deleteEmptyDirData")
    force: bool = False
    grace_period_seconds: int | None = Field(None, alias="gracePeriodSeconds", ge=0, description="seconds")
    on_timeout: Literal["fail", "skip"] = Field("fail", alias="onTimeout")


class PoolConfig(_Model):
    name: str = Field(min_length=1, max_length=63, pattern=POOL_NAME_PATTERN)
    scale_set_id: str = Field(alias="scaleSetId")
    os: Literal["linux", "windows"] = "linux"
    max_unavailable: int | str = Field(
        1, alias="maxUnavailable", description="nodes of the pool out at once: a count, or a percentage (25%)"
    )
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    opt_out_label: str = Field(f"{PRODUCT_PREFIX}/opt-out", alias="optOutLabel")
    drain: DrainOptions = DrainOptions()
    reimage_timeout: Seconds = Field(timedelta(minutes=60), alias="reimageTimeout")
    boot_timeout: Seconds | None = Field(None, alias="bootTimeout")
    estimated_node_duration: Seconds | None = Field(
        None,
        alias="estimatedNodeDuration",
        description="how long one node takes, to start none that could not finish before a window closes",
    )
    window: str | None = Field(None, description="name of a maintenance window; none = any time")
    max_node_age: Seconds | None = Field(None, alias="maxNodeAge")
    reboot_required_condition: str | None = Field(
        None, alias="rebootRequiredCondition", description="a Node condition type that asks for a reimage"
    )
    kubernetes_version: str | None = Field(
        None,
        alias="kubernetesVersion",
        description="kubelet version of the pool's images if no image tag says",
    )
    control_plane: bool = Field(
        False,
        alias="controlPlane",
        description="the pool's nodes run the control plane: patched only if this says so, one at a time",
    )
    allow_aks_managed: bool = Field(
        False,
        alias="allowAksManaged",
        description="patch a scale set of an AKS-managed node resource group (MC_...) anyway",
    )

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, value: dict[str, str]) -> dict[str, str]:
        # Joined into a label selector: a ',' or '!=' in either would add terms of its own.
        bad = sorted(repr(f"{k}={v}") for k, v in value.items() if not label_term_ok(k, v))
        if bad:
            raise ValueError(f"must be Kubernetes label keys and values, not {', '.join(bad)}")
        return value

    @field_validator("scale_set_id")
    @classmethod
    def _scale_set_id(cls, value: str) -> str:
        if not SCALE_SET_ID_RE.match(value):
            raise ValueError(
                "must be a scale set resource id "
                "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/NAME"
            )
        return value

    @model_validator(mode="after")
    def _not_aks_managed(self) -> PoolConfig:
        match = SCALE_SET_ID_RE.match(self.scale_set_id)
        group = match.group("resource_group") if match else ""
        if group.lower().startswith("mc_") and not self.allow_aks_managed:
            raise ValueError(
                f"pool {self.name}: {group} is an AKS-managed node resource group. Microsoft does not "
                "support changing AKS nodes through the scale-set API (it renders the cluster "
                "unsupportable): upgrade AKS node images with AKS itself (node image auto-upgrade or "
                "'az aks nodepool upgrade --node-image-only'). Set allowAksManaged: true to patch it anyway"
            )
        return self

    @model_validator(mode="after")
    def _control_plane_one_at_a_time(self) -> PoolConfig:
        # etcd keeps quorum only while a majority of members is up: one node at a time.
        if self.control_plane and self.max_unavailable != 1:
            raise ValueError(
                f"pool {self.name}: a control-plane pool patches one node at a time (maxUnavailable: 1), "
                f"not {self.max_unavailable}"
            )
        return self

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

    @property
    def effective_node_duration(self) -> timedelta:
        if self.estimated_node_duration is not None:
            return self.estimated_node_duration
        return timedelta(minutes=40) if self.os == "windows" else timedelta(minutes=20)

    @cached_property
    def scale_set(self) -> dict[str, str]:
        match = SCALE_SET_ID_RE.match(self.scale_set_id)
        assert match is not None
        return match.groupdict()


class AzureAdAuth(_Model):
    """Entra ID tokens for an API server that accepts them (AKS Engine's AAD integration,
    or a kubeadm API server with Entra ID as its OIDC issuer)."""

    server: str = Field(pattern=r"^https://", description="API server URL")
    ca_setting: str | None = Field(None, alias="caSetting", description="app setting with the CA (PEM)")
    audience: str = Field(
        # The Entra server application AKS uses, the same in every tenant; a self-managed
        # API server names its own (AKS Engine's serverAppID, kubeadm's --oidc-client-id).
        "6dae42f8-4368-4678-94ff-3960e28e3630",
        description="the API server's Entra application ID (the token audience)",
    )


class ProxyConfig(_Model):
    https: str = Field(pattern=r"^https?://")
    no_proxy: list[str] = Field(default_factory=list, alias="noProxy")


class ClusterConfig(_Model):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    kubeconfig: SettingRef | None = None
    azure_ad: AzureAdAuth | None = Field(None, alias="azureAd")
    proxy: ProxyConfig | None = None
    max_concurrent_nodes: int = Field(4, alias="maxConcurrentNodes", ge=1, description="nodes, across pools")
    max_failed_nodes: int = Field(
        1, alias="maxFailedNodes", ge=1, description="nodes failed before the run stops"
    )
    wave_order: Literal["budgets", "plan"] = Field(
        "budgets",
        alias="waveOrder",
        description=(
            "budgets: nodes whose pods would fight one PodDisruptionBudget start in different "
            "waves; plan: in plan order, the budgets serialising the drains (as kured does)"
        ),
    )
    pools: list[PoolConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_credential_and_unique_pools(self) -> ClusterConfig:
        if (self.kubeconfig is None) == (self.azure_ad is None):
            raise ValueError("set exactly one of kubeconfig (an app setting) or azureAd")
        if dupes := _repeated_names(self.pools):
            raise ValueError(f"pool names must be unique within a cluster, repeated: {dupes}")
        return self

    def pool(self, name: str) -> PoolConfig:
        return _named(self.pools, name)


class WorkflowTiming(_Model):
    """How the per-node workflow waits. Production defaults; the sandbox shortens them."""

    poll_interval: Seconds = Field(timedelta(seconds=15), alias="pollInterval")
    drain_retry_interval: Seconds = Field(timedelta(seconds=5), alias="drainRetryInterval")
    lease_duration: Seconds = Field(timedelta(minutes=2), alias="leaseDuration")
    stall_after: Seconds = Field(timedelta(minutes=10), alias="stallAfter")
    max_transient_retries: int = Field(
        8, alias="maxTransientRetries", ge=0, description="retries of one step"
    )
    retry_backoff_initial: Seconds = Field(timedelta(seconds=2), alias="retryBackoffInitial")
    retry_backoff_max: Seconds = Field(timedelta(minutes=5), alias="retryBackoffMax")
    max_reimage_attempts: int = Field(
        2, alias="maxReimageAttempts", ge=1, description="reimage writes per node"
    )
    # How often an image version that is still replicating, or that waits for a busy
    # cluster, is looked at again.
    image_recheck_interval: Seconds = Field(timedelta(seconds=60), alias="imageRecheckInterval")
    # Compute's "Update VMSS" limit is 12 at once and 4 per minute per scale set; stay
    # a little under it to leave room for other writers (model updates, people).
    write_burst: int = Field(10, alias="writeBurst", ge=1, description="writes at once per scale set")
    writes_per_minute: float = Field(
        3.5, alias="writesPerMinute", gt=0, description="writes per minute per scale set"
    )
    # Waits expected to end soon (evicted pods terminating, a rebooted node turning
    # Ready) are watched inside the invocation for up to this long, so the step moves on
    # the moment they end instead of one re-check interval (plus queue latency) later.
    inline_wait: Seconds = Field(timedelta(seconds=20), alias="inlineWait")
    # Nodes of one scale set drained at about the same time share one reimage write: when
    # fewer writes are in hand than nodes about to want one, the first one ready looks this
    # often whether a write's share of them has drained, and claims them then (or once
    # nothing more is draining, or after inlineWait). Compute allows ~4
    # writes a minute per scale set, so a write saved is worth about 15 s of waiting; 0
    # turns gathering off.
    batch_linger: Seconds = Field(timedelta(seconds=5), alias="batchLinger")
    # What a step's lease must still have when it sends the reimage write or the uncordon
    # (else it renews it first): the longest one call may take (2 x connect + read
    # timeout, 50 s by default, would be the strict figure) and the clocks' skew, so that no
    # other worker takes the node while the request is on its way.
    lease_margin: Seconds = Field(timedelta(seconds=45), alias="leaseMargin")

    @model_validator(mode="after")
    def _stall_longer_than_lease(self) -> WorkflowTiming:
        if self.stall_after <= self.lease_duration:
            raise ValueError(
                "stallAfter must be longer than leaseDuration, or the sweeper races live workers"
            )
        if self.lease_margin >= self.lease_duration:
            raise ValueError("leaseMargin must be shorter than leaseDuration, or every call renews the lease")
        if self.batch_linger > self.inline_wait:
            raise ValueError("batchLinger must not be longer than inlineWait: the leader waits in place")
        if self.inline_wait * 3 > self.lease_duration:
            raise ValueError(
                "inlineWait must be at most a third of leaseDuration: a step that waits in place "
                "must finish well within its lease"
            )
        if self.stall_after <= self.retry_backoff_max or self.stall_after <= self.poll_interval:
            raise ValueError(
                "stallAfter must be longer than retryBackoffMax and pollInterval, or waiting looks stalled"
            )
        return self


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAY_NAMES: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HHMM_RE = r"^([01]\d|2[0-3]):[0-5]\d$"


class WindowConfig(_Model):
    """A recurring maintenance window in its own time zone; may cross midnight."""

    name: str = Field(min_length=1)
    days: list[Day] = Field(
        default_factory=lambda: list(DAY_NAMES), description="days on which the window starts"
    )
    start: str = Field(pattern=HHMM_RE)
    end: str = Field(pattern=HHMM_RE)
    time_zone: str = Field("UTC", alias="timeZone")
    blackout_dates: list[str] = Field(default_factory=list, alias="blackoutDates")

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as Europe/Amsterdam") from None
        return value

    @field_validator("blackout_dates")
    @classmethod
    def _dates(cls, value: list[str]) -> list[str]:
        from datetime import date

        for item in value:
            try:
                date.fromisoformat(item)
            except ValueError:
                raise ValueError(f"{item!r} is not a date (YYYY-MM-DD)") from None
        return value


PoolRef = Annotated[str, Field(pattern=r"^[a-z0-9-]+/[^/]+$", description="CLUSTER/POOL")]


class MaintenanceMapping(_Model):
    """Azure Update Manager maintenance configuration -> the pools it patches."""

    maintenance_configuration_id: str = Field(alias="maintenanceConfigurationId")
    pools: list[PoolRef] = Field(min_length=1)


class GalleryImageMapping(_Model):
    """Compute Gallery image definition -> the pools built from it."""

    image_definition_id: str = Field(alias="imageDefinitionId")
    pools: list[PoolRef] = Field(min_length=1)
    pin_versions: bool = Field(
        True, alias="pinVersions", description="update the scale-set model to the new version"
    )
    kubernetes_version_tag: str = Field("kubernetesVersion", alias="kubernetesVersionTag")


class EventMappings(_Model):
    maintenance_configurations: list[MaintenanceMapping] = Field(
        default_factory=list, alias="maintenanceConfigurations"
    )
    gallery_images: list[GalleryImageMapping] = Field(default_factory=list, alias="galleryImages")
    # Azure Automation Update Management is retired and shut down: the field is still read,
    # so that a configuration written for an older release still loads, and ignored.
    automation_accounts: list[str] = Field(
        default_factory=list,
        alias="automationAccounts",
        description="retired with Azure Automation Update Management: ignored",
    )

    @model_validator(mode="after")
    def _automation_retired(self) -> EventMappings:
        if self.automation_accounts:
            logger.warning(
                "events.automationAccounts is ignored: Azure Automation Update Management was retired; "
                "map Update Manager maintenance configurations under events.maintenanceConfigurations"
            )
        return self


class GitRepositoryConfig(_Model):
    url: str = Field(min_length=1, description="https, ssh or scp-like URL of the configuration repository")
    clusters: list[str] = Field(default_factory=list, description="clusters to sync; empty = every cluster")


class GitOpsConfig(_Model):
    secrets: list[SettingRef] = Field(
        default_factory=list, max_length=2, description="webhook secrets (two during rotation)"
    )
    max_body_bytes: int = Field(
        5 * 1024 * 1024, alias="maxBodyBytes", ge=1024, le=25 * 1024 * 1024, description="bytes"
    )
    repositories: list[GitRepositoryConfig] = Field(default_factory=list)


NOTICE_KINDS = (
    "run-started",
    "run-succeeded",
    "run-failed",
    "circuit-breaker-opened",
    "node-left-cordoned",
    "run-stalled",
    "maintenance-run-cancelled",
    "image-refused",
    "gitops-sync-failed",
)


class NotificationTarget(_Model):
    """Where notices go: a Teams or Slack incoming webhook, or any webhook taking JSON."""

    kind: Literal["teams", "slack", "webhook"]
    url: SettingRef = Field(
        description="app setting holding the webhook URL (a credential: never in this file)"
    )
    events: list[Literal[NOTICE_KINDS]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="the notices this target wants; none listed = all"
    )


class PatcherConfig(_Model):
    clusters: list[ClusterConfig] = Field(min_length=1)
    workflow: WorkflowTiming = WorkflowTiming()
    windows: list[WindowConfig] = Field(default_factory=list)
    events: EventMappings = EventMappings()
    gitops: GitOpsConfig = GitOpsConfig()
    notifications: list[NotificationTarget] = Field(default_factory=list)
    retention: Seconds = Field(
        timedelta(days=90),
        description="ended runs (with their nodes) and GitOps sync records older than this are deleted",
    )

    @field_validator("retention")
    @classmethod
    def _retention_at_least_an_hour(cls, value: timedelta) -> timedelta:
        # A bare number is seconds: "90" meant as days would delete nearly every ended run.
        if value < timedelta(hours=1):
            raise ValueError(f"retention must be at least 1h (got {value.total_seconds():g}s)")
        return value

    @model_validator(mode="after")
    def _references(self) -> PatcherConfig:
        window_names = {w.name for w in self.windows}
        pools = {f"{c.name}/{p.name}" for c in self.clusters for p in c.pools}
        problems = []
        for c in self.clusters:
            for p in c.pools:
                if p.window and p.window not in window_names:
                    problems.append(f"pool {c.name}/{p.name} names unknown window {p.window!r}")
        mappings: list[MaintenanceMapping | GalleryImageMapping] = [
            *self.events.maintenance_configurations,
            *self.events.gallery_images,
        ]
        for m in mappings:
            for ref in m.pools:
                if ref not in pools:
                    problems.append(f"event mapping names unknown pool {ref!r}")
        cluster_names = {c.name for c in self.clusters}
        for repo in self.gitops.repositories:
            for name in repo.clusters:
                if name not in cluster_names:
                    problems.append(f"gitops repository {repo.url} names unknown cluster {name!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def window(self, name: str) -> WindowConfig:
        return _named(self.windows, name)

    @model_validator(mode="after")
    def _unique_clusters(self) -> PatcherConfig:
        dupes = _repeated_names(self.clusters)
        if dupes:
            raise ValueError(f"cluster names must be unique, repeated: {dupes}")
        return self

    def cluster(self, name: str) -> ClusterConfig:
        return _named(self.clusters, name)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_N = TypeVar("_N", bound=_Named)


def _named(items: Sequence[_N], name: str) -> _N:
    """The item called ``name``; KeyError if none is."""
    for item in items:
        if item.name == name:
            return item
    raise KeyError(name)


def _repeated_names(items: Sequence[_Named]) -> list[str]:
    names = [item.name for item in items]
    return sorted({n for n in names if names.count(n) > 1})


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


# A configuration of hundreds of clusters is well under this; anything larger is a mistake.
MAX_CONFIG_BYTES = 1024 * 1024


def load_config(path: str | Path) -> PatcherConfig:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"configuration file {path} is larger than {MAX_CONFIG_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    return parse_config_text(text, source=f"configuration file {path}")


def parse_config_text(text: str, *, source: str) -> PatcherConfig:
    """The configuration in YAML ``text`` (a file's or a blob's), validated; a ConfigError
    naming ``source`` otherwise."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source} nests too deeply") from None
    return parse_config(data, source=source)


def json_schema() -> dict[str, Any]:
    """The JSON schema editors use for the YAML file (``config/patcher.schema.json``)."""
    schema = PatcherConfig.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vmss-node-patcher configuration"
    return schema


if __name__ == "__main__":  # python -m shared.config > config/patcher.schema.json
    import json

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
