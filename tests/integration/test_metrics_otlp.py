"""The app's metrics leave its worker processes as OTLP/HTTP (protobuf), the standard
OpenTelemetry exporter configured by the standard settings, and say what the rollout did:
a receiver in the test decodes them with ``opentelemetry-proto``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from sandbox.cluster import PoolSpec
from sandbox.stack import CLUSTER, Sandbox, SandboxOptions
from shared.rollout import metrics
from tests.integration.sandbox_helpers import Driver

pytestmark = pytest.mark.integration

POOL_SIZE = 3


class Receiver:
    """A minimal OTLP/HTTP metrics endpoint: ``POST /v1/metrics`` with a protobuf body.
    With delta temporality, a counter's points add up over every export of every process."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    receiver.paths.append(self.path)
                    receiver.requests.append(request)
                answer = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def points(self, name: str) -> list[tuple[dict[str, str], Any]]:
        found = []
        with self._lock:
            requests = list(self.requests)
        for request in requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name != name:
                            continue
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            attrs = {a.key: a.value.string_value for a in point.attributes}
                            found.append((attrs, point))
        return found

    def total(self, name: str, **attrs: str) -> float:
        return sum(p.as_int or p.as_double for a, p in self.points(name) if attrs.items() <= a.items())


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.server.shutdown()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Sandbox]:
    sb = Sandbox(
        SandboxOptions(
            state_dir=tmp_path_factory.mktemp("otlp-sandbox"),
            pools=PoolSpec.parse_list(f"otel:linux:{POOL_SIZE}"),
            runners=2,
            time_scale=0.01,
            max_unavailable=1,
            pool_overrides={"otel": {"drain": {"timeout": 30, "deleteEmptyDirData": True}}},
            extra_settings={
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
                "OTEL_METRIC_EXPORT_INTERVAL": "500",
                "OTEL_SERVICE_NAME": "patcher-under-test",
            },
        )
    )
    sb.start()
    yield sb
    sb.stop()


def test_a_rollout_exports_nodes_patched_and_step_durations_over_otlp(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    driver = Driver(sandbox)
    run = driver.wait(driver.start(pools=["otel"]), timeout=180)
    assert run["state"] == "succeeded", driver.explain(run)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if receiver.total(metrics.NODES_PATCHED, pool="otel") >= POOL_SIZE and receiver.total(
            metrics.RUNS_SUCCEEDED
        ):
            break
        time.sleep(0.3)
    assert all(path == "/v1/metrics" for path in receiver.paths)
    assert receiver.total(metrics.NODES_PATCHED, cluster=CLUSTER, pool="otel") == POOL_SIZE
    assert receiver.total(metrics.RUNS_STARTED, cluster=CLUSTER) == 1
    assert receiver.total(metrics.RUNS_SUCCEEDED, cluster=CLUSTER) == 1
    assert receiver.total(metrics.NODES_FAILED) == 0
    durations = receiver.points(metrics.STEP_DURATION)
    for step in ("draining", "reimaging", "booting"):
        timed = [p for a, p in durations if a.get("step") == step and a.get("pool") == "otel"]
        assert sum(p.count for p in timed) == POOL_SIZE, step
        assert all(p.sum >= 0 for p in timed)
    # Each worker process is a series of its own, named as the standard setting says.
    services = {
        a.value.string_value
        for r in receiver.requests
        for a in r.resource_metrics[0].resource.attributes
        if a.key == "service.name"
    }
    assert services == {"patcher-under-test"}
