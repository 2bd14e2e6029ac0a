"""Event Grid: Update Manager maintenance events and Compute Gallery image versions.

Both schemas arrive here (Event Grid and CloudEvents 1.0). A malformed or unknown event
is acknowledged with a log line naming its id and the reason: raising would make Event
Grid redeliver it for a day. Only a transient failure (ARM or the API server briefly
unavailable) raises, so that Event Grid's retry brings the event back.
"""

from __future__ import annotations

import logging

import azure.functions as func

logger = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.function_name("azure_events")
@bp.event_grid_trigger(arg_name="event")
def azure_events(event: func.EventGridEvent) -> None:
    from shared.app import collaborators
    from shared.errors import ConfigError, PermanentError, TemporaryError, ValidationError
    from shared.triggers.events import EventEnvelope
    from shared.triggers.intake import Intake

    event_id = getattr(event, "id", None) or "(no id)"
    try:
        envelope = EventEnvelope.from_trigger(event)
        outcome = Intake(collaborators()).handle_event(envelope)
    except (ValidationError, PermanentError) as exc:
        logger.error("event %s rejected: %s", event_id, exc)
        return
    except ConfigError as exc:
        logger.error("event %s not handled, the app is misconfigured: %s", event_id, exc)
        return
    except TemporaryError as exc:
        logger.warning("event %s will be redelivered: %s", event_id, exc)
        raise
    logger.info("event %s (%s): %s", event_id, envelope.effective_type, outcome.describe())
