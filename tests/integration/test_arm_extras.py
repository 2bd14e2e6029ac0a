"""The simulated ARM's trigger-side resources and the Event Grid publisher, seen by real clients.

* Compute Gallery image definitions and versions through ``ComputeManagementClient``
  (``gallery_images``, ``gallery_image_versions``, the ARM LRO poller);
* Update Manager maintenance runs through a plain azure-core ARM pipeline (the cancel
  API has no SDK: ``PUT {correlationId}?api-version=2023-09-01-preview``);
* :mod:`sandbox.events` posting to a real :class:`sandbox.host.FunctionsRunner` running
  the fixture app (its ``events`` function records what it received).

All ARM traffic is HTTPS with tokens from the sandbox's managed-identity endpoint, as in
tests/integration/test_arm_fidelity.py.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.policies import ContentDecodePolicy, HeadersPolicy, RequestIdPolicy, RetryPolicy
from azure.core.rest import HttpRequest, HttpResponse
from azure.identity import ManagedIdentityCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    GalleryArtifactVersionFullSource,
    GalleryImageVersion,
    GalleryImageVersionProperties,
    GalleryImageVersionPublishingProfile,
    GalleryImageVersionStorageProfile,
    TargetRegion,
)
from azure.mgmt.core import ARMPipelineClient
from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

from sandbox.arm import IMAGE_VERSION_WRITE, ArmServer, ComputeDurations, ComputeState
from sandbox.azurite import Azurite
from sandbox.events import (
    EventDeliveryError,
    EventGridPublisher,
    image_version_write_event,
    maintenance_event,
    to_cloudevent,
)
from sandbox.host import FunctionsRunner
from sandbox.tls import SandboxTLS
from sandbox.world import World
from tests.integration.arm_helpers import admin_credential, serving_arm

pytestmark = pytest.mark.integration

SUB = "5d1c7a20-3e4f-4b6a-8c9d-0e1f2a3b4c5d"
RG = "rg-sandbox"
GALLERY = "sandboxgallery"
LINUX_IMAGE, WINDOWS_IMAGE = "k8s-node-ubuntu", "k8s-node-windows"
V1 = "2026.11.01"
SCOPE = "https://management.azure.com/.default"
POLL = 0.05
REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_APP = REPO_ROOT / "tests" / "fixtures" / "runner_app"


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@dataclass
class Arm:
    world: World
    state: ComputeState
    server: ArmServer
    tls: SandboxTLS
    maintenance_config_id: str
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, payload: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((kind, payload))

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for k, p in self.events if k == kind]

    def history(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.world.history.records() if r["kind"] == kind]


@pytest.fixture(scope="module")
def arm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm]:
    tmp: Path = tmp_path_factory.mktemp("arm-extras")
    world = World(time_scale=0.01, history_path=tmp / "history.jsonl")
    # 1 s replication at this scale.
    state = ComputeState(world, subscription_id=SUB, durations=ComputeDurations(image_replication=100))
    # What the sandbox stack sets up: both node-image definitions with a first version.
    for image, os_type in ((LINUX_IMAGE, "Linux"), (WINDOWS_IMAGE, "Windows")):
        state.add_gallery_image(RG, GALLERY, image, os_type=os_type)
        state.publish_image_version(
            RG, GALLERY, image, V1, tags={"kubernetesVersion": "1.31.4"}, replicate_seconds=0
        )
    config_id = state.add_maintenance_configuration(RG, "sandbox-weekly")
    with serving_arm(world, state, tmp) as (server, tls):
        sb = Arm(world, state, server, tls, config_id)
        state.add_listener(sb.record)
        yield sb


@pytest.fixture(scope="module")
def compute(arm: Arm) -> ComputeManagementClient:
    return ComputeManagementClient(admin_credential(arm.server), SUB, base_url=arm.server.url)


class ArmRest:
    """A bare azure-core ARM pipeline, as the app uses for the cancel call (no SDK has it)."""

    def __init__(self, base_url: str, credential: Any) -> None:
        self.base_url = base_url
        self.client: ARMPipelineClient[HttpRequest, HttpResponse] = ARMPipelineClient(
            base_url=base_url,
            policies=[
                RequestIdPolicy(),
                HeadersPolicy(),
                RetryPolicy(retry_total=0),
                ARMChallengeAuthenticationPolicy(credential, SCOPE),
                ContentDecodePolicy(),
            ],
        )

    def __call__(self, method: str, path: str, api_version: str, body: Any = None) -> HttpResponse:
        # Absolute, as the app builds it: f"{arm_endpoint}{correlationId}".
        url = self.base_url + path
        return self.client.send_request(
            HttpRequest(method, url, params={"api-version": api_version}, json=body)
        )


@pytest.fixture(scope="module")
def rest(arm: Arm) -> ArmRest:
    return ArmRest(arm.server.url, admin_credential(arm.server))


@pytest.fixture(scope="module")
def app_rest(arm: Arm) -> ArmRest:
    """As the app's identity, which may cancel a run and nothing else here."""
    return ArmRest(arm.server.url, ManagedIdentityCredential())


