"""Fault injection: the API server's answer to overload, conflicts and internal errors,
on the next requests that match a method and a path pattern."""

from __future__ import annotations

import threading
from typing import Any

from sandbox.kube.errors import KubeError

_FAULT_REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


class KubeFaults:
    """Fail the next N requests that match a method and a path pattern, with a real
    ``Status`` body: the API server's answer to overload, conflicts and internal errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[list[Any]] = []  # [method, compiled path regex, remaining, status]

    def fail_next(self, method: str, path_pattern: str, count: int = 1, *, status: int = 500) -> None:
        import re

        with self._lock:
            self._rules.append([method.upper(), re.compile(path_pattern), count, status])

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str) -> KubeError | None:
        with self._lock:
            for rule in self._rules:
                if rule[2] > 0 and rule[0] in (method, "*") and rule[1].search(path):
                    rule[2] -= 1
                    status = int(rule[3])
                    reason = _FAULT_REASONS.get(status, "InternalError")
                    message = (
                        "Operation cannot be fulfilled: the object has been modified; "
                        "please apply your changes to the latest version and try again"
                        if status == 409
                        else f"sandbox fault injection: {reason}"
                    )
                    return KubeError(status, reason, message)
        return None
