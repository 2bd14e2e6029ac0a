"""Update Manager (``Microsoft.Maintenance``): maintenance configurations and their runs."""

from __future__ import annotations

import re
from copy import deepcopy
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sandbox.arm.replies import (
    _ApiError,
    _Ctx,
    _get_ci,
    _Reply,
    _require_body,
    _tracked_resource,
)
from sandbox.arm.resources import _MaintenanceConfig, _MaintenanceRun
from sandbox.arm.store import _Store

CANCEL_API_VERSION = "2023-09-01-preview"
# Update Manager: "the latest time to call cancel is T-10 minutes" (pre-post-scripts-overview.md).
CANCELLATION_CUTOFF = timedelta(minutes=10)


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

_CONFIGURATION_TYPE = "Microsoft.Maintenance/maintenanceConfigurations"


class _Maintenance(_Store):
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

    def _maintenance_tick(self, key: tuple[str, str], name: str, kind: str) -> None:
        with self._transaction():
            mc = self._maintenance.get(key)
            run = mc.runs.get(name) if mc else None
            if mc is None or run is None or run.cancelled_at is not None:
                return
            self._announce(kind, self._run_event(mc, run))

    def _maintenance_mc_json(self, mc: _MaintenanceConfig) -> dict[str, Any]:
        return _tracked_resource(
            self._mc_id(mc),
            _CONFIGURATION_TYPE,
            name=mc.name,
            location=mc.location,
            tags=mc.tags,
            properties=deepcopy(mc.properties),
        )

    # ---------------------------------------------------------------- maintenance API

    def _lookup_mc(self, ctx: _Ctx, *, parent: bool = False) -> _MaintenanceConfig:
        return self._find(ctx, self._maintenance, "mc", _CONFIGURATION_TYPE, parent=parent)

    def _api_list_maintenance_configurations(self, ctx: _Ctx) -> _Reply:
        rg = self._resource_group(ctx).lower()
        items = [self._maintenance_mc_json(mc) for k, mc in sorted(self._maintenance.items()) if k[0] == rg]
        return _Reply(200, {"value": items})

    def _api_get_maintenance_configuration(self, ctx: _Ctx) -> _Reply:
        return _Reply(200, self._maintenance_mc_json(self._lookup_mc(ctx)))

    def _api_put_maintenance_configuration(self, ctx: _Ctx) -> _Reply:
        rg, name = self._resource_group(ctx), ctx.match["mc"]
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