# ----------------------------------------------------------------------------- Compute Gallery


def test_gallery_definitions_and_first_versions_read_through_the_sdk(
    compute: ComputeManagementClient,
) -> None:
    gallery = compute.galleries.get(RG, GALLERY)
    assert gallery.provisioning_state == "Succeeded"
    images = {i.name: i for i in compute.gallery_images.list_by_gallery(RG, GALLERY)}
    assert set(images) == {LINUX_IMAGE, WINDOWS_IMAGE}
    linux = compute.gallery_images.get(RG, GALLERY, LINUX_IMAGE)
    assert (linux.os_type, linux.os_state, linux.hyper_v_generation) == ("Linux", "Generalized", "V2")
    assert linux.identifier is not None and linux.identifier.sku == LINUX_IMAGE
    assert compute.gallery_images.get(RG, GALLERY, WINDOWS_IMAGE).os_type == "Windows"
    version = compute.gallery_image_versions.get(RG, GALLERY, LINUX_IMAGE, V1)
    assert version.id == (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/{GALLERY}"
        f"/images/{LINUX_IMAGE}/versions/{V1}"
    )
    assert version.provisioning_state == "Succeeded"
    assert version.tags == {"kubernetesVersion": "1.31.4"}
    profile = version.publishing_profile
    assert profile is not None and profile.target_regions is not None
    assert [(r.name, r.regional_replica_count) for r in profile.target_regions] == [("West Europe", 1)]
    assert version.storage_profile is not None and version.storage_profile.os_disk_image is not None
    listed = list(compute.gallery_image_versions.list_by_gallery_image(RG, GALLERY, WINDOWS_IMAGE))
    assert [v.name for v in listed] == [V1]


