"""A scale set's ``upgradePolicy``: validated and stored as Compute does."""

from __future__ import annotations

import re
from copy import deepcopy
from typing import Any

from sandbox.arm.replies import _ApiError

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
