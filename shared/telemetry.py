"""Where the metrics go: installed once at start-up, from the standard settings.

* ``APPLICATIONINSIGHTS_CONNECTION_STRING`` (set by ``infra/``): Azure Monitor's
  OpenTelemetry exporter, so the metrics land in Application Insights' ``customMetrics``.
* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``): OTLP over
  HTTP/protobuf, read by the exporter as OpenTelemetry specifies (headers, temporality,
  ``OTEL_METRIC_EXPORT_INTERVAL``): any collector, and the sandbox's tests.

With neither, nothing is installed and the SDK is never imported: it and the Azure
exporter are heavy enough to show in a cold start, which every Functions instance pays.
A setting the exporter refuses is logged, naming the setting (a connection string holds
the instrumentation key), and the app runs on without that exporter: metrics are not
worth refusing to patch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

APPINSIGHTS = "APPLICATIONINSIGHTS_CONNECTION_STRING"
OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
DEFAULT_SERVICE_NAME = "vmss-node-patcher"

_installed: Any = None


def configure_metrics(env: Mapping[str, str] | None = None) -> list[str]:
    """Install a meter provider exporting to what the settings name (once per process);
    the exporters installed, by name."""
    global _installed  # noqa: PLW0603 - one meter provider per process, as OpenTelemetry has it
    env = os.environ if env is None else env
    if _installed is not None:
        return list(_installed[1])
    appinsights = env.get(APPINSIGHTS, "").strip()
    otlp = bool(
        env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )
    if not appinsights and not otlp:
        return []
    import uuid

    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    readers: list[MetricReader] = []
    names: list[str] = []
    if appinsights:
        try:
            from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter

            readers.append(
                PeriodicExportingMetricReader(AzureMonitorMetricExporter(connection_string=appinsights))
            )
            names.append("azure-monitor")
        except ValueError as exc:
            # Its message is about the format; the value itself is never repeated.
            logger.error("app setting %s refused, no metrics to Application Insights: %s", APPINSIGHTS, exc)
    if otlp:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
            names.append("otlp")
        except ValueError as exc:
            logger.error("app setting %s refused, metrics not sent over OTLP: %s", OTLP_ENDPOINT, exc)
    if not readers:
        return []
    attributes = {
        # Every worker process is its own series: the instances' counts add up.
        "service.instance.id": uuid.uuid4().hex,
    }
    if not env.get("OTEL_SERVICE_NAME"):
        # In Azure the app's name, which Application Insights shows as the role.
        attributes["service.name"] = env.get("WEBSITE_SITE_NAME") or DEFAULT_SERVICE_NAME
    provider = MeterProvider(metric_readers=readers, resource=Resource.create(attributes))
    metrics.set_meter_provider(provider)
    _installed = (provider, tuple(names))
    logger.info("metrics exported to %s", ", ".join(names))
    return names