def test_image_version_put_is_an_lro_that_stays_creating_until_replicated(
    arm: Arm, compute: ComputeManagementClient
) -> None:
    responses: list[tuple[str, int, dict[str, str]]] = []
    body = GalleryImageVersion(
        location="westeurope",
        tags={"kubernetesVersion": "1.32.0"},
        properties=GalleryImageVersionProperties(
            publishing_profile=GalleryImageVersionPublishingProfile(
                target_regions=[TargetRegion(name="westeurope"), TargetRegion(name="North Europe")]
            ),
            storage_profile=GalleryImageVersionStorageProfile(
                source=GalleryArtifactVersionFullSource(
                    id=f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/build-42"
                )
            ),
        ),
    )
    poller = compute.gallery_image_versions.begin_create_or_update(
        RG,
        GALLERY,
        LINUX_IMAGE,
        "2026.12.01",
        body,
        polling_interval=POLL,
        raw_response_hook=lambda r: responses.append(
            (r.http_request.method, r.http_response.status_code, dict(r.http_response.headers))
        ),
    )
    during = compute.gallery_image_versions.get(
        RG, GALLERY, LINUX_IMAGE, "2026.12.01", expand="ReplicationStatus"
    )
    assert during.provisioning_state == "Creating"
    assert during.replication_status is not None
    assert during.replication_status.aggregated_state == "InProgress"
    assert {s.region for s in during.replication_status.summary or []} == {"West Europe", "North Europe"}

    result = poller.result(timeout=10)
    assert result.provisioning_state == "Succeeded" and result.tags == {"kubernetesVersion": "1.32.0"}
    method, status, headers = responses[0]
    assert (method, status) == ("PUT", 201)
    assert "/providers/Microsoft.Compute/locations/westeurope/operations/" in headers["Azure-AsyncOperation"]
    done = compute.gallery_image_versions.get(
        RG, GALLERY, LINUX_IMAGE, "2026.12.01", expand="ReplicationStatus"
    )
    assert done.replication_status is not None and done.replication_status.aggregated_state == "Completed"

    # The completed write is announced with the correlation id ARM gave the PUT.
    write = wait_for(lambda: [e for e in arm.events_of("resource_write") if e["resource_id"] == result.id])[0]
    assert write["operation_name"] == IMAGE_VERSION_WRITE and write["status"] == "Succeeded"
    assert write["correlation_id"] == headers["x-ms-correlation-request-id"]
    assert write["http_url"].endswith("?api-version=2026-03-03")
    assert [r["status"] for r in arm.history("image_version_published") if r["resource_id"] == result.id] == [
        "Succeeded"
    ]

    # A second PUT of an existing version is an update: 200 Updating.
    responses.clear()
    compute.gallery_image_versions.begin_create_or_update(
        RG,
        GALLERY,
        LINUX_IMAGE,
        "2026.12.01",
        body,
        polling_interval=POLL,
        raw_response_hook=lambda r: responses.append(
            (r.http_request.method, r.http_response.status_code, dict(r.http_response.headers))
        ),
    ).result(timeout=10)
    assert responses[0][:2] == ("PUT", 200)


def test_image_version_failures_and_conflicts_look_like_compute(
    arm: Arm, compute: ComputeManagementClient
) -> None:
    arm.state.faults.fail_lro("image_version")
    body = GalleryImageVersion(location="westeurope")
    poller = compute.gallery_image_versions.begin_create_or_update(
        RG, GALLERY, WINDOWS_IMAGE, "2026.12.02", body, polling_interval=POLL
    )
    with pytest.raises(HttpResponseError) as failed:
        poller.result(timeout=10)
    assert failed.value.error is not None and failed.value.error.code == "InternalExecutionError"
    assert compute.gallery_image_versions.get(
        RG, GALLERY, WINDOWS_IMAGE, "2026.12.02"
    ).provisioning_state == ("Failed")
    wait_for(lambda: [e for e in arm.events_of("resource_write") if e["status"] == "Failed"])

    # A write while the version is still replicating is refused.
    arm.state.publish_image_version(RG, GALLERY, WINDOWS_IMAGE, "2026.12.03", replicate_seconds=3600)
    with pytest.raises(ResourceExistsError) as busy:
        compute.gallery_image_versions.begin_create_or_update(RG, GALLERY, WINDOWS_IMAGE, "2026.12.03", body)
    assert busy.value.status_code == 409

    with pytest.raises(HttpResponseError) as bad_name:
        compute.gallery_image_versions.begin_create_or_update(RG, GALLERY, WINDOWS_IMAGE, "latest", body)
    assert bad_name.value.status_code == 400
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: compute.gallery_image_versions.get(RG, GALLERY, LINUX_IMAGE, "9.9.9"), "ResourceNotFound"),
        (lambda: compute.gallery_image_versions.get(RG, GALLERY, "nope", V1), "ParentResourceNotFound"),
        (lambda: compute.gallery_images.get(RG, "nogallery", LINUX_IMAGE), "ParentResourceNotFound"),
        (lambda: compute.galleries.get("no-such-rg", GALLERY), "ResourceGroupNotFound"),
    ]
    for call, code in cases:
        with pytest.raises(ResourceNotFoundError) as exc:
            call()
        assert exc.value.error is not None and exc.value.error.code == code


