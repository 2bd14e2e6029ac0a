"""The timer trigger: NCRONTAB schedules, the schedule monitor and the singleton listener lock."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.functions.timer import TimerRequest

from sandbox.host.config import (
    HOSTS_CONTAINER,
    LISTENER_LOCK_RENEW_SECONDS,
    LISTENER_LOCK_SECONDS,
    RunnerConfigError,
    _iso,
    _utcnow,
    parse_timespan,
)
from sandbox.host.indexing import IndexedFunction
from sandbox.host.storage import _Storage

if TYPE_CHECKING:
    from sandbox.host.runner import FunctionsRunner


class _BlobSingleton:
    """The host's listener lock: a blob lease only one host of an app can hold."""

    def __init__(self, storage: _Storage, host_id: str, function_name: str, owner: str) -> None:
        self.blob_name = f"locks/{host_id}/Host.Functions.{function_name}.Listener"
        self.owner = owner
        self._container = storage.blobs.get_container_client(HOSTS_CONTAINER)
        self._blob = self._container.get_blob_client(self.blob_name)
        self._lease: Any = None

    def try_acquire(self) -> bool:
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

        try:
            try:
                self._lease = self._blob.acquire_lease(lease_duration=LISTENER_LOCK_SECONDS)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    self._container.create_container()
                with contextlib.suppress(ResourceExistsError):
                    self._blob.upload_blob(b"", overwrite=False)
                self._lease = self._blob.acquire_lease(lease_duration=LISTENER_LOCK_SECONDS)
        except AzureError:
            self._lease = None
            return False
        with contextlib.suppress(AzureError):
            self._blob.set_blob_metadata({"FunctionInstance": self.owner}, lease=self._lease)
        return True

    def renew(self) -> bool:
        from azure.core.exceptions import AzureError

        if self._lease is None:
            return False
        try:
            self._lease.renew()
            return True
        except AzureError:
            return False

    def release(self) -> None:
        from azure.core.exceptions import AzureError

        if self._lease is not None:
            with contextlib.suppress(AzureError):
                self._lease.release()
            self._lease = None


class Schedule:
    """NCRONTAB (six fields, seconds first; or five) or a constant TimeSpan interval."""

    def __init__(self, expression: str) -> None:
        from croniter import croniter

        self.expression = expression
        self.interval: float | None = None
        self._six = False
        fields = expression.split()
        if len(fields) in (5, 6) and croniter.is_valid(expression, second_at_beginning=len(fields) == 6):
            self._six = len(fields) == 6
        else:
            self.interval = parse_timespan(expression)
            if not self.interval:
                raise RunnerConfigError(f"'{expression}' is not a valid NCRONTAB expression or TimeSpan")

    def next_after(self, moment: datetime) -> datetime:
        if self.interval is not None:
            return moment + timedelta(seconds=self.interval)
        from croniter import croniter

        # NCrontab requires day-of-month AND day-of-week to match (cron ORs them).
        it = croniter(self.expression, moment, second_at_beginning=self._six, day_or=False)
        nxt: datetime = it.get_next(datetime)
        return nxt

    def shortest_gap(self) -> float:
        first = self.next_after(_utcnow())
        return (self.next_after(first) - first).total_seconds()


