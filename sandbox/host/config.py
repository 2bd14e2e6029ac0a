"""host.json and app settings, read and checked as the host does at start-up."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_BODY_LIMIT = 100 * 1024 * 1024
HOST_QUEUE_LEASE_SECONDS = 600.0
HOST_LOCK_RETRY_SECONDS = 60.0
LISTENER_LOCK_SECONDS = 15  # the shortest lease Azure Storage allows
LISTENER_LOCK_RENEW_SECONDS = 5.0
MIN_POLLING_INTERVAL = 0.1
HOSTS_CONTAINER = "azure-webjobs-hosts"


class RunnerConfigError(RuntimeError):
    """The app or its configuration would also stop the real host from starting."""


# --------------------------------------------------------------------------- helpers


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,7}))?)?$")


def parse_timespan(text: str) -> float | None:
    """Seconds in a .NET TimeSpan string (``[d.]hh:mm[:ss[.fffffff]]``), or None."""
    m = _TIMESPAN.match(text.strip())
    if not m:
        return None
    days, hours, minutes, seconds, fraction = m.groups()
    if int(hours) > 23 or int(minutes) > 59 or (seconds and int(seconds) > 59):
        return None
    total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0)
    return total + (float(f"0.{fraction}") if fraction else 0.0)


def _timespan_setting(section: Mapping[str, Any], key: str, default: float) -> float:
    value = section.get(key)
    if value is None:
        return default
    seconds = parse_timespan(value) if isinstance(value, str) else None
    if seconds is None:
        raise RunnerConfigError(f"host.json extensions.queues.{key} must be a TimeSpan string, got {value!r}")
    return seconds


_SETTING_REF = re.compile(r"%([^%]+)%")


def resolve_setting_refs(value: str, settings: Mapping[str, str]) -> str:
    """Replace ``%Name%`` with the app setting, failing like the host's indexing does."""

    def lookup(m: re.Match[str]) -> str:
        key = m.group(1)
        found = settings.get(key, os.environ.get(key))
        if found is None:
            raise RunnerConfigError(f"'%{key}%' does not resolve to a value (no app setting {key!r})")
        return found

    return _SETTING_REF.sub(lookup, value)


# --------------------------------------------------------------------------- host.json


@dataclass(frozen=True)
class QueueOptions:
    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    max_polling_interval: float = 60.0
    message_encoding: str = "base64"


@dataclass(frozen=True)
class HostConfig:
    route_prefix: str
    queues: QueueOptions
    raw: dict[str, Any]


def load_host_config(app_dir: Path) -> HostConfig:
    path = app_dir / "host.json"
    raw: dict[str, Any] = (
        json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"version": "2.0"}
    )
    if raw.get("version") != "2.0":
        raise RunnerConfigError(f'{path}: the host requires "version": "2.0"')
    extensions = raw.get("extensions") or {}
    prefix = (extensions.get("http") or {}).get("routePrefix", "api")
    q = extensions.get("queues") or {}
    batch = int(q.get("batchSize", 16))
    if not 1 <= batch <= 32:
        raise RunnerConfigError(f"host.json extensions.queues.batchSize must be 1-32, got {batch}")
    threshold = q.get("newBatchThreshold")
    new_batch_threshold = (batch // 2) * (os.cpu_count() or 1) if threshold in (None, -1) else int(threshold)
    max_polling = _timespan_setting(q, "maxPollingInterval", 60.0)
    if max_polling < MIN_POLLING_INTERVAL:
        raise RunnerConfigError(
            "host.json extensions.queues.maxPollingInterval must be at least 00:00:00.100"
        )
    encoding = str(q.get("messageEncoding", "base64")).lower()
    if encoding not in ("base64", "none"):
        raise RunnerConfigError(
            f"host.json extensions.queues.messageEncoding must be base64 or none, got {encoding}"
        )
    options = QueueOptions(
        batch_size=batch,
        new_batch_threshold=new_batch_threshold,
        max_dequeue_count=int(q.get("maxDequeueCount", 5)),
        visibility_timeout=_timespan_setting(q, "visibilityTimeout", 0.0),
        max_polling_interval=max_polling,
        message_encoding=encoding,
    )
    return HostConfig(route_prefix=str(prefix).strip("/"), queues=options, raw=raw)