# ----------------------------------------------------------------------------- Update Manager


def test_maintenance_configuration_reads_as_an_in_guest_patch_schedule(arm: Arm, rest: ArmRest) -> None:
    response = rest("GET", arm.maintenance_config_id, "2023-09-01-preview")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == arm.maintenance_config_id
    assert body["type"] == "Microsoft.Maintenance/maintenanceConfigurations"
    assert body["properties"]["maintenanceScope"] == "InGuestPatch"
    window = body["properties"]["maintenanceWindow"]
    assert set(window) >= {"startDateTime", "duration", "timeZone", "recurEvery"}
    path = arm.maintenance_config_id.rsplit("/", 1)[0] + "/nightly"
    created = rest(
        "PUT",
        path,
        "2023-09-01-preview",
        {
            "location": "westeurope",
            "properties": {
                "maintenanceScope": "InGuestPatch",
                "maintenanceWindow": {
                    "startDateTime": "2026-12-01 02:00",
                    "duration": "02:00",
                    "timeZone": "UTC",
                    "recurEvery": "Day",
                },
            },
        },
    )
    assert created.status_code == 200
    assert (
        rest("GET", path, "2023-09-01-preview").json()["properties"]["maintenanceWindow"]["recurEvery"]
        == "Day"
    )


def test_cancel_before_the_cutoff_answers_202_and_the_run_reads_cancelled(
    arm: Arm, rest: ArmRest, app_rest: ArmRest
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    run_id, correlation_id = arm.state.schedule_maintenance_run(
        arm.maintenance_config_id, now + timedelta(hours=1), now + timedelta(hours=3)
    )
    assert correlation_id.endswith(f"/providers/microsoft.maintenance/applyupdates/{run_id}")
    assert arm.state.maintenance_run(correlation_id)["properties"]["status"] == "Pending"
    assert rest("GET", correlation_id, "2023-09-01-preview").json()["properties"]["status"] == ("Pending")

    cancel = {"properties": {"status": "Cancel"}}
    response = app_rest("PUT", correlation_id, "2023-09-01-preview", cancel)
    assert response.status_code == 202
    body = response.json()
    assert body["id"] == correlation_id.lower() and body["name"] == run_id
    assert body["type"] == "Microsoft.Maintenance/applyUpdates"
    assert body["properties"]["status"] == "Cancel"
    assert arm.state.maintenance_run(correlation_id)["properties"]["status"] == "Cancelled"
    after = rest("GET", correlation_id, "2023-09-01-preview").json()
    assert after["properties"]["status"] == "Cancelled"
    # At-least-once delivery: cancelling again is harmless.
    assert app_rest("PUT", correlation_id, "2023-09-01-preview", cancel).status_code == 202
    cancelled = [r for r in arm.history("maintenance_cancelled") if r["correlation_id"] == correlation_id]
    assert len(cancelled) == 1
    assert cancelled[0]["maintenance_configuration_id"] == arm.maintenance_config_id
    assert [e["correlation_id"] for e in arm.events_of("maintenance_cancelled")].count(correlation_id) == 1
    cancel_log = [e for e in arm.server.request_log if e["operation"] == "cancel_maintenance_run"]
    assert cancel_log[-1]["query"]["api-version"] == "2023-09-01-preview" and cancel_log[-1]["write"]


def test_cancel_past_the_cutoff_or_with_an_old_api_version_is_refused(
    arm: Arm, rest: ArmRest, app_rest: ArmRest
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _, soon = arm.state.schedule_maintenance_run(
        arm.maintenance_config_id, now + timedelta(minutes=5), now + timedelta(hours=2)
    )
    _, running = arm.state.schedule_maintenance_run(
        arm.maintenance_config_id, now - timedelta(minutes=1), now + timedelta(hours=1)
    )
    cancel = {"properties": {"status": "Cancel"}}
    for correlation_id, status in ((soon, "Pending"), (running, "InProgress")):
        response = app_rest("PUT", correlation_id, "2023-09-01-preview", cancel)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "Conflict"
        assert "cut-off" in response.json()["error"]["message"]
        assert arm.state.maintenance_run(correlation_id)["properties"]["status"] == status
    assert rest("PUT", soon, "2023-04-01", cancel).status_code == 400
    assert rest("PUT", soon, "2023-09-01-preview", {"properties": {"status": "Pending"}}).status_code == (400)
    missing = soon.rsplit("/", 1)[0] + "/20000101000000"
    assert rest("GET", missing, "2023-09-01-preview").status_code == 404
    assert not [r for r in arm.history("maintenance_cancelled") if r["correlation_id"] in (soon, running)]


def test_a_run_goes_pending_in_progress_completed_on_the_wall_clock(arm: Arm) -> None:
    now = datetime.now(UTC)
    _, correlation_id = arm.state.schedule_maintenance_run(
        arm.maintenance_config_id, now + timedelta(seconds=1.0), now + timedelta(seconds=1.5)
    )
    assert arm.state.maintenance_run(correlation_id)["properties"]["status"] == "Pending"
    wait_for(lambda: arm.state.maintenance_run(correlation_id)["properties"]["status"] == "InProgress")
    wait_for(lambda: arm.state.maintenance_run(correlation_id)["properties"]["status"] == "Completed")

    def kinds() -> list[str]:
        with arm.lock:
            return [k for k, p in arm.events if p.get("correlation_id") == correlation_id]

    # The status reads the wall clock; the event comes from the timer that follows it, a
    # moment later on a loaded machine.
    wait_for(lambda: len(kinds()) == 3)
    assert kinds() == ["maintenance_scheduled", "maintenance_started", "maintenance_completed"]


# ----------------------------------------------------------------------------- Event Grid delivery


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FunctionsRunner, Path]]:
    tmp = tmp_path_factory.mktemp("events")
    azurite = Azurite(tmp / "azurite")
    azurite.start()
    record_file = tmp / "records.jsonl"
    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "AzureFunctionsWebHost__hostid": "arm-extras",
        "WORK_QUEUE": "work-arm-extras",
        "OUT_QUEUE": "out-arm-extras",
        "TICK_SCHEDULE": "0 0 0 1 1 *",
        "RECORD_FILE": str(record_file),
        "RUNNER_NAME": "arm-extras",
    }
    instance = FunctionsRunner(FIXTURE_APP, settings=settings, queue_lease_seconds=5, name="arm-extras")
    instance.start()
    try:
        yield instance, record_file
    finally:
        instance.stop()
        azurite.stop()


