"""Timer: resume stalled work (lost messages, dead workers) from recorded state."""

from __future__ import annotations

import logging

import azure.functions as func

logger = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.function_name("sweeper")
@bp.timer_trigger(
    arg_name="timer", schedule="%PATCHER_SWEEP_SCHEDULE%", run_on_startup=False, use_monitor=False
)
def sweeper(timer: func.TimerRequest) -> None:
    from shared.app import collaborators
    from shared.work import sweep

    report = sweep(collaborators())
    if report.resumed or timer.past_due:
        logger.warning("sweeper (past due: %s): resumed %s", timer.past_due, report.resumed)
