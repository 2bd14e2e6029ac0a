"""The queue trigger that moves nodes through the maintenance workflow."""

from __future__ import annotations

import logging
import os

import azure.functions as func

logger = logging.getLogger(__name__)
bp = func.Blueprint()

# host.json extensions.queues.maxDequeueCount; the final delivery records on the run why
# the message is about to be moved to the poison queue.
MAX_DEQUEUE_COUNT = int(os.environ.get("PATCHER_MAX_DEQUEUE_COUNT", "5"))


@bp.function_name("node_work")
@bp.queue_trigger(arg_name="msg", queue_name="node-work", connection="AzureWebJobsStorage")
def node_work(msg: func.QueueMessage) -> None:
    from shared.adapters.workqueue import WorkItem
    from shared.app import collaborators, warm_clients
    from shared.errors import ValidationError
    from shared.work import handle_work_item

    deps = collaborators()
    warm_clients()
    body = msg.get_body().decode("utf-8", errors="replace")
    try:
        item = WorkItem.parse(body)
    except ValidationError as exc:
        # Retrying cannot fix a malformed message: dead-letter it with the reason at once.
        logger.error("work item %s rejected: %s", msg.id, exc)
        deps.queue.dead_letter(body, reason=str(exc))
        return
    final = (msg.dequeue_count or 1) >= MAX_DEQUEUE_COUNT
    outcome = handle_work_item(deps, item, final_attempt=final)
    logger.info(
        "work item %s (%s %s/%s seq %s): %s", msg.id, item.kind, item.run, item.node, item.seq, outcome
    )
