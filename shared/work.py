"""A work item off the queue, handed to the part of the app that owns its kind; and the
sweeper's tick, handed to each part that keeps records.

Node steps and admissions are the rollout's; an image version still replicating is
looked at again by the trigger intake that saw it first. The rollout's sweep resumes and
ends runs; GitOps deletes its own syncs past retention. The routing lives here, above
them, so the rollout never imports the triggers or GitOps.
"""

from __future__ import annotations

from shared.adapters.workqueue import WorkItem
from shared.gitops.service import sweep_syncs
from shared.rollout.engine import Workflow
from shared.rollout.ports import Collaborators
from shared.rollout.sweeper import SweepReport
from shared.rollout.sweeper import sweep as sweep_runs
from shared.triggers.intake import Intake


def handle_work_item(
    deps: Collaborators, item: WorkItem, *, final_attempt: bool = False, workflow: Workflow | None = None
) -> str:
    """What became of ``item``, in a few words for the log. ``workflow``: the engine to
    step with (a test's, to keep its worker id); a fresh one otherwise."""
    if item.kind == "image":
        return Intake(deps).image_version(item.ref, attempt=item.seq).describe()
    return (workflow or Workflow(deps)).handle(item, final_attempt=final_attempt)


def sweep(deps: Collaborators) -> SweepReport:
    """One tick of the sweeper: the runs first (stalled work is what an operator waits
    for), then the GitOps records past retention."""
    report = sweep_runs(deps)
    report.deleted_syncs = sweep_syncs(deps)
    return report
