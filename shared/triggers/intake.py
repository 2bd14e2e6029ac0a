"""From signals to runs: Update Manager maintenance events, new gallery images, Azure
Automation pre-scripts and schedules.

Each handler decides *whether* and *what* to patch, then starts runs through
``RunService`` like an operator would; the workflow does the rest. Every decision is
recorded (``store.put_record("event", ...)``) with a reason, so "why did nothing
happen?" has an answer. Rules shared by all of them:

* targets are resolved through ``spec.providerID``, never by name alone;
* a redelivered signal (same id) is a no-op, even when it arrives while its twin is being
  handled (``shared.triggers.idempotency``: the id is claimed first), and a signal for a cluster
  that already has an active run does not start a second one;
* every run keeps its pools' windows and blackout dates (``RunService.start``);
* an image whose kubelet would break the version-skew policy is refused, and said so;
  the refusal is looked at again when the control plane moves, never taken as rolled.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from shared.adapters.compute import ComputeClient, Instance, parse_provider_id, unguarded_upgrade
from shared.adapters.kube import Node
from shared.adapters.notify import Notice, NoticeKind
from shared.adapters.workqueue import WorkItem
from shared.clock import iso
from shared.config import ClusterConfig, PoolConfig
from shared.errors import ConfigError, NotFoundError, PermanentError, TemporaryError, ValidationError
from shared.retry import retry_on_conflict
from shared.rollout.budget import resolve_max_unavailable
from shared.rollout.plan import due_reasons
from shared.rollout.planner import left_alone
from shared.rollout.ports import Collaborators
from shared.rollout.requests import StartRequest
from shared.rollout.service import RunConflictError, RunService
from shared.rollout.skew import skew_problem
from shared.rollout.windows import MaintenanceWindow
from shared.triggers import idempotency
from shared.triggers.events import (
    POST_MAINTENANCE,
    PRE_MAINTENANCE,
    RESOURCE_WRITE_SUCCESS,
    EventEnvelope,
    MaintenanceEvent,
    ResourceWriteEvent,
)

logger = logging.getLogger(__name__)

MAINTENANCE_API_VERSION = "2023-09-01-preview"
# Image versions settled (rolled, or nothing to roll): the whole version, and per cluster.
IMAGE_ROLLED = "image-rolled"
# Image versions refused for their kubelet's skew, per cluster, with the API server's version.
IMAGE_REFUSED = "image-refused"
MAX_IMAGE_CHECKS = 240  # with the default interval: four hours of replication or a busy cluster


@dataclass(frozen=True)
class Outcome:
    action: str  # started | duplicate | ignored | cancelled | noted | waiting | refused | rejected | nothing
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
        held = idempotency.claim(self.deps.store, "event", key, now=self.deps.clock.now())
        if not isinstance(held, idempotency.Claim):
            return Outcome(
                "duplicate", f"event {envelope.id} was handled at {held.get('at')}: {held.get('outcome')}"
            )
        try:
            outcome = self._dispatch(kind, envelope)
        except (ValidationError, PermanentError) as exc:
            # Acknowledged, never redelivered: recorded as such, so a copy is a duplicate.
            self._finish(held, Outcome("rejected", str(exc)), type=kind or "", id=envelope.id)
            raise
        except BaseException:
            idempotency.give_back(self.deps.store, held)
            raise
        self._finish(held, outcome, type=kind or "", id=envelope.id)
        return outcome

    def _dispatch(self, kind: str | None, envelope: EventEnvelope) -> Outcome:
        if kind == PRE_MAINTENANCE:
            return self.pre_maintenance(MaintenanceEvent.from_envelope(envelope))
        if kind == POST_MAINTENANCE:
            return self.post_maintenance(MaintenanceEvent.from_envelope(envelope))
        if kind == RESOURCE_WRITE_SUCCESS:
            write = ResourceWriteEvent.from_envelope(envelope)
            if not write.is_image_version_write:
                return Outcome("ignored", f"resource write {write.operation_name} is not an image version")
            return self.image_version(write.resource_uri)
        return Outcome("ignored", f"event type {envelope.type or '(none)'} is not handled")

    def _finish(self, held: idempotency.Claim, outcome: Outcome, **extra: Any) -> None:
        idempotency.finish(self.deps.store, held, self._record_data(outcome, **extra))

    def _record(self, kind: str, key: str, outcome: Outcome, **extra: Any) -> None:
        self.deps.store.put_record(kind, key, self._record_data(outcome, **extra))

    def _record_data(self, outcome: Outcome, **extra: Any) -> dict[str, Any]:
        return {
            "at": iso(self.deps.clock.now()),
            "outcome": outcome.action,
            "detail": outcome.detail,
            "runs": list(outcome.runs),
            **extra,
        }

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
        self.deps.notify(
            Notice(
                NoticeKind.MAINTENANCE_RUN_CANCELLED,
                why,
                details={"maintenanceRun": event.correlation_id, "configuration": event.configuration_id},
            )
        )
        return Outcome("cancelled", f"maintenance run cancelled through the cancellation API: {why}")

    def post_maintenance(self, event: MaintenanceEvent) -> Outcome:
        """Update Manager raises the post-event when the maintenance job has completed,
        that is when the updates are installed: it does not end the window, which lasts
        until the event's ``endDateTime``. So nodes keep starting until then (an open
        run's deadline becomes that end if it had none later), and the event is noted."""
        end = event.end.timestamp()
        noted = []
        for cluster_name in self._maintenance_pools(event.configuration_id):
            for run in self.deps.store.list_runs(cluster=cluster_name):
                if run.source != event.correlation_id or run.state.terminal:
                    continue
                noted.append(run.id)
                if retry_on_conflict(partial(self._end_window_at, run.id, end), sleep=self.deps.clock.sleep):
                    self.deps.queue.send(WorkItem("admit", run.id))
        if not noted:
            return Outcome("ignored", f"no open run for maintenance {event.correlation_id}")
        return Outcome(
            "noted",
            f"maintenance {event.correlation_id} installed its updates ({event.status or 'no status'}); "
            f"the window stays open until {iso(end)}",
            tuple(noted),
        )

    def _end_window_at(self, run_id: str, end: float) -> bool:
        """Give a run without a deadline as early as ``end`` that deadline; whether it changed."""
        run = self.deps.store.get_run(run_id)
        if run.state.terminal or (run.deadline and run.deadline <= end):
            return False
        run.deadline = end
        self.deps.store.commit(run)
        return True

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
        done = self.deps.store.get_record(IMAGE_ROLLED, version_id.lower())
        if done is not None:
            return Outcome("duplicate", f"image version {version_id} was rolled out at {done.get('at')}")
        try:
            version = self.deps.compute(version_id.split("/")[2]).get_image_version(version_id)
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
        waiting = refused = False
        version_key = version_id.lower()
        for mapping in mappings:
            by_cluster: dict[str, list[str]] = defaultdict(list)
            for pool_ref in mapping.pools:
                cluster_part, pool_part = pool_ref.split("/", 1)
                by_cluster[cluster_part].append(pool_part)
            for cluster_name, pool_names in by_cluster.items():
                # Settled per cluster: a look again (another run was active, a refusal
                # re-evaluated) never rolls a cluster twice.
                cluster_key = f"{version_key}|{cluster_name}"
                rolled = self.deps.store.get_record(IMAGE_ROLLED, cluster_key)
                if rolled is not None:
                    notes.append(f"{cluster_name}: rolled out at {rolled.get('at')}")
                    continue
                cluster = self.deps.config.cluster(cluster_name)
                tagged = version.tags.get(mapping.kubernetes_version_tag)
                kubelet = tagged or next(
                    (
                        cluster.pool(p).kubernetes_version
                        for p in pool_names
                        if cluster.pool(p).kubernetes_version
                    ),
                    None,
                )
                nodes = self.deps.kube(cluster_name).list_nodes()
                if kubelet:
                    problem = self._skew_refusal(cluster, pool_names, nodes, version_id, kubelet)
                    if problem:
                        refused = True
                        notes.append(f"{cluster_name}: refused, {problem}")
                        continue
                active = self.deps.store.active_run(cluster_name)
                if active:
                    waiting = True
                    notes.append(f"{cluster_name}: run {active} is active; will roll after it")
                    continue
                refusals: dict[str, str] = {}
                if mapping.pin_versions:
                    refusals = self._self_upgrading(cluster, pool_names)
                    notes += [f"{cluster_name}/{pool}: refused, {why}" for pool, why in refusals.items()]
                    if len(refusals) == len(pool_names):
                        refused = True
                        continue
                writable = [p for p in pool_names if p not in refusals]
                targets = self._off_model(
                    cluster,
                    writable,
                    pin=version.id if mapping.pin_versions else None,
                    nodes=nodes,
                )
                if not targets:
                    notes.append(f"{cluster_name}: every node is already on the latest model")
                    self._rolled(cluster_key, [])
                    continue
                try:
                    run = self.runs.start(
                        StartRequest(
                            cluster=cluster_name,
                            pools=writable,
                            nodes=targets,
                            # A pool left out says why on the run, not only in the event record.
                            reason=f"new node image {version.version}"
                            + "".join(f"; pool {p} refused: {why}" for p, why in refusals.items()),
                            trigger="image",
                            source=version_key,
                            kubelet_version=tagged or "",
                        )
                    )
                except RunConflictError as exc:
                    waiting = True
                    notes.append(f"{cluster_name}: {exc}")
                    continue
                except ValidationError as exc:
                    # Its pools' windows are never open together, say: not rolled, and why.
                    refused = True
                    notes.append(f"{cluster_name}: refused, {exc}")
                    continue
                started.append(run.id)
                self._rolled(cluster_key, [run.id])
                if run.not_before > self.deps.clock.now():
                    notes.append(f"{cluster_name}: {run.state_reason}")
        if waiting:
            later = self._look_again(version_id, attempt, "; ".join(notes))
            if not started:
                return later
        elif not refused:
            self._rolled(version_key, started, notes=notes)
        if refused and not started:
            return Outcome("refused", "; ".join(notes))
        action = "started" if started else ("waiting" if waiting else "nothing")
        return Outcome(
            action, f"image {version.version}: " + ("; ".join(notes) or "rolling out"), tuple(started)
        )

    def _rolled(self, key: str, runs: list[str], **extra: Any) -> None:
        self.deps.store.put_record(
            IMAGE_ROLLED, key, {"at": iso(self.deps.clock.now()), "runs": runs, **extra}
        )

    def _skew_refusal(
        self, cluster: ClusterConfig, pool_names: list[str], nodes: list[Node], version_id: str, kubelet: str
    ) -> str | None:
        """Why the image's kubelet may not join this cluster now, recorded as an
        ``image-refused`` record with the API server's version: when the control plane
        moves, ``recheck_refused_images`` looks at the image again."""
        apiserver = self.deps.kube(cluster.name).server_version()
        pools = [cluster.pool(p) for p in pool_names]
        current = {n.name: n.kubelet_version for n in nodes if any(_in_pool(n, p) for p in pools)}
        problem = skew_problem(kubelet=kubelet, apiserver=apiserver, nodes=current)
        if problem:
            key = f"{version_id.lower()}|{cluster.name}"
            before = self.deps.store.get_record(IMAGE_REFUSED, key)
            if before is None or before.get("reason") != problem:
                # Told once per refusal: a redelivery or a recheck with the same answer is news to nobody.
                self.deps.notify(
                    Notice(
                        NoticeKind.IMAGE_REFUSED,
                        problem,
                        cluster=cluster.name,
                        details={"versionId": version_id},
                    )
                )
            self.deps.store.put_record(
                IMAGE_REFUSED,
                key,
                {
                    "at": iso(self.deps.clock.now()),
                    "versionId": version_id,
                    "cluster": cluster.name,
                    "apiserver": apiserver,
                    "reason": problem,
                },
            )
        return problem

    def recheck_refused_images(self) -> list[Outcome]:
        """Look again at each image refused for its skew whose cluster's API server now
        reports another version (the control plane was upgraded, or rolled back)."""
        store = self.deps.store
        again: set[str] = set()
        for record in store.list_records(IMAGE_REFUSED):
            version_id, cluster = str(record.get("versionId", "")), str(record.get("cluster", ""))
            if store.get_record(IMAGE_ROLLED, f"{version_id.lower()}|{cluster}") is not None:
                continue
            try:
                apiserver = self.deps.kube(cluster).server_version()
            except (KeyError, ConfigError, TemporaryError, PermanentError) as exc:
                logger.warning(
                    "refused image %s: cannot ask cluster %s for its version: %s", version_id, cluster, exc
                )
                continue
            if apiserver != record.get("apiserver"):
                again.add(version_id)
        return [self.image_version(v) for v in sorted(again)]

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

    def _scale_sets_client(self, pool: PoolConfig) -> ComputeClient:
        """The client of the scale set's own subscription: a central image subscription
        holds the gallery, never the scale sets."""
        return self.deps.compute(pool.scale_set["subscription"])

    def _self_upgrading(self, cluster: ClusterConfig, pool_names: list[str]) -> dict[str, str]:
        """The pools whose scale set would upgrade itself, unguarded, if its model were
        written (upgradePolicy Automatic or Rolling), with why: read for every pool before
        any model is written, so a refusal leaves every model as it was."""
        refusals = {}
        for pool_name in pool_names:
            pool = cluster.pool(pool_name)
            policy = self._scale_sets_client(pool).get_upgrade_policy(pool.scale_set_id)
            problem = unguarded_upgrade(pool.scale_set["name"], policy)
            if problem:
                refusals[pool_name] = problem
        return refusals

    def _off_model(
        self,
        cluster: ClusterConfig,
        pool_names: list[str],
        *,
        pin: str | None,
        nodes: list[Node],
    ) -> list[str]:
        """Point the pools' models at the new version (if pinned), then the nodes whose
        instance is not on the latest model."""
        targets: list[str] = []
        for pool_name in pool_names:
            pool = cluster.pool(pool_name)
            compute = self._scale_sets_client(pool)
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
    return ref.vm_id if ref is not None else None


__all__ = ["Intake", "Outcome"]
