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


@dataclass(frozen=True)
class AppSettings:
    config_path: str
    storage_connection_string: str | None = None
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    runs_table: str = "patchruns"
    arm_endpoint: str = "https://management.azure.com"
    arm_audience: str = "https://management.azure.com"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AppSettings:
        env = os.environ if env is None else env
        config_path = env.get("PATCHER_CONFIG_PATH", "").strip()
        if not config_path:
            raise ConfigError("app setting PATCHER_CONFIG_PATH is required (path of the YAML configuration)")
        conn = env.get(STORAGE, "").strip() or None
        if conn == "UseDevelopmentStorage=true":
            conn = (
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
                "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
                "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
                "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
            )
        # Identity-based connection, as the Functions host itself reads it.
        account = env.get(f"{STORAGE}__accountName", "").strip()
        queue_uri = env.get(f"{STORAGE}__queueServiceUri", "").strip() or (
            f"https://{account}.queue.core.windows.net" if account else None
        )
        table_uri = env.get(f"{STORAGE}__tableServiceUri", "").strip() or (
            f"https://{account}.table.core.windows.net" if account else None
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
        )


@lru_cache(maxsize=1)
def azure_credential() -> Any:
    """One credential per process: managed identity in Azure (and in the sandbox, which
    serves the same identity endpoint), developer credentials elsewhere."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)
