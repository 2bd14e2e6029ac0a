"""Timer: patch what is due inside each pool's maintenance window."""

from __future__ import annotations

import logging

import azure.functions as func

logger = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.function_name("scheduled_patch")
@bp.timer_trigger(arg_name="timer", schedule="%PATCHER_SCHEDULE%", run_on_startup=False, use_monitor=True)
def scheduled_patch(timer: func.TimerRequest) -> None:
    from shared.app import collaborators
    from shared.intake import Intake

    for outcome in Intake(collaborators()).scheduled():
        logger.info("scheduled patch (past due: %s): %s", timer.past_due, outcome.describe())
