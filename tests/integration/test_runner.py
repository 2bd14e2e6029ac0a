"""The local Functions host (sandbox/host/) against Azurite, with the fixture app.

One Azurite serves the module. One runner runs in-process (HTTP, Event Grid and queue
behaviour, inspected through its ``invocations``), and a pair of runner processes
shares one queue and one timer, as two instances of a scaled-out app would. Every
function of the fixture app appends what it saw to a JSON-lines record file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from sandbox.azurite import Azurite
from sandbox.host import FunctionsRunner, PollBackoff, RunnerConfigError, Schedule

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_APP = REPO_ROOT / "tests" / "fixtures" / "runner_app"
NEVER = "0 0 0 1 1 *"  # once a year: keeps the timer quiet where it is not under test
MAX_DEQUEUE = 3  # tests/fixtures/runner_app/host.json


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def read_records(path: Path, function: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if function is None or r["function"] == function]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    instance = Azurite(tmp_path_factory.mktemp("azurite"))
    instance.start()
    yield instance
    instance.stop()


def queue(azurite: Azurite, name: str) -> QueueClient:
    client = QueueClient.from_connection_string(azurite.connection_string, name)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    return client


def peek(azurite: Azurite, name: str) -> list[str]:
    """Raw texts of the visible messages of a queue that may not exist yet."""
    client = QueueClient.from_connection_string(azurite.connection_string, name)
    try:
        return [m.content for m in client.peek_messages(max_messages=32)]
    except ResourceNotFoundError:
        return []


# ------------------------------------------------------------------ in-process runner


@pytest.fixture(scope="module")
def record_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records") / "inproc.jsonl"


@pytest.fixture(scope="module")
def runner(azurite: Azurite, record_file: Path) -> Iterator[FunctionsRunner]:
    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "AzureFunctionsWebHost__hostid": "runner-inproc",
        "WORK_QUEUE": "work-inproc",
        "OUT_QUEUE": "out-inproc",
        "TICK_SCHEDULE": NEVER,
        "RECORD_FILE": str(record_file),
        "RUNNER_NAME": "inproc",
    }
    instance = FunctionsRunner(FIXTURE_APP, settings=settings, queue_lease_seconds=5, name="inproc")
    instance.start()
    yield instance
    instance.stop()


def test_http_route_params_query_and_body_reach_the_function(runner: FunctionsRunner) -> None:
    full = requests.post(
        f"{runner.url}/api/items/42/specs?x=1&x=2&y=", data=b"hello", headers={"X-Probe": "yes"}, timeout=10
    )
    assert full.status_code == 200
    assert full.headers["Content-Type"] == "application/json"
    assert full.json() == {
        "method": "POST",
        "route_params": {"item_id": "42", "detail": "specs"},
        "params": {"x": "1,2", "y": ""},
        "body": "hello",
        "header": "yes",
    }
    optional_absent = requests.get(f"{runner.url}/api/ITEMS/7", timeout=10)
    assert optional_absent.json()["route_params"] == {"item_id": "7"}


def test_http_unmatched_route_or_method_is_404(runner: FunctionsRunner) -> None:
    assert requests.get(f"{runner.url}/api/nothing-here", timeout=10).status_code == 404
    assert requests.delete(f"{runner.url}/api/items/1", timeout=10).status_code == 404
    assert requests.get(f"{runner.url}/items/1", timeout=10).status_code == 404  # no route prefix


def test_http_unhandled_exception_is_500_with_empty_body(runner: FunctionsRunner) -> None:
    response = requests.get(f"{runner.url}/api/explode", timeout=10)
    assert response.status_code == 500
    assert response.content == b""
    last = [i for i in runner.invocations if i["function"] == "explode"][-1]
    assert last["outcome"] == "failure"
    assert "boom" in last["error"]


def test_http_async_function_is_awaited(runner: FunctionsRunner) -> None:
    response = requests.get(f"{runner.url}/api/async/hello", timeout=10)
    assert (response.status_code, response.text) == (200, "HELLO")


def test_admin_endpoint_runs_a_timer_function_on_demand(runner: FunctionsRunner, record_file: Path) -> None:
    response = requests.post(f"{runner.url}/admin/functions/tick", json={"input": None}, timeout=10)
    assert response.status_code == 202
    ticks = wait_for(lambda: read_records(record_file, "tick"))
    assert ticks[0]["past_due"] is False
    assert requests.post(f"{runner.url}/admin/functions/nope", json={}, timeout=10).status_code == 404


def eventgrid(
    runner: FunctionsRunner, kind: str | None, body: Any, function: str = "events"
) -> requests.Response:
    headers = {"aeg-event-type": kind} if kind else {}
    return requests.post(
        f"{runner.url}/runtime/webhooks/eventgrid?functionName={function}",
        json=body,
        headers=headers,
        timeout=10,
    )


def grid_event(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/v",
        "subject": "vmss/v/instances/0",
        "eventType": "Microsoft.Resources.ResourceActionSuccess",
        "eventTime": "2026-01-02T03:04:05.678Z",
        "dataVersion": "1",
        "data": data,
    }


def test_eventgrid_subscription_validation_answers_the_code_without_invoking(runner: FunctionsRunner) -> None:
    before = len(runner.invocations)
    validation = {
        "id": "v1",
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "data": {"validationCode": "CODE-123", "validationUrl": "https://example.invalid"},
    }
    response = eventgrid(runner, "SubscriptionValidation", [validation])
    assert response.status_code == 200
    assert response.json() == {"validationResponse": "CODE-123"}
    assert len(runner.invocations) == before


def test_eventgrid_notification_invokes_once_per_event_and_answers_202(
    runner: FunctionsRunner, record_file: Path
) -> None:
    batch = [grid_event({"n": 1}), grid_event({"n": 2})]
    response = eventgrid(runner, "notification", batch)  # the header value is case-insensitive
    assert response.status_code == 202
    seen = {r["id"]: r for r in read_records(record_file, "events")}
    first = seen[batch[0]["id"]]
    assert batch[1]["id"] in seen
    assert first["event_type"] == "Microsoft.Resources.ResourceActionSuccess"
    assert first["subject"] == "vmss/v/instances/0"
    assert first["data"] == {"n": 1}
    assert first["event_time"].startswith("2026-01-02T03:04:05.678")
    assert first["binding_type"] == "EventGridEvent"


def test_eventgrid_notification_with_a_failing_event_answers_500(
    runner: FunctionsRunner, record_file: Path
) -> None:
    batch = [grid_event({"n": 1}), grid_event({"fail": True})]
    response = eventgrid(runner, "Notification", batch)
    assert response.status_code == 500
    ids = {r["id"] for r in read_records(record_file, "events")}
    assert {batch[0]["id"], batch[1]["id"]} <= ids  # every event ran; Event Grid redelivers the batch


def test_eventgrid_unsubscribe_is_202_missing_header_is_400_unknown_function_is_404(
    runner: FunctionsRunner,
) -> None:
    assert eventgrid(runner, "Unsubscribe", [grid_event({})]).status_code == 202
    assert eventgrid(runner, None, [grid_event({})]).status_code == 400
    assert eventgrid(runner, "Surprise", [grid_event({})]).status_code == 400
    assert eventgrid(runner, "Notification", [grid_event({})], function="nope").status_code == 404
    assert eventgrid(runner, "Notification", [grid_event({})], function="items").status_code == 404


def test_eventgrid_cloudevent_single_object_arrives_with_event_grid_fields_none(
    runner: FunctionsRunner, record_file: Path
) -> None:
    handshake = requests.options(
        f"{runner.url}/runtime/webhooks/EventGrid?functionName=events",
        headers={"WebHook-Request-Origin": "eventgrid.azure.net"},
        timeout=10,
    )
    assert handshake.status_code == 200
    assert handshake.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    cloud_event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/subscriptions/s/resourceGroups/rg",
        "type": "Microsoft.Resources.ResourceActionSuccess",
        "subject": "vmss/v",
        "time": "2026-01-02T03:04:05Z",
        "data": {"n": 3},
    }
    response = eventgrid(runner, "Notification", cloud_event)
    assert response.status_code == 202
    seen = {r["id"]: r for r in read_records(record_file, "events")}[cloud_event["id"]]
    assert seen["binding_type"] == "EventGridEvent"
    assert (seen["topic"], seen["event_type"], seen["event_time"], seen["data_version"]) == (None,) * 4
    assert (seen["subject"], seen["data"]) == ("vmss/v", {"n": 3})


def test_queue_base64_message_is_decoded_and_deleted_on_success(
    runner: FunctionsRunner, azurite: Azurite, record_file: Path
) -> None:
    work = queue(azurite, "work-inproc")
    msg_id = str(uuid.uuid4())
    text = json.dumps({"id": msg_id, "note": "héllo"})
    work.send_message(b64(text))
    seen = wait_for(lambda: [r for r in read_records(record_file, "work") if r["id"] == msg_id])
    assert seen[0]["body"] == text
    assert seen[0]["dequeue_count"] == 1
    assert seen[0]["has_pop_receipt"]
    wait_for(lambda: work.get_queue_properties().approximate_message_count == 0)
    assert len(seen) == 1


def test_queue_message_that_always_fails_is_poisoned_after_max_dequeue_count_runs(
    runner: FunctionsRunner, azurite: Azurite, record_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    work = queue(azurite, "work-inproc")
    msg_id = str(uuid.uuid4())
    original = b64(json.dumps({"id": msg_id, "fail": True}))
    work.send_message(original)
    wait_for(lambda: original in peek(azurite, "work-inproc-poison"), timeout=15)
    runs = [r["dequeue_count"] for r in read_records(record_file, "work") if r["id"] == msg_id]
    assert runs == [1, 2, 3] == list(range(1, MAX_DEQUEUE + 1))
    wait_for(lambda: work.get_queue_properties().approximate_message_count == 0)
    assert f"Message has reached MaxDequeueCount of {MAX_DEQUEUE}" in caplog.text


def test_queue_invalid_base64_goes_straight_to_poison_unprocessed(
    runner: FunctionsRunner, azurite: Azurite, record_file: Path
) -> None:
    work = queue(azurite, "work-inproc")
    raw = json.dumps({"id": str(uuid.uuid4()), "plain": "text is not base64"})
    before = len([i for i in runner.invocations if i["function"] == "work"])
    work.send_message(raw)
    wait_for(lambda: raw in peek(azurite, "work-inproc-poison"))
    assert len([i for i in runner.invocations if i["function"] == "work"]) == before
    assert not [r for r in read_records(record_file, "work") if "not base64" in r["body"]]


def test_queue_output_binding_writes_one_message_per_array_element_after_success(
    runner: FunctionsRunner, azurite: Azurite
) -> None:
    queue(azurite, "work-inproc").send_message(b64(json.dumps({"id": "fan", "fanout": ["a", {"b": 1}]})))

    contents = wait_for(lambda: len(peek(azurite, "out-inproc")) >= 2 and peek(azurite, "out-inproc"))
    decoded = sorted(base64.b64decode(c).decode() for c in contents)
    assert decoded[0] == "a"  # strings are sent as they are, not JSON-quoted
    assert json.loads(decoded[1]) == {"b": 1}


def test_runner_process_refuses_to_start_when_a_setting_reference_does_not_resolve(
    azurite: Azurite, tmp_path: Path
) -> None:
    settings = {"AzureWebJobsStorage": azurite.connection_string, "WORK_QUEUE": "w", "OUT_QUEUE": "o"}
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"Values": settings}))  # local.settings.json shape
    # App settings are environment variables: keep the in-process runner's out of the child.
    env = {k: v for k, v in os.environ.items() if k not in ("TICK_SCHEDULE", "WORK_QUEUE", "OUT_QUEUE")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sandbox.host",
            "--app-dir",
            str(FIXTURE_APP),
            "--settings-file",
            str(settings_file),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "READY" not in result.stdout
    assert "'%TICK_SCHEDULE%' does not resolve to a value" in result.stderr


def test_empty_polls_back_off_like_the_host_and_stop_at_max_polling_interval() -> None:
    backoff = PollBackoff(maximum=2.0)
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays[0] == pytest.approx(0.1)
    for n in range(1, 5):  # 100 ms + rand(0.8-1.2) x 2^(n-1) x 100 ms
        assert 0.1 + 0.08 * 2 ** (n - 1) <= delays[n] <= 0.1 + 0.12 * 2 ** (n - 1)
    assert delays[-2:] == [2.0, 2.0]
    assert delays == sorted(delays)
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)


def test_schedules_accept_ncrontab_six_and_five_fields_and_timespans() -> None:
    start = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)  # a Monday
    assert Schedule("*/15 * * * * *").next_after(start) == start + timedelta(seconds=15)
    assert Schedule("0 */5 * * * *").next_after(start) == start + timedelta(minutes=5)
    assert Schedule("30 11 * * *").next_after(start) == start + timedelta(hours=1, minutes=30)
    assert Schedule("00:00:07").next_after(start) == start + timedelta(seconds=7)
    # NCrontab ANDs day-of-month with day-of-week: the 1st that is also a Monday (cron would OR them).
    assert Schedule("0 0 0 1 * 1").next_after(start) == datetime(2026, 6, 1, tzinfo=UTC)
    with pytest.raises(RunnerConfigError):
        Schedule("every minute")


# ------------------------------------------------------------------ two runner processes


class RunnerProcess:
    def __init__(self, name: str, settings_file: Path, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandbox.host",
                "--app-dir",
                str(FIXTURE_APP),
                "--settings-file",
                str(settings_file),
                "--queue-lease-seconds",
                "5",
                "--name",
                name,
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "RUNNER_NAME": name},
        )
        self.url = ""
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            if line.startswith("READY "):
                self.url = line.split()[1]
                self._ready.set()

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self._ready.wait(timeout):
            raise AssertionError(f"{self.name} not ready:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def pair(
    azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[RunnerProcess], Path]]:
    work_dir = tmp_path_factory.mktemp("pair")
    records = work_dir / "records.jsonl"
    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "AzureFunctionsWebHost__hostid": "runner-pair",
        "WORK_QUEUE": "work-shared",
        "OUT_QUEUE": "out-shared",
        "TICK_SCHEDULE": "*/1 * * * * *",
        "RECORD_FILE": str(records),
    }
    settings_file = work_dir / "settings.json"
    settings_file.write_text(json.dumps(settings))
    processes = [RunnerProcess(name, settings_file, work_dir) for name in ("alpha", "beta")]
    try:
        for process in processes:
            process.wait_ready()
        yield processes, records
    finally:
        for process in processes:
            process.stop()


def test_two_runner_processes_sharing_a_queue_process_each_message_exactly_once(
    pair: tuple[list[RunnerProcess], Path], azurite: Azurite
) -> None:
    processes, records = pair
    work = queue(azurite, "work-shared")
    ids = [f"shared-{i}" for i in range(40)]
    for msg_id in ids:
        work.send_message(b64(json.dumps({"id": msg_id})))
    wait_for(lambda: {r["id"] for r in read_records(records, "work")} >= set(ids), timeout=20)
    wait_for(lambda: work.get_queue_properties().approximate_message_count == 0)
    time.sleep(1.0)  # a duplicate would need a lease to expire (5 s) — but a double receive shows at once
    runs = [r["id"] for r in read_records(records, "work") if r["id"] in set(ids)]
    assert sorted(runs) == sorted(ids)
    for process in processes:  # both processes serve HTTP too
        assert requests.get(f"{process.url}/api/items/1", timeout=10).status_code == 200


def test_timer_fires_not_past_due_on_exactly_one_of_two_runner_processes(
    pair: tuple[list[RunnerProcess], Path],
) -> None:
    _, records = pair
    ticks = wait_for(
        lambda: len(read_records(records, "tick")) >= 3 and read_records(records, "tick"), timeout=15
    )
    assert all(t["past_due"] is False for t in ticks)
    assert len({t["runner"] for t in ticks}) == 1