def received(record_file: Path) -> dict[str, dict[str, Any]]:
    if not record_file.exists():
        return {}
    lines = [json.loads(line) for line in record_file.read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in lines if r["function"] == "events"}


def test_validation_handshakes_for_both_schemas(runner: tuple[FunctionsRunner, Path]) -> None:
    functions, _ = runner
    publisher = EventGridPublisher(functions.url, "events")
    assert publisher.validate(code="CODE-42") == "CODE-42"
    assert publisher.deliveries[-1].headers["aeg-event-type"] == "SubscriptionValidation"
    assert publisher.validate(schema="cloudevents") == "eventgrid.azure.net"
    with pytest.raises(EventDeliveryError):
        EventGridPublisher(functions.url, "no_such_function").validate()


def test_event_grid_schema_batch_reaches_the_function_as_event_grid_events(
    arm: Arm, runner: tuple[FunctionsRunner, Path]
) -> None:
    functions, record_file = runner
    now = datetime.now(UTC).replace(microsecond=0)
    correlation_id = (
        f"{arm.maintenance_config_id}/providers/microsoft.maintenance/applyupdates/20261205020000"
    )
    pre = maintenance_event(
        "pre", arm.maintenance_config_id, correlation_id, now + timedelta(hours=1), now + timedelta(hours=3)
    )
    write = image_version_write_event(
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/{GALLERY}"
        f"/images/{LINUX_IMAGE}/versions/{V1}",
        subscription_id=SUB,
        tenant_id=arm.server.tenant_id,
    )
    publisher = EventGridPublisher(functions.url, "events")
    assert publisher.deliver([pre, write]) == 202
    seen = received(record_file)
    got_pre, got_write = seen[pre["id"]], seen[write["id"]]
    assert got_pre["event_type"] == "Microsoft.Maintenance.PreMaintenanceEvent"
    assert (got_pre["topic"], got_pre["subject"]) == (arm.maintenance_config_id, "sandbox-weekly")
    assert got_pre["data"] == pre["data"] and got_pre["data_version"] == "1.0"
    assert got_write["event_type"] == "Microsoft.Resources.ResourceWriteSuccess"
    assert got_write["data"]["operationName"] == IMAGE_VERSION_WRITE and got_write["data_version"] == "2"
    assert got_write["topic"] == f"/subscriptions/{SUB}/resourceGroups/{RG}"
    sent = publisher.deliveries[-1]
    assert isinstance(json.loads(sent.body), list)

    failing = dict(write, id=str(uuid.uuid4()), data={"fail": True})
    assert publisher.deliver([failing], delivery_count=1) == 500  # Event Grid would retry


