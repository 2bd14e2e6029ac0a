"""Timer: patch what is due inside each pool's maintenance window; look again at images
refused for their kubelet's skew."""

from __future__ import annotations

import logging

import azure.functions as func

logger = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.function_name("scheduled_patch")
@bp.timer_trigger(arg_name="timer", schedule="%PATCHER_SCHEDULE%", run_on_startup=False, use_monitor=True)
def scheduled_patch(timer: func.TimerRequest) -> None:
    from shared.app import collaborators
    from shared.triggers.intake import Intake

    intake = Intake(collaborators())
    for outcome in intake.scheduled():
        logger.info("scheduled patch (past due: %s): %s", timer.past_due, outcome.describe())
    # An image refused for its kubelet's skew is looked at again once the control plane moved.
    for outcome in intake.recheck_refused_images():
        logger.info("refused image looked at again: %s", outcome.describe())
