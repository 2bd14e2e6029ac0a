"""The retired Azure Automation Update Management pre-script hook: answers 410 Gone.

Automation Update Management was retired (August 2024) and shut down (February 2025), and
its software update configurations with it, so no run context can name machines to patch
any more. The route stays so that a runbook still calling it is told why, instead of a 404
that looks like a typo. Its successor, Azure Update Manager, reaches the app as Event Grid
maintenance events (``azure_events``).
"""

from __future__ import annotations

import azure.functions as func

from functions.http_util import error

bp = func.Blueprint()

RETIRED = (
    "Azure Automation Update Management was retired (shut down February 2025) and its software "
    "update configurations with it: this hook no longer starts runs. Schedule patching with an "
    "Azure Update Manager maintenance configuration mapped under events.maintenanceConfigurations; "
    "its Event Grid events start the runs"
)


@bp.function_name("automation_update_run")
@bp.route(route="automation/update-run", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def automation_update_run(req: func.HttpRequest) -> func.HttpResponse:
    return error(410, RETIRED)
