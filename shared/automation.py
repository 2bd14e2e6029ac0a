"""Azure Automation Update Management: which machines a software update configuration targets.

Automation Update Management is retired (backend shut down in February 2025), but runbooks
still call pre-scripts in some estates; its replacement, Update Manager, arrives as Event
Grid maintenance events instead. We read the configuration rather than trusting the run
context's machine list alone: the context can hold duplicates and stale entries.
"""

from __future__ import annotations

import re
from typing import Any

from shared.compute import translate_azure_error
from shared.errors import PermanentError
from shared.settings import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT

ACCOUNT_RE = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<resource_group>[^/]+)"
    r"/providers/Microsoft\.Automation/automationAccounts/(?P<account>[^/]+)$",
    re.IGNORECASE,
)


class AutomationClient:
    def __init__(
        self,
        *,
        endpoint: str,
        audience: str,
        credential: Any,
        connection_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self._timeouts: dict[str, Any] = {
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
        }
        self._endpoint = endpoint
        self._audience = audience
        self._credential = credential
        self._clients: dict[str, Any] = {}

    def _client(self, subscription: str) -> Any:
        if subscription not in self._clients:
            from azure.mgmt.automation import AutomationClient as SdkClient

            self._clients[subscription] = SdkClient(
                self._credential,
                subscription,
                base_url=self._endpoint,
                credential_scopes=[f"{self._audience.rstrip('/')}/.default"],
                retry_total=0,
                **self._timeouts,
            )
        return self._clients[subscription]

    def configuration_vms(self, account_id: str, name: str) -> list[str]:
        """The Azure VM resource ids a software update configuration targets (lower-cased)."""
        match = ACCOUNT_RE.match(account_id)
        if not match:
            raise PermanentError(f"not an automation account id: {account_id}")
        parts = match.groupdict()
        client = self._client(parts["subscription"])
        try:
            config = client.software_update_configurations.get_by_name(
                parts["resource_group"], parts["account"], name
            )
        except Exception as exc:
            raise translate_azure_error(exc, f"get software update configuration {name}") from exc
        update = config.update_configuration
        vms = list(getattr(update, "azure_virtual_machines", None) or [])
        return list(dict.fromkeys(str(v).lower() for v in vms))
