"""The Functions app: wiring only. One blueprint per trigger family, all logic in shared/."""

import azure.functions as func

from functions import (
    automation_http,
    azure_events,
    config_http,
    gitops,
    node_work,
    openapi_http,
    plans_http,
    runs_http,
    schedule,
    sweeper,
    ui_http,
)
from shared import log_hygiene
from shared.telemetry import configure_metrics

# Before anything logs: no log line may hold a raw control character from input.
log_hygiene.install()
configure_metrics()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (
    runs_http.bp,
    plans_http.bp,
    node_work.bp,
    sweeper.bp,
    azure_events.bp,
    automation_http.bp,
    schedule.bp,
    gitops.bp,
    openapi_http.bp,
    ui_http.bp,
    config_http.bp,
):
    app.register_blueprint(blueprint)
