"""App settings read from the environment (Azure: app settings; locally: the runner).

Only wiring lives here (where storage is, which queue, which ARM endpoint, where the
configuration file is). What to patch and how is in the YAML configuration (``config``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from shared.errors import ConfigError

STORAGE = "AzureWebJobsStorage"
# Every outbound call (ARM, Table and Queue storage, the identity endpoint, the clusters'
# API servers) waits at most
# this long for a connection and then for each read of the answer: the SDKs' default is
# 300 s each, longer than a step's lease (120 s), so a hung endpoint would outlive the
# lease and a second worker would take the node while the first still acts on it.
CONNECT_TIMEOUT = "PATCHER_CONNECT_TIMEOUT"
READ_TIMEOUT = "PATCHER_READ_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
# Storage, the identity endpoint and the API servers are retried once by their clients
# when they could not connect (the first two also after a 5xx; ARM not at all: the queue
# does the waiting), never after a read timed out; so one call takes at most
# (1 + this) x connect + read.
SDK_RETRIES = 1
CONFIG_BLOB = "PATCHER_CONFIG_BLOB"
CONFIG_REFRESH = "PATCHER_CONFIG_REFRESH"
DEFAULT_CONFIG_REFRESH = 60.0


@dataclass(frozen=True)
class AppSettings:
    config_path: str
    storage_connection_string: str | None = None
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    runs_table: str = "patchruns"
    arm_endpoint: str = "https://management.azure.com"
    arm_audience: str = "https://management.azure.com"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    # The configuration as a blob of the app's storage ("container/name"), read instead of
    # config_path and re-read when it changes (shared/config_source.py).
    config_blob: str | None = None
    config_refresh: float = DEFAULT_CONFIG_REFRESH
    blob_service_uri: str | None = None

    @property
    def longest_call(self) -> float:
        """The longest one outbound call can take, SDK retries included (back-off aside)."""
        return (1 + SDK_RETRIES) * self.connect_timeout + self.read_timeout

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AppSettings:
        env = os.environ if env is None else env
        config_path = env.get("PATCHER_CONFIG_PATH", "").strip()
        config_blob = env.get(CONFIG_BLOB, "").strip() or None
        if not config_path and not config_blob:
            raise ConfigError(
                f"app setting PATCHER_CONFIG_PATH (path of the YAML configuration) or {CONFIG_BLOB} "
                "(container/name of a blob holding it) is required"
            )
        if config_blob is not None:
            container, _, name = config_blob.partition("/")
            if not container or not name:
                raise ConfigError(
                    f"app setting {CONFIG_BLOB} must be CONTAINER/BLOB_NAME (a container and a blob in it)"
                )
        conn = env.get(STORAGE, "").strip() or None
        # Identity-based connection, as the Functions host itself reads it.
        account = env.get(f"{STORAGE}__accountName", "").strip()
        queue_uri = env.get(f"{STORAGE}__queueServiceUri", "").strip() or (
            f"https://{account}.queue.core.windows.net" if account else None
        )
        table_uri = env.get(f"{STORAGE}__tableServiceUri", "").strip() or (
            f"https://{account}.table.core.windows.net" if account else None
        )
        blob_uri = env.get(f"{STORAGE}__blobServiceUri", "").strip() or (
            f"https://{account}.blob.core.windows.net" if account else None
        )
        if conn is None and not (queue_uri and table_uri):
            raise ConfigError(
                f"storage is not configured: set {STORAGE} (connection string) or "
                f"{STORAGE}__accountName (managed identity)"
            )
        return cls(
            config_path=config_path,
            storage_connection_string=conn,
            queue_service_uri=queue_uri,
            table_service_uri=table_uri,
            runs_table=env.get("PATCHER_RUNS_TABLE", "patchruns").strip() or "patchruns",
            arm_endpoint=env.get("PATCHER_ARM_ENDPOINT", "https://management.azure.com").rstrip("/"),
            arm_audience=env.get("PATCHER_ARM_AUDIENCE", "https://management.azure.com").rstrip("/"),
            connect_timeout=_seconds(CONNECT_TIMEOUT, env.get(CONNECT_TIMEOUT, ""), DEFAULT_CONNECT_TIMEOUT),
            read_timeout=_seconds(READ_TIMEOUT, env.get(READ_TIMEOUT, ""), DEFAULT_READ_TIMEOUT),
            config_blob=config_blob,
            config_refresh=_seconds(CONFIG_REFRESH, env.get(CONFIG_REFRESH, ""), DEFAULT_CONFIG_REFRESH),
            blob_service_uri=blob_uri,
        )


def _seconds(name: str, text: str, default: float) -> float:
    text = text.strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 300:
        # The value itself is not repeated: no message names what a setting holds.
        raise ConfigError(f"app setting {name} must be a number of seconds above 0 and at most 300")
    return value


def sdk_options(
    connect_timeout: float, read_timeout: float, *, retries: int = SDK_RETRIES, storage: bool = False
) -> dict[str, Any]:
    """Transport timeouts and a short retry, as Azure SDK client keyword arguments.

    ``storage``: the queue SDK's own back-off (15 s, then x3) would sleep through the
    lease; its keywords (``initial_backoff``, ``increment_base``) are its own."""
    options: dict[str, Any] = {
        "connection_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "retry_total": retries,
        # A read that timed out is not sent again: the time is spent, and a write may
        # have landed (the caller's next read tells).
        "retry_read": 0,
    }
    if storage:
        options.update(initial_backoff=0.5, increment_base=2)
    else:
        options.update(retry_backoff_factor=0.5, retry_backoff_max=2)
    return options


def storage_options(settings: Any, *, queue: bool = True) -> dict[str, Any]:
    """``sdk_options`` for a storage client built from ``settings`` (an ``AppSettings``, or
    anything with its storage fields: the default timeouts then). ``queue``: the queue
    SDK's own retry policy; Table storage uses azure-core's."""
    return sdk_options(
        getattr(settings, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        getattr(settings, "read_timeout", DEFAULT_READ_TIMEOUT),
        storage=queue,
    )


@lru_cache(maxsize=1)
def azure_credential() -> Any:
    """One credential per process: managed identity in Azure (and in the sandbox, which
    serves the same identity endpoint), developer credentials elsewhere."""
    from azure.identity import DefaultAzureCredential

    env = os.environ
    # The token request too: the identity endpoint hanging would otherwise hold the first
    # call of every client for 4 x 300 s (azure-core's default timeouts and read retries).
    options = sdk_options(
        _seconds(CONNECT_TIMEOUT, env.get(CONNECT_TIMEOUT, ""), DEFAULT_CONNECT_TIMEOUT),
        _seconds(READ_TIMEOUT, env.get(READ_TIMEOUT, ""), DEFAULT_READ_TIMEOUT),
    )
    return DefaultAzureCredential(exclude_interactive_browser_credential=True, **options)