def test_cloud_events_arrive_single_or_batched(arm: Arm, runner: tuple[FunctionsRunner, Path]) -> None:
    functions, record_file = runner
    now = datetime.now(UTC)
    post = maintenance_event(
        "post",
        arm.maintenance_config_id,
        f"{arm.maintenance_config_id}/providers/microsoft.maintenance/applyupdates/20261206020000",
        now - timedelta(hours=2),
        now,
    )
    publisher = EventGridPublisher(functions.url, "events")
    assert publisher.deliver([post], schema="cloudevents") == 202
    single = publisher.deliveries[-1]
    assert json.loads(single.body)["type"] == "Microsoft.Maintenance.PostMaintenanceEvent"
    seen = received(record_file)[post["id"]]
    # The worker's bundled azure-functions reads Event Grid field names only (see sandbox/host/eventgrid.py).
    assert (seen["topic"], seen["event_type"], seen["data_version"]) == (None, None, None)
    assert seen["data"]["status"] == "Succeeded" and seen["subject"] == "sandbox-weekly"

    batch = [dict(post, id=str(uuid.uuid4())), dict(post, id=str(uuid.uuid4()))]
    assert publisher.deliver(batch, schema="cloudevents") == 202
    assert len(json.loads(publisher.deliveries[-1].body)) == 2
    assert {e["id"] for e in batch} <= set(received(record_file))


