"""A work item off the queue, handed to the part of the app that owns its kind.

Node steps and admissions are the rollout's; an image version still replicating is
looked at again by the trigger intake that saw it first. The routing lives here, above
both, so the rollout never imports the triggers that start it.
"""

from __future__ import annotations

from shared.adapters.workqueue import WorkItem
from shared.rollout.engine import Workflow
from shared.rollout.ports import Collaborators
from shared.triggers.intake import Intake


def handle_work_item(
    deps: Collaborators, item: WorkItem, *, final_attempt: bool = False, workflow: Workflow | None = None
) -> str:
    """What became of ``item``, in a few words for the log. ``workflow``: the engine to
    step with (a test's, to keep its worker id); a fresh one otherwise."""
    if item.kind == "image":
        return Intake(deps).image_version(item.ref, attempt=item.seq).describe()
    return (workflow or Workflow(deps)).handle(item, final_attempt=final_attempt)
