"""Compute's throttling: one token bucket per scale set for writes, reported read budgets."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from sandbox.arm.replies import _ApiError, _iso


@dataclass
class WriteLimit:
    """Compute's "Update VMSS" per-resource token bucket (capacity / refill per cloud minute)."""

    burst: int = 12
    per_minute: float = 4.0


class _TokenBucket:
    def __init__(self, capacity: float, refill_per_s: float) -> None:
        self.capacity = capacity
        self.rate = refill_per_s
        self.tokens = float(capacity)
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def take_soft(self) -> None:
        """Charge a read: counts down the reported headroom but never refuses."""
        self._refill()
        self.tokens = max(0.0, self.tokens - 1.0)

    def remaining(self) -> int:
        self._refill()
        return math.floor(self.tokens)

    def seconds_until_token(self) -> float:
        self._refill()
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


def read_headers(bucket: _TokenBucket, policy: str) -> dict[str, str]:
    """Charge a read to its budget and report what is left (reads are never refused)."""
    bucket.take_soft()
    return {"x-ms-ratelimit-remaining-resource": f"Microsoft.Compute/{policy};{bucket.remaining()}"}


def charge_write(bucket: _TokenBucket, limit: WriteLimit) -> dict[str, str]:
    """Take a write token or raise 429 the way Compute does."""
    ok = bucket.take()
    policy = "VMScaleSetActions3Min"
    header = {"x-ms-ratelimit-remaining-resource": f"Microsoft.Compute/{policy};{bucket.remaining()}"}
    if ok:
        return header
    wait = bucket.seconds_until_token()
    now = time.time()
    detail = {
        "operationGroup": "VMScaleSetActions3Min",
        "startTime": _iso(now),
        "endTime": _iso(now + wait),
        "allowedRequestCount": limit.burst,
        "measuredRequestCount": limit.burst + 1,
    }
    err = _ApiError(
        429,
        "OperationNotAllowed",
        "The server rejected the request because too many requests have been received for this subscription.",
        details=[
            {"code": "TooManyRequests", "target": "VMScaleSetActions3Min", "message": json.dumps(detail)}
        ],
    )
    err.reply.headers.update(header)
    err.reply.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    raise err