class _Capture(BaseHTTPRequestHandler):
    requests: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_what_goes_over_the_wire_matches_event_grid_delivery(arm: Arm) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        publisher = EventGridPublisher(url, subscription_name="patcher-events", code="KEY==")
        write = image_version_write_event(
            f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/{GALLERY}"
            f"/images/{LINUX_IMAGE}/versions/{V1}",
            subscription_id=SUB,
            tenant_id=arm.server.tenant_id,
        )
        assert publisher.deliver([write]) == 202
        assert publisher.deliver([write], schema="cloudevents", delivery_count=2) == 202
    finally:
        server.shutdown()
        server.server_close()
    (path1, grid, body1), (path2, cloud, body2) = _Capture.requests[-2:]
    assert path1 == path2 == "/runtime/webhooks/eventgrid?functionName=azure_events&code=KEY%3D%3D"
    assert grid["content-type"] == "application/json; charset=utf-8"
    assert (grid["aeg-event-type"], grid["aeg-subscription-name"], grid["aeg-delivery-count"]) == (
        "Notification",
        "PATCHER-EVENTS",
        "0",
    )
    assert (grid["aeg-data-version"], grid["aeg-metadata-version"], grid["aeg-output-event-id"]) == (
        "2",
        "1",
        write["id"],
    )
    assert json.loads(body1) == [write]
    assert cloud["content-type"] == "application/cloudevents+json; charset=utf-8"
    assert (cloud["aeg-metadata-version"], cloud["aeg-delivery-count"]) == ("1.0", "2")
    assert "aeg-data-version" not in cloud
    assert json.loads(body2) == to_cloudevent(write)


def test_builders_produce_the_documented_shapes(arm: Arm) -> None:
    config_id = arm.maintenance_config_id
    correlation_id = f"{config_id}/providers/microsoft.maintenance/applyupdates/20230509150000"
    start, end = datetime(2023, 5, 9, 15, tzinfo=UTC), datetime(2023, 5, 9, 18, 55, tzinfo=UTC)
    pre = maintenance_event("pre", config_id, correlation_id, start, end, subscription_ids=[SUB, "1" * 8])
    assert list(pre) == [
        "id",
        "topic",
        "subject",
        "data",
        "eventType",
        "eventTime",
        "dataVersion",
        "metadataVersion",
    ]
    assert pre["id"] == pre["data"]["correlationId"] == correlation_id and pre["topic"] == config_id
    assert pre["data"] == {
        "correlationId": correlation_id,
        "maintenanceConfigurationId": config_id,
        "startDateTime": "2023-05-09T15:00:00Z",
        "endDateTime": "2023-05-09T18:55:00Z",
        "cancellationCutOffDateTime": "2023-05-09T14:50:00Z",
        "resourceSubscriptionIds": [SUB, "1" * 8],
    }
    assert len(pre["eventTime"].split(".")[1]) == 8  # seven digits and "Z", as Event Grid writes it
    post = maintenance_event("post", config_id, correlation_id, start, end, pascal_case=True)
    assert post["eventType"] == "Microsoft.Maintenance.PostMaintenanceEvent"
    assert post["data"]["Status"] == "Succeeded" and post["data"]["ResourceSubscriptionIds"] == [SUB]
    assert "CancellationCutOffDateTime" not in post["data"]

    gallery_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/g"
    version_id = f"{gallery_id}/images/i/versions/1.0.0"
    write = image_version_write_event(version_id, subscription_id=SUB, tenant_id="t", correlation_id="c-1")
    assert (write["subject"], write["topic"], write["dataVersion"]) == (
        version_id,
        f"/subscriptions/{SUB}/resourceGroups/{RG}",
        "2",
    )
    data = write["data"]
    assert set(data) == {
        "authorization",
        "claims",
        "correlationId",
        "httpRequest",
        "resourceProvider",
        "resourceUri",
        "operationName",
        "status",
        "subscriptionId",
        "tenantId",
    }
    assert (data["correlationId"], data["operationName"], data["status"], data["resourceUri"]) == (
        "c-1",
        IMAGE_VERSION_WRITE,
        "Succeeded",
        version_id,
    )
    assert data["httpRequest"]["method"] == "PUT" and data["resourceProvider"] == "Microsoft.Compute"
    cloud = to_cloudevent(write)
    assert cloud == {
        "id": write["id"],
        "source": write["topic"],
        "specversion": "1.0",
        "type": "Microsoft.Resources.ResourceWriteSuccess",
        "subject": version_id,
        "time": write["eventTime"],
        "data": data,
    }
