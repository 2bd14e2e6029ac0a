"""Shared plumbing for the simulated services: one clock, one scheduler, one history.

The simulated ARM and Kubernetes servers run in the same process and share these
objects, so that a reimage seen by ARM and the NotReady node seen by Kubernetes are
two views of one event, exactly as in a real cluster.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SandboxClock:
    """Maps cloud durations (what Azure would take) to sandbox wall time.

    ``scale`` = 0.01 makes a 300 s reimage take 3 s. Rate limits scale the same way,
    so "4 writes per minute" becomes "4 writes per 0.6 s" at that scale.
    """

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"time scale must be positive, got {scale}")
        self.scale = scale

    def seconds(self, cloud_seconds: float) -> float:
        return cloud_seconds * self.scale

    @staticmethod
    def now() -> float:
        return time.monotonic()


class Scheduler:
    """Runs callbacks after a delay on one background thread (timers for boots, LROs, grace periods)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="sandbox-scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._counter), fn))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = None if not self._heap else self._heap[0][0] - time.monotonic()
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # a broken callback must not stop the world's clock
                logger.exception("sandbox scheduled callback failed")


class History:
    """Append-only JSON-lines record of every state change the sandbox serves.

    Invariant checks (budget never exceeded, no reimage with pods still running) read
    this file from the outside, so it is flushed line by line.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._file = path.open("a", encoding="utf-8") if path else None

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            record = {"t": time.time(), "at": utcnow_iso(), "kind": kind, **fields}
            self._records.append(record)
            if self._file:
                self._file.write(json.dumps(record, sort_keys=True) + "\n")
                self._file.flush()
            return record

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def close(self) -> None:
        with self._lock:
            if self._file:
                self._file.close()
                self._file = None


class World:
    """What the simulated services share: clock, scheduler, history."""

    def __init__(self, *, time_scale: float = 1.0, history_path: Path | None = None) -> None:
        self.clock = SandboxClock(time_scale)
        self.scheduler = Scheduler()
        self.history = History(history_path)

    def close(self) -> None:
        self.scheduler.stop()
        self.history.close()
