"""From signals to runs: Update Manager maintenance events, new gallery images, Azure
Automation pre-scripts and schedules.

Each handler decides *whether* and *what* to patch, then starts runs through
``RunService`` like an operator would; the workflow does the rest. Every decision is
recorded (``store.put_record("event", ...)``) with a reason, so "why did nothing
happen?" has an answer. Rules shared by all of them:

* targets are resolved through ``spec.providerID``, never by name alone;
* a redelivered signal (same id) is a no-op, and a signal for a cluster that already
  has an active run does not start a second one;
* an image whose kubelet would break the version-skew policy is refused, and said so.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.budget import resolve_max_unavailable
from shared.clock import iso
from shared.compute import ComputeClient, Instance, parse_provider_id
from shared.config import ClusterConfig, PoolConfig
from shared.errors import NotFoundError, PermanentError, TemporaryError, ValidationError
from shared.events import (
    POST_MAINTENANCE,
    PRE_MAINTENANCE,
    RESOURCE_WRITE_SUCCESS,
    AutomationRunContext,
    EventEnvelope,
    MaintenanceEvent,
    ResourceWriteEvent,
)
from shared.kube import Node
from shared.plan import due_reasons
from shared.planner import left_alone
from shared.runs import RunConflictError, RunService, StartRequest
from shared.skew import skew_problem
from shared.windows import MaintenanceWindow
from shared.workflow import Collaborators
from shared.workqueue import WorkItem

logger = logging.getLogger(__name__)

MAINTENANCE_API_VERSION = "2023-09-01-preview"
MAX_IMAGE_CHECKS = 240  # with the default interval: four hours of replication or a busy cluster


@dataclass(frozen=True)
class Outcome:
    action: str  # started | duplicate | ignored | cancelled | closed | waiting | refused | nothing
    detail: str
    runs: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        runs = f" runs {', '.join(self.runs)}" if self.runs else ""
        return f"{self.action}: {self.detail}{runs}"


class Intake:
    def __init__(self, deps: Collaborators) -> None:
        self.deps = deps
        self.runs = RunService(deps)

    # ---- Event Grid ------------------------------------------------------------------------
    def handle_event(self, envelope: EventEnvelope) -> Outcome:
        kind = envelope.effective_type
        # Update Manager gives the pre- and the post-event of one run the same id (the
        # run's), so an event is identified by its type and id together.
        key = f"{kind}|{envelope.id}"
        seen = self.deps.store.get_record("event", key)
        if seen is not None:
            return Outcome(
                "duplicate", f"event {envelope.id} was handled at {seen.get('at')}: {seen.get('outcome')}"
            )
        if kind == PRE_MAINTENANCE:
            outcome = self.pre_maintenance(MaintenanceEvent.from_envelope(envelope))
        elif kind == POST_MAINTENANCE:
            outcome = self.post_maintenance(MaintenanceEvent.from_envelope(envelope))
        elif kind == RESOURCE_WRITE_SUCCESS:
            write = ResourceWriteEvent.from_envelope(envelope)
            if not write.is_image_version_write:
                outcome = Outcome("ignored", f"resource write {write.operation_name} is not an image version")
            else:
                outcome = self.image_version(write.resource_uri)
        else:
            outcome = Outcome("ignored", f"event type {envelope.type or '(none)'} is not handled")
        self._record("event", key, outcome, type=kind or "", id=envelope.id)
        return outcome

    def _record(self, kind: str, key: str, outcome: Outcome, **extra: Any) -> None:
        self.deps.store.put_record(
            kind,
            key,
            {
                "at": iso(self.deps.clock.now()),
                "outcome": outcome.action,
                "detail": outcome.detail,
                "runs": list(outcome.runs),
                **extra,
            },
        )

    # ---- Update Manager ----------------------------------------------------------------------
    def _maintenance_pools(self, configuration_id: str) -> dict[str, list[str]]:
        by_cluster: dict[str, list[str]] = defaultdict(list)
        for mapping in self.deps.config.events.maintenance_configurations:
            if mapping.maintenance_configuration_id.lower() == configuration_id.lower():
                for ref in mapping.pools:
                    cluster, pool = ref.split("/", 1)
                    by_cluster[cluster].append(pool)
        return dict(by_cluster)

    def pre_maintenance(self, event: MaintenanceEvent) -> Outcome:
        """Plan a run that starts with the window and starts no node that could not finish
        before it ends; if the cluster cannot take it, cancel the maintenance run while
        the cut-off allows and say why."""
        pools_by_cluster = self._maintenance_pools(event.configuration_id)
        if not pools_by_cluster:
            return Outcome(
                "ignored", f"no pools are mapped to maintenance configuration {event.configuration_id}"
            )
        started, problems = [], []
        for cluster_name, pools in pools_by_cluster.items():
            problem = self._cannot_proceed(cluster_name, pools, source=event.correlation_id)
            if problem == "duplicate":
                return Outcome("duplicate", f"a run for maintenance {event.correlation_id} exists already")
            if problem:
                problems.append(f"{cluster_name}: {problem}")
                continue
            try:
                run = self.runs.start(
                    StartRequest(
                        cluster=cluster_name,
                        pools=pools,
                        reason=f"Update Manager maintenance window {iso(event.start.timestamp())} - "
                        f"{iso(event.end.timestamp())}",
                        trigger="maintenance",
                        not_before=event.start.timestamp(),
                        deadline=event.end.timestamp(),
                        source=event.correlation_id,
                    )
                )
                started.append(run.id)
            except RunConflictError as exc:
                problems.append(f"{cluster_name}: {exc}")
            except ValidationError as exc:
                problems.append(f"{cluster_name}: {exc}")
        if problems and not started:
            return self._cancel_maintenance(event, "; ".join(problems))
        detail = f"maintenance {event.correlation_id} planned"
        if problems:
            detail += f"; not planned: {'; '.join(problems)}"
        return Outcome("started", detail, tuple(started))

    def _cannot_proceed(self, cluster_name: str, pools: list[str], *, source: str) -> str | None:
        try:
            cluster = self.deps.config.cluster(cluster_name)
        except KeyError:
            return f"cluster {cluster_name} is not configured"
        for run in self.deps.store.list_runs(cluster=cluster_name):
            if run.source == source:
                return "duplicate"
        active = self.deps.store.active_run(cluster_name)
        if active:
            return f"run {active} is still active on the cluster"
        kube = self.deps.kube(cluster_name)
        try:
            nodes = kube.list_nodes()
        except (TemporaryError, PermanentError) as exc:
            return f"the API server is not reachable: {exc}"
        for pool_name in pools:
            pool = cluster.pool(pool_name)
            members = [n for n in nodes if _in_pool(n, pool)]
            unhealthy = [n.name for n in members if not n.ready]
            budget = resolve_max_unavailable(pool.max_unavailable, len(members))
            if len(unhealthy) > budget:
                return (
                    f"pool {pool_name} is unhealthy: {len(unhealthy)} nodes NotReady "
                    f"({', '.join(unhealthy[:5])}), more than its budget of {budget}"
                )
        return None

    def _cancel_maintenance(self, event: MaintenanceEvent, why: str) -> Outcome:
        now = datetime.fromtimestamp(self.deps.clock.now(), UTC)
        if event.cancellation_cutoff and now > event.cancellation_cutoff:
            return Outcome(
                "refused",
                f"cannot proceed ({why}) and the cancellation cut-off {event.cancellation_cutoff} "
                "has passed; the maintenance runs without node patching",
            )
        parts = event.correlation_id.split("/")
        if len(parts) < 3 or parts[1].lower() != "subscriptions":
            raise ValidationError(f"maintenance correlation id is not a resource id: {event.correlation_id}")
        self.deps.compute(parts[2]).arm_request(
            "PUT",
            event.correlation_id,
            api_version=MAINTENANCE_API_VERSION,
            body={"properties": {"status": "Cancel"}},
        )
        logger.warning("maintenance run %s cancelled: %s", event.correlation_id, why)
        return Outcome("cancelled", f"maintenance run cancelled through the cancellation API: {why}")

    def post_maintenance(self, event: MaintenanceEvent) -> Outcome:
        """Close the window: nodes in flight finish, nodes not reached are deferred to the
        next window."""
        closed = []
        for cluster_name in self._maintenance_pools(event.configuration_id):
            for run in self.deps.store.list_runs(cluster=cluster_name):
                if run.source != event.correlation_id or run.state.terminal:
                    continue
                run.deadline = min(run.deadline or self.deps.clock.now(), self.deps.clock.now())
                self.deps.store.commit(run)
                self.deps.queue.send(WorkItem("admit", run.id))
                closed.append(run.id)
        if not closed:
            return Outcome("ignored", f"no open run for maintenance {event.correlation_id}")
        return Outcome("closed", f"maintenance window closed ({event.status or 'no status'})", tuple(closed))

    # ---- Compute Gallery ----------------------------------------------------------------------
    def image_version(self, version_id: str, *, attempt: int = 0) -> Outcome:
        """Roll a new image version onto the pools built from its definition, once it has
        finished replicating (looked at again up to ``MAX_IMAGE_CHECKS`` times)."""
        definition = version_id.rsplit("/versions/", 1)[0].lower()
        mappings = [
            m for m in self.deps.config.events.gallery_images if m.image_definition_id.lower() == definition
        ]
        if not mappings:
            return Outcome("ignored", f"no pools are mapped to image definition {definition}")
        done = self.deps.store.get_record("image-rolled", version_id.lower())
        if done is not None:
            return Outcome("duplicate", f"image version {version_id} was rolled out at {done.get('at')}")
        subscription = version_id.split("/")[2]
        compute = self.deps.compute(subscription)
        try:
            version = compute.get_image_version(version_id)
        except NotFoundError:
            return Outcome(
                "ignored", f"image version {version_id} does not exist (deleted, or an intermediate event)"
            )
        if version.provisioning_state.lower() == "failed":
            return Outcome("ignored", f"image version {version_id} failed to provision")
        if version.provisioning_state.lower() != "succeeded":
            return self._look_again(version_id, attempt, f"image version is {version.provisioning_state}")
        started: list[str] = []
        notes: list[str] = []
        waiting = False
        for mapping in mappings:
            by_cluster: dict[str, list[str]] = defaultdict(list)
            for pool_ref in mapping.pools:
                cluster_part, pool_part = pool_ref.split("/", 1)
                by_cluster[cluster_part].append(pool_part)
            for cluster_name, pool_names in by_cluster.items():
                cluster = self.deps.config.cluster(cluster_name)
                kubelet = version.tags.get(mapping.kubernetes_version_tag) or next(
                    (
                        cluster.pool(p).kubernetes_version
                        for p in pool_names
                        if cluster.pool(p).kubernetes_version
                    ),
                    None,
                )
                if kubelet:
                    apiserver = self.deps.kube(cluster_name).server_version()
                    problem = skew_problem(kubelet=kubelet, apiserver=apiserver)
                    if problem:
                        notes.append(f"{cluster_name}: refused, {problem}")
                        continue
                active = self.deps.store.active_run(cluster_name)
                if active:
                    waiting = True
                    notes.append(f"{cluster_name}: run {active} is active; will roll after it")
                    continue
                targets = self._off_model(
                    cluster, pool_names, compute, pin=version.id if mapping.pin_versions else None
                )
                if not targets:
                    notes.append(f"{cluster_name}: every node is already on the latest model")
                    continue
                try:
                    run = self.runs.start(
                        StartRequest(
                            cluster=cluster_name,
                            pools=pool_names,
                            nodes=targets,
                            reason=f"new node image {version.version}",
                            trigger="image",
                            source=version_id.lower(),
                        )
                    )
                    started.append(run.id)
                except RunConflictError as exc:
                    waiting = True
                    notes.append(f"{cluster_name}: {exc}")
        if waiting and not started:
            return self._look_again(version_id, attempt, "; ".join(notes))
        refused = [n for n in notes if "refused" in n]
        if started or not waiting:
            self.deps.store.put_record(
                "image-rolled",
                version_id.lower(),
                {"at": iso(self.deps.clock.now()), "runs": started, "notes": notes},
            )
        if refused and not started:
            return Outcome("refused", "; ".join(notes))
        action = "started" if started else ("waiting" if waiting else "nothing")
        return Outcome(
            action, f"image {version.version}: " + ("; ".join(notes) or "rolling out"), tuple(started)
        )

    def _look_again(self, version_id: str, attempt: int, why: str) -> Outcome:
        if attempt >= MAX_IMAGE_CHECKS:
            outcome = Outcome(
                "refused", f"gave up on image version {version_id} after {attempt} checks: {why}"
            )
            self._record("image-check", version_id.lower(), outcome)
            return outcome
        delay = self.deps.config.workflow.image_recheck_interval.total_seconds()
        self.deps.queue.send(WorkItem("image", "", ref=version_id, seq=attempt + 1), delay=delay)
        return Outcome("waiting", f"{why}; looking again in {delay:.0f}s")

    def _off_model(
        self, cluster: ClusterConfig, pool_names: list[str], compute: ComputeClient, *, pin: str | None
    ) -> list[str]:
        """Point the pools' models at the new version (if pinned), then the nodes whose
        instance is not on the latest model."""
        nodes = self.deps.kube(cluster.name).list_nodes()
        targets: list[str] = []
        for pool_name in pool_names:
            pool = cluster.pool(pool_name)
            if pin:
                compute.set_model_image(pool.scale_set_id, pin)
            instances: dict[str, Instance] = {
                i.instance_id: i for i in compute.list_instances(pool.scale_set_id)
            }
            for node in nodes:
                ref = parse_provider_id(node.provider_id)
                if ref is None or not ref.same_scale_set(pool.scale_set_id):
                    continue
                instance = instances.get(ref.instance_id)
                if instance is not None and not instance.latest_model_applied:
                    targets.append(node.name)
        return targets

    # ---- Azure Automation ------------------------------------------------------------------------
    def automation_run(self, context: AutomationRunContext, *, automation: object) -> Outcome:
        seen = self.deps.store.get_record("automation", context.run_id)
        if seen is not None:
            return Outcome(
                "duplicate",
                f"automation run {context.run_id} was handled at {seen.get('at')}",
                tuple(seen.get("runs", [])),
            )
        vm_ids: list[str] | None = None
        for account in self.deps.config.events.automation_accounts:
            try:
                vm_ids = automation.configuration_vms(account, context.configuration_name)  # type: ignore[attr-defined]
                break
            except NotFoundError:
                continue
        if vm_ids is None:
            raise NotFoundError(
                f"software update configuration {context.configuration_name} was not found in the configured "
                "automation accounts"
            )
        wanted = {v.lower() for v in vm_ids}
        started, notes = [], []
        for cluster in self.deps.config.clusters:
            names = []
            for node in self.deps.kube(cluster.name).list_nodes():
                vm_id = _vm_id(node)
                if vm_id and vm_id in wanted and any(_in_pool(node, p) for p in cluster.pools):
                    names.append(node.name)
            if not names:
                continue
            try:
                run = self.runs.start(
                    StartRequest(
                        cluster=cluster.name,
                        nodes=names,
                        reason=f"Automation update deployment {context.configuration_name}",
                        trigger="automation",
                        source=context.run_id,
                    )
                )
                started.append(run.id)
            except RunConflictError as exc:
                notes.append(f"{cluster.name}: {exc}")
        if not started and not notes:
            outcome = Outcome("nothing", f"none of the {len(wanted)} machines is a node of a configured pool")
        elif not started:
            outcome = Outcome("refused", "; ".join(notes))
        else:
            outcome = Outcome(
                "started", f"{context.configuration_name}: " + ("; ".join(notes) or "planned"), tuple(started)
            )
        if started or not notes:
            self._record("automation", context.run_id, outcome)
        return outcome

    # ---- schedules ----------------------------------------------------------------------------
    def scheduled(self) -> list[Outcome]:
        """Per pool, inside its window: nodes not on the latest model, nodes older than
        maxNodeAge, nodes asking for a reboot. One run per cluster; the earliest window
        end among its pools is the run's deadline. Due nodes that a run would leave alone
        (opted out, cordoned) are not planned: otherwise every tick would start a run that
        skips them at once. The decision, with the nodes left and why, is the cluster's
        ``schedule`` record (the latest tick's)."""
        now = self.deps.clock.now()
        moment = datetime.fromtimestamp(now, UTC)
        outcomes = []
        for cluster in self.deps.config.clusters:
            active = self.deps.store.active_run(cluster.name)
            if active:
                outcome = Outcome("waiting", f"{cluster.name}: run {active} is active")
                self._record("schedule", cluster.name, outcome, left={})
                outcomes.append(outcome)
                continue
            nodes = None
            targets: list[str] = []
            left: dict[str, str] = {}
            pools: list[str] = []
            deadline = 0.0
            for pool in cluster.pools:
                end = 0.0
                if pool.window:
                    occurrence = MaintenanceWindow(self.deps.config.window(pool.window)).occurrence_at(moment)
                    if occurrence is None:
                        continue
                    end = occurrence.end.timestamp()
                if nodes is None:
                    nodes = self.deps.kube(cluster.name).list_nodes()
                due = []
                for node in self._due(pool, [n for n in nodes if _in_pool(n, pool)], now):
                    why = left_alone(node, pool)
                    if why:
                        left[node.name] = why
                    else:
                        due.append(node.name)
                if due:
                    targets += due
                    pools.append(pool.name)
                    if end:
                        deadline = end if not deadline else min(deadline, end)
            also = f"; left alone: {', '.join(f'{k} ({v})' for k, v in sorted(left.items()))}" if left else ""
            if not targets:
                outcome = Outcome("nothing", f"{cluster.name}: no node is due in an open window{also}")
                self._record("schedule", cluster.name, outcome, left=left)
                outcomes.append(outcome)
                continue
            try:
                run = self.runs.start(
                    StartRequest(
                        cluster=cluster.name,
                        pools=pools,
                        nodes=targets,
                        reason=f"scheduled: {len(targets)} nodes due",
                        trigger="schedule",
                        deadline=deadline,
                        source=f"schedule:{iso(now)}",
                    )
                )
                outcome = Outcome("started", f"{cluster.name}: {len(targets)} nodes{also}", (run.id,))
            except (RunConflictError, ValidationError) as exc:
                outcome = Outcome("refused", f"{cluster.name}: {exc}")
            self._record("schedule", cluster.name, outcome, left=left)
            outcomes.append(outcome)
        return outcomes

    def _due(self, pool: PoolConfig, nodes: list[Node], now: float) -> list[Node]:
        instances = {
            i.instance_id: i
            for i in self.deps.compute(pool.scale_set["subscription"]).list_instances(pool.scale_set_id)
        }
        due = []
        for node in nodes:
            ref = parse_provider_id(node.provider_id)
            instance = instances.get(ref.instance_id) if ref else None
            if due_reasons(node, instance, pool, now=now):
                due.append(node)
        return due


def _in_pool(node: Node, pool: PoolConfig) -> bool:
    ref = parse_provider_id(node.provider_id)
    return ref is not None and ref.same_scale_set(pool.scale_set_id)


def _vm_id(node: Node) -> str | None:
    ref = parse_provider_id(node.provider_id)
    if ref is None:
        return None
    return f"{ref.scale_set_id}/virtualMachines/{ref.instance_id}".lower()


__all__ = ["Intake", "Outcome"]