class _TimerScheduler:
    """One timer function: singleton lock, monitor status blob, and the run loop."""

    def __init__(self, runner: FunctionsRunner, fn: IndexedFunction, storage: _Storage) -> None:
        self.runner = runner
        self.fn = fn
        self.storage = storage
        self.schedule = Schedule(fn.trigger["schedule"])
        self.run_on_startup = bool(fn.trigger.get("runOnStartup", False))
        # The host turns the monitor off for schedules more frequent than once a minute.
        self.use_monitor = bool(fn.trigger.get("useMonitor", True)) and self.schedule.shortest_gap() >= 60
        self.lock = _BlobSingleton(storage, runner.host_id, fn.name, owner=runner.instance_id)
        self.status_blob = storage.blobs.get_blob_client(
            HOSTS_CONTAINER, f"timers/{runner.host_id}/Host.Functions.{fn.name}/status"
        )
        self.log = runner.log
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{runner.name}-{fn.name}-timer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def stop(self, deadline: float) -> None:
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout=max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self.lock.try_acquire():
                self._stopping.wait(self.runner.lock_retry_seconds)
                continue
            self.log.info("%s holds the singleton lock for timer %r", self.runner.name, self.fn.name)
            self._lost.clear()
            renewer = threading.Thread(
                target=self._renew, name=f"{self.runner.name}-{self.fn.name}-lock", daemon=True
            )
            renewer.start()
            try:
                self._schedule_loop()
            except Exception:
                self.log.exception("timer %r stopped unexpectedly", self.fn.name)
            finally:
                held = not self._lost.is_set()
                self._lost.set()
                renewer.join(timeout=5)
                if held:
                    self.lock.release()
            if not self._stopping.is_set():
                self.log.warning("%s lost the singleton lock for timer %r", self.runner.name, self.fn.name)

    def _renew(self) -> None:
        while not self._lost.wait(LISTENER_LOCK_RENEW_SECONDS):
            if not self.lock.renew():
                self._lost.set()
                self._wake.set()

    def _should_exit(self) -> bool:
        return self._stopping.is_set() or self._lost.is_set()

    def _wait_until(self, moment: datetime) -> bool:
        while not self._should_exit():
            remaining = (moment - _utcnow()).total_seconds()
            if remaining <= 0:
                return False
            self._wake.wait(remaining)
            self._wake.clear()
        return True

    def _schedule_loop(self) -> None:
        status = self._read_status() if self.use_monitor else None
        past_due = bool(status and status.get("Next") and _parse_iso(status["Next"]) < _utcnow())
        if self.use_monitor and status is None:
            # Recorded at once, so an occurrence missed while no host runs is seen as past due.
            now = _utcnow()
            first = {"Last": "", "Next": _iso(self.schedule.next_after(now)), "LastUpdated": _iso(now)}
            self._write_status(first)
        if past_due or self.run_on_startup:
            self._fire(past_due=past_due, scheduled=_utcnow())
        next_at = self.schedule.next_after(_utcnow())
        while True:
            if self._wait_until(next_at):
                return
            self._fire(past_due=False, scheduled=next_at)
            following = self.schedule.next_after(next_at)
            if _utcnow() >= following:
                # The run overshot at least one occurrence: one catch-up at once, then
                # back on schedule; the missed occurrences are not replayed.
                if self._should_exit():
                    return
                self._fire(past_due=True, scheduled=following)
                next_at = self.schedule.next_after(_utcnow())
            else:
                next_at = following

    def _fire(self, *, past_due: bool, scheduled: datetime) -> None:
        status: dict[str, str] = {}
        if self.use_monitor:
            status = {
                "Last": _iso(scheduled),
                "Next": _iso(self.schedule.next_after(scheduled)),
                "LastUpdated": _iso(_utcnow()),
            }
        request = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})
        self.runner._invoke(self.fn, request)
        if self.use_monitor:
            status["Next"] = _iso(self.schedule.next_after(max(_utcnow(), scheduled)))
            self._write_status(status)

    def _read_status(self) -> dict[str, Any] | None:
        from azure.core.exceptions import AzureError

        try:
            data: dict[str, Any] = json.loads(self.status_blob.download_blob().readall())
            return data
        except (AzureError, ValueError):
            return None

    def _write_status(self, status: dict[str, str]) -> None:
        from azure.core.exceptions import AzureError

        try:
            self.status_blob.upload_blob(json.dumps(status).encode(), overwrite=True)
        except AzureError as exc:
            self.log.warning("writing the schedule status of %r failed: %s", self.fn.name, exc)


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
