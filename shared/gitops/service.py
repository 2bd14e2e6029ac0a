"""GitOps syncs: a verified push becomes reconcile requests, records, and queued work.

The webhook must answer GitHub within 10 seconds, and GitHub never redelivers on its own.
So one delivery goes through these steps, each one persisted before the next:

1. **Claim** the delivery id (``create_record("delivery", ...)``: one conditional
   create). A second delivery with that id is acknowledged and not acted on, unless the
   first attempt visibly failed (state ``failed``) or died before finishing (still
   ``received`` after ``STALE_CLAIM_SECONDS``): then it is processed again, with the same
   annotation token, so nothing is requested twice in Flux's eyes.
2. **Record** the push facts (``gitops-sync`` record, state ``received``): everything a
   later, queued run needs to plan a cluster again.
3. **Sync inline**, cluster by cluster, while the plan is small (``max_inline_objects``)
   and the soft time budget (``inline_budget`` seconds) lasts; a cluster that does not
   fit, runs out of time, or answers with a retryable error is **handed off** to the
   ``gitops-sync`` queue as one message per cluster. The queue trigger plans that
   cluster again and finishes it; already-annotated objects are skipped.
4. **Record the result** per cluster (the sync record for inline work, a
   ``gitops-sync-cluster`` record per queued cluster, so concurrent queue runs never
   overwrite each other) and answer 200 (done), 202 (queued or nothing to do) or 503
   (the hand-off itself failed; a redelivery will be processed).

What Flux made of the requests is read lazily, when someone asks for the sync
(``get_sync``), and kept once every object's answer is final.

Deleted refs are recorded and not acted on: Flux keeps serving the artifact it fetched
last, and a reconcile request would only turn the source not Ready ("reference not
found") without removing anything. Retiring what a ref deployed is done by changing the
Flux objects themselves, through a commit to a ref that still exists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from shared.adapters.notify import Notice, NoticeKind
from shared.adapters.workqueue import message_json, send_dead_letter
from shared.clock import iso, parse_iso
from shared.config import PatcherConfig
from shared.errors import ConfigError, NotFoundError, PermanentError, TemporaryError, ValidationError
from shared.gitops.github import PushEvent
from shared.gitops.plan import (
    KINDS,
    FluxClient,
    FluxObjects,
    KubeFluxClient,
    OutOfTime,
    PushFacts,
    execute,
    observe,
    plan_cluster,
    repository_key,
    requested_at_token,
)
from shared.rollout.listing import PageRequest, SyncQuery
from shared.rollout.ports import Collaborators
from shared.validation import format_problem

logger = logging.getLogger(__name__)

DELIVERY_KIND = "delivery"
SYNC_KIND = "gitops-sync"
CLUSTER_KIND = "gitops-sync-cluster"
SYNC_QUEUE = "gitops-sync"  # the queue trigger binds this exact name
SCHEMA_VERSION = 1

INLINE_MAX_OBJECTS = 20
INLINE_BUDGET_SECONDS = 3.0
# Kubernetes calls made while GitHub waits must fail fast; queued runs can wait longer.
INLINE_TIMEOUT = (2.0, 3.0)
QUEUED_TIMEOUT = (5.0, 30.0)
STALE_CLAIM_SECONDS = 60.0
# The record must stay well inside a Table entity (1 MiB); beyond this the paths are not kept
# and every consumer is reconciled.
MAX_RECORDED_PATHS = 1000
MAX_RECORDED_PATH_CHARS = 100_000

DELETED_REASON = (
    "the ref was deleted: Flux keeps serving the last artifact it fetched, and a reconcile "
    "request would only make the source fail to find the ref, so nothing was requested"
)


# ---- the queue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncMessage:
    """Plan and request delivery ``delivery`` on ``cluster`` (the push facts are in the record)."""

    delivery: str
    cluster: str

    def to_json(self) -> str:
        return json.dumps({"v": SCHEMA_VERSION, "delivery": self.delivery, "cluster": self.cluster})

    @classmethod
    def parse(cls, body: str | bytes) -> SyncMessage:
        data = message_json(body, what="gitops sync message")
        if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION:
            raise ValidationError("gitops sync message must be an object with v=1")
        delivery, cluster = data.get("delivery"), data.get("cluster")
        if not isinstance(delivery, str) or not delivery or not isinstance(cluster, str) or not cluster:
            raise ValidationError("gitops sync message needs a delivery and a cluster")
        if problem := format_problem("delivery", delivery) or format_problem("cluster", cluster):
            raise ValidationError(f"gitops sync message: {problem}")
        return cls(delivery, cluster)


class SyncQueue(Protocol):
    def send(self, message: SyncMessage) -> None: ...

    def dead_letter(self, body: str, *, reason: str) -> None: ...


class StorageSyncQueue:
    """The ``gitops-sync`` Azure Storage queue; base64 text, the host's default encoding."""

    def __init__(self, client: Any, poison: Any = None) -> None:
        self._client = client
        self._poison = poison

    @classmethod
    def from_settings(cls, settings: Any) -> StorageSyncQueue:
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        from shared.settings import storage_options

        kwargs: dict[str, Any] = {
            "message_encode_policy": TextBase64EncodePolicy(),
            "message_decode_policy": TextBase64DecodePolicy(),
            **storage_options(settings),
        }
        if settings.storage_connection_string:
            return cls(
                *(
                    QueueClient.from_connection_string(settings.storage_connection_string, name, **kwargs)
                    for name in (SYNC_QUEUE, f"{SYNC_QUEUE}-poison")
                )
            )
        from shared.settings import azure_credential

        return cls(
            *(
                QueueClient(settings.queue_service_uri, name, credential=azure_credential(), **kwargs)
                for name in (SYNC_QUEUE, f"{SYNC_QUEUE}-poison")
            )
        )

    def send(self, message: SyncMessage) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        try:
            self._client.send_message(message.to_json())
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                self._client.create_queue()
            self._client.send_message(message.to_json())

    def dead_letter(self, body: str, *, reason: str) -> None:
        """A message no retry can fix, with why, where the host puts the ones that failed
        every delivery (the node-work queue's envelope: ``{"reason", "body"}``)."""
        send_dead_letter(self._poison, body, reason=reason)


class MemorySyncQueue:
    """For tests: remembers what was sent."""

    def __init__(self) -> None:
        self.sent: list[SyncMessage] = []
        self.dead: list[tuple[str, str]] = []

    def send(self, message: SyncMessage) -> None:
        self.sent.append(message)

    def dead_letter(self, body: str, *, reason: str) -> None:
        self.dead.append((body, reason))


_queue_override: SyncQueue | None = None


def use_sync_queue(queue: SyncQueue | None) -> None:
    """Send hand-offs elsewhere (functional tests use ``MemorySyncQueue``)."""
    global _queue_override  # noqa: PLW0603 - process-wide like shared.app.use_collaborators
    _queue_override = queue


def sync_queue() -> SyncQueue:
    return _queue_override if _queue_override is not None else _real_sync_queue()


@lru_cache(maxsize=1)
def _real_sync_queue() -> SyncQueue:
    from shared.app import settings

    return StorageSyncQueue.from_settings(settings())


# ---- which clusters ---------------------------------------------------------------------------


def clusters_for(config: PatcherConfig, repo_keys: frozenset[str]) -> list[str] | None:
    """The clusters a push to this repository may concern; None if it is not configured.

    No ``gitops.repositories`` at all means every cluster, for any repository (the URL
    match against each cluster's GitRepository objects still decides). A listed
    repository with no ``clusters`` also means every cluster.
    """
    every = [c.name for c in config.clusters]
    if not config.gitops.repositories:
        return every
    matched = [r for r in config.gitops.repositories if repository_key(r.url) in repo_keys]
    if not matched:
        return None
    if any(not r.clusters for r in matched):
        return every
    wanted = {name for r in matched for name in r.clusters}
    return [name for name in every if name in wanted]


# ---- the sync request (the record's push facts) -------------------------------------------------


@dataclass(frozen=True)
class SyncRequest:
    delivery: str
    token: str
    received_at: float
    repository: str
    url: str
    ref: str
    before: str
    after: str
    forced: bool
    created: bool
    facts: PushFacts
    clusters: tuple[str, ...]

    @classmethod
    def from_push(
        cls, delivery: str, push: PushEvent, *, token: str, now: float, clusters: list[str]
    ) -> SyncRequest:
        changes = push.changes
        paths, why = changes.paths, changes.reason
        if paths is not None and (
            len(paths) > MAX_RECORDED_PATHS or sum(len(p) for p in paths) > MAX_RECORDED_PATH_CHARS
        ):
            paths, why = None, f"the push changed more than {MAX_RECORDED_PATHS} files"
        keys = frozenset(k for u in push.repository.urls if (k := repository_key(u)))
        return cls(
            delivery=delivery,
            token=token,
            received_at=now,
            repository=push.repository.full_name,
            url=push.repository.urls[0],
            ref=push.ref,
            before=push.before,
            after=push.after,
            forced=push.forced,
            created=push.created,
            facts=PushFacts(keys, push.ref, push.commit_ids, paths, why),
            clusters=tuple(clusters),
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "delivery": self.delivery,
            "token": self.token,
            "receivedAt": iso(self.received_at),
            "repository": self.repository,
            "url": self.url,
            "ref": self.ref,
            "before": self.before,
            "commit": self.after,
            "forced": self.forced,
            "created": self.created,
            "repositoryKeys": sorted(self.facts.repo_keys),
            "commits": sorted(self.facts.commit_ids),
            "paths": None if self.facts.paths is None else sorted(self.facts.paths),
            "allConsumersReason": self.facts.why_all,
            "clusters": list(self.clusters),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> SyncRequest:
        paths = rec.get("paths")
        return cls(
            delivery=str(rec["delivery"]),
            token=str(rec["token"]),
            received_at=parse_iso(str(rec["receivedAt"])),
            repository=str(rec.get("repository") or ""),
            url=str(rec.get("url") or ""),
            ref=str(rec["ref"]),
            before=str(rec.get("before") or ""),
            after=str(rec.get("commit") or ""),
            forced=bool(rec.get("forced")),
            created=bool(rec.get("created")),
            facts=PushFacts(
                frozenset(rec.get("repositoryKeys") or []),
                str(rec["ref"]),
                frozenset(rec.get("commits") or []),
                None if paths is None else frozenset(paths),
                str(rec.get("allConsumersReason") or ""),
            ),
            clusters=tuple(rec.get("clusters") or []),
        )


@dataclass(frozen=True)
class Answer:
    """What the webhook tells GitHub."""

    status: int
    body: dict[str, Any]


def _overall(results: dict[str, dict[str, Any]]) -> str:
    states = {r.get("state") for r in results.values()}
    if not states:
        return "done"
    if "queued" in states:
        return "queued"
    if states == {"failed"}:
        return "failed"
    return "partial" if "failed" in states else "done"


# ---- the service ------------------------------------------------------------------------------


class GitOpsService:
    def __init__(
        self,
        deps: Collaborators,
        *,
        queue: Callable[[], SyncQueue] = sync_queue,
        flux: Callable[[str, tuple[float, float]], FluxClient] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        max_inline_objects: int = INLINE_MAX_OBJECTS,
        inline_budget: float = INLINE_BUDGET_SECONDS,
    ) -> None:
        self._deps = deps
        self._queue = queue
        self._flux_factory = flux or (
            lambda cluster, timeout: KubeFluxClient(deps.kube(cluster).custom, timeout=timeout)
        )
        self._monotonic = monotonic
        self._max_inline = max_inline_objects
        self._budget = inline_budget

    def _flux(self, cluster: str, timeout: tuple[float, float]) -> FluxClient:
        return self._flux_factory(cluster, timeout)

    # ---- the webhook
    def handle_push(self, delivery: str, push: PushEvent) -> Answer:
        store, now = self._deps.store, self._deps.clock.now()
        base = {"delivery": delivery, "repository": push.repository.full_name, "ref": push.ref}
        token = requested_at_token(now)
        if not store.create_record(
            DELIVERY_KIND, delivery, {"receivedAt": iso(now), "event": "push", **base}
        ):
            earlier = self._earlier_attempt(delivery, now)
            if earlier is None:
                logger.info("delivery %s was seen before; not acted on again", delivery)
                return Answer(200, {"status": "duplicate", **base})
            token = earlier or token
            logger.warning("delivery %s: the earlier attempt did not finish; processing it again", delivery)

        def nothing_to_sync(state: str, reason: str) -> Answer:
            # Recorded so that the status endpoint explains why nothing happened.
            record = {**base, "token": token, "receivedAt": iso(now), "commit": push.after, "clusters": []}
            put_sync(store, delivery, {**record, "state": state, "reason": reason, "results": {}})
            return Answer(202, {"status": state, "reason": reason, **base})

        if push.deleted:
            return nothing_to_sync("skipped", DELETED_REASON)

        keys = frozenset(k for u in push.repository.urls if (k := repository_key(u)))
        clusters = clusters_for(self._deps.config, keys)
        if clusters is None:
            return nothing_to_sync("ignored", "the repository is not in gitops.repositories")

        request = SyncRequest.from_push(delivery, push, token=token, now=now, clusters=clusters)
        record = {**request.to_record(), "state": "received", "results": {}}
        put_sync(store, delivery, record)

        results, deferred = self._sync_inline(request)
        if deferred:
            try:
                queue = self._queue()
                for cluster in deferred:
                    queue.send(SyncMessage(delivery, cluster))
                    results[cluster] = {"state": "queued"}
            except Exception as exc:  # storage down or misconfigured: say so, allow a redelivery
                logger.error("delivery %s: could not hand off %s: %s", delivery, deferred, exc)
                # Messages sent before the failure still run; a redelivery repeats them harmlessly.
                for cluster in deferred:
                    results[cluster] = {
                        "state": "failed",
                        "error": f"could not queue: {exc.__class__.__name__}",
                    }
                record.update(state="failed", results=results, finishedAt=iso(self._deps.clock.now()))
                put_sync(store, delivery, record)
                self._tell_failures(delivery, record, results)
                return Answer(
                    503, {"status": "failed", "reason": "could not queue the remaining work", **base}
                )
        record.update(state=_overall(results), results=results, finishedAt=iso(self._deps.clock.now()))
        put_sync(store, delivery, record)
        self._tell_failures(delivery, record, results)
        body = {
            "status": record["state"],
            **base,
            "commit": request.after,
            "requestedAt": token,
            "clusters": {name: _summary(r) for name, r in results.items()},
        }
        logger.info("delivery %s (%s %s): %s", delivery, request.repository, request.ref, body["clusters"])
        return Answer(202 if deferred else 200, body)

    def _earlier_attempt(self, delivery: str, now: float) -> str | None:
        """The token to reuse if an earlier attempt of this delivery must be redone, else None."""
        sync = self._deps.store.get_record(SYNC_KIND, delivery)
        if sync is not None:
            age = now - parse_iso(str(sync.get("receivedAt") or iso(now)))
            if sync.get("state") == "failed" or (
                sync.get("state") == "received" and age > STALE_CLAIM_SECONDS
            ):
                return str(sync.get("token") or "") or requested_at_token(now)
            return None
        claim = self._deps.store.get_record(DELIVERY_KIND, delivery) or {}
        age = now - parse_iso(str(claim.get("receivedAt") or iso(now)))
        # Claimed but never recorded: in flight right now, or it died in between.
        return requested_at_token(now) if age > STALE_CLAIM_SECONDS else None

    def _sync_inline(self, request: SyncRequest) -> tuple[dict[str, dict[str, Any]], list[str]]:
        start = self._monotonic()

        def in_time() -> bool:
            return self._monotonic() - start <= self._budget

        results: dict[str, dict[str, Any]] = {}
        deferred: list[str] = []
        requested = 0
        for cluster in request.clusters:
            if not in_time():
                deferred.append(cluster)
                continue
            try:
                flux = self._flux(cluster, INLINE_TIMEOUT)
                plan = plan_cluster(cluster, FluxObjects.load(flux, request.facts), request.facts)
                pending = len(plan.pending(request.token))
                if pending and requested + pending > self._max_inline:
                    deferred.append(cluster)
                    continue
                objects = execute(flux, plan, request.token, in_time=in_time)
                requested += pending
                results[cluster] = _done(plan, objects)
            except OutOfTime:
                deferred.append(cluster)
            except TemporaryError as exc:
                logger.warning(
                    "delivery %s, cluster %s: %s; queued for a retry", request.delivery, cluster, exc
                )
                deferred.append(cluster)
            except (PermanentError, ConfigError, KeyError) as exc:
                logger.error("delivery %s, cluster %s: %s", request.delivery, cluster, exc)
                results[cluster] = {"state": "failed", "error": str(exc)}
        return results, deferred

    # ---- the queue trigger
    def sync_cluster(self, message: SyncMessage, *, final_attempt: bool = False) -> str:
        """Plan and request one cluster of a recorded delivery. Raises ``TemporaryError`` to be
        retried (unless it is the final attempt, which records the failure)."""
        store = self._deps.store
        rec = store.get_record(SYNC_KIND, message.delivery)
        if rec is None or "token" not in rec or "ref" not in rec:
            logger.error("gitops sync message for unknown delivery %s dropped", message.delivery)
            return "unknown delivery"
        request = SyncRequest.from_record(rec)
        key = f"{message.delivery}/{message.cluster}"
        try:
            flux = self._flux(message.cluster, QUEUED_TIMEOUT)
            plan = plan_cluster(message.cluster, FluxObjects.load(flux, request.facts), request.facts)
            result = _done(plan, execute(flux, plan, request.token))
        except TemporaryError as exc:
            if not final_attempt:
                raise
            result = {"state": "failed", "error": f"gave up after retries: {exc}"}
        except (PermanentError, ConfigError, KeyError) as exc:
            result = {"state": "failed", "error": str(exc)}
        store.put_record(CLUSTER_KIND, key, {**result, "finishedAt": iso(self._deps.clock.now())})
        self._tell_failures(message.delivery, rec, {message.cluster: result})
        return str(result["state"])

    def _tell_failures(
        self, delivery: str, record: dict[str, Any], results: dict[str, dict[str, Any]]
    ) -> None:
        for cluster, result in results.items():
            if result.get("state") == "failed":
                self._deps.notify(
                    Notice(
                        NoticeKind.GITOPS_SYNC_FAILED,
                        str(result.get("error") or "failed"),
                        cluster=cluster,
                        details={
                            "delivery": delivery,
                            "repository": record.get("repository"),
                            "ref": record.get("ref"),
                        },
                    )
                )

    # ---- the status endpoint
    def list_syncs(self, query: SyncQuery | None = None) -> dict[str, Any]:
        """GET /api/gitops/syncs: one page, newest first; ``next`` only when more may follow."""
        query = query or SyncQuery(PageRequest())
        where = {"repository": query.repository} if query.repository else {}
        records, following = self._deps.store.list_listed_records(
            SYNC_KIND, where=where, limit=query.page.limit, next=query.page.next
        )
        out = []
        for rec in records:
            results = self._merged_results(rec)
            out.append(
                {
                    "delivery": rec.get("delivery") or rec.get("key"),
                    "receivedAt": rec.get("receivedAt"),
                    "repository": rec.get("repository"),
                    "ref": rec.get("ref"),
                    "commit": rec.get("commit"),
                    "state": _overall(results) if results else rec.get("state"),
                    "clusters": {name: _summary(r) for name, r in results.items()},
                }
            )
        answer: dict[str, Any] = {"syncs": out}
        if following:
            answer["next"] = following
        return answer

    def get_sync(self, delivery: str) -> dict[str, Any]:
        rec = self._deps.store.get_record(SYNC_KIND, delivery)
        if rec is None:
            raise NotFoundError(f"no gitops sync for delivery {delivery}")
        results = self._merged_results(rec)
        token = str(rec.get("token") or "")
        for cluster, result in results.items():
            unobserved = result.get("state") == "done" and not result.get("observed")
            if unobserved and self._observe(cluster, result, token):
                self._keep_observation(rec, cluster, result)
        view = {k: v for k, v in rec.items() if k not in ("key", "results", "repositoryKeys", "_listing")}
        view["state"] = _overall(results) if results else rec.get("state")
        view["results"] = results
        return view

    def _merged_results(self, rec: dict[str, Any]) -> dict[str, dict[str, Any]]:
        results: dict[str, dict[str, Any]] = dict(rec.get("results") or {})
        for cluster, result in list(results.items()):
            if result.get("state") == "queued":
                queued = self._deps.store.get_record(CLUSTER_KIND, f"{rec.get('delivery')}/{cluster}")
                if queued is not None:
                    results[cluster] = {k: v for k, v in queued.items() if k != "key"}
        return results

    def _observe(self, cluster: str, result: dict[str, Any], token: str) -> bool:
        """Read Flux's answer for each object requested; True when all answers are final."""
        try:
            flux = self._flux(cluster, INLINE_TIMEOUT)
            for obj in result.get("objects") or []:
                if (obj.get("flux") or {}).get("final"):
                    continue
                try:
                    live = flux.get(KINDS[obj["kind"]], obj["namespace"], obj["name"])
                    obj["flux"] = observe(live, token)
                except NotFoundError:
                    obj["flux"] = {"final": True, "error": "the object no longer exists"}
        except (TemporaryError, PermanentError, ConfigError, KeyError) as exc:
            result["observeError"] = str(exc)
            return False
        return all((o.get("flux") or {}).get("final") for o in result.get("objects") or [])

    def _keep_observation(self, rec: dict[str, Any], cluster: str, result: dict[str, Any]) -> None:
        result["observed"] = True
        delivery = str(rec.get("delivery"))
        if (rec.get("results") or {}).get(cluster, {}).get("state") == "queued":
            self._deps.store.put_record(CLUSTER_KIND, f"{delivery}/{cluster}", result)
        elif rec.get("state") not in ("received",):  # never race the attempt still writing it
            stored = {k: v for k, v in rec.items() if k != "key"}
            stored["results"] = {**(rec.get("results") or {}), cluster: result}
            put_sync(self._deps.store, delivery, stored)
            rec["results"] = stored["results"]


# What a sync's line in the listing shows; the listing row holds these, not the whole record.
_LISTED_FIELDS = ("delivery", "receivedAt", "repository", "ref", "commit", "state", "results")


def put_sync(store: Any, delivery: str, record: dict[str, Any]) -> None:
    """Write a sync record with its listing row (newest first by when it was received)."""
    received = parse_iso(str(record["receivedAt"])) if record.get("receivedAt") else 0.0
    summary = {k: record[k] for k in _LISTED_FIELDS if k in record}
    store.put_listed_record(SYNC_KIND, delivery, record, at=received, summary=summary)


def expire_syncs(store: Any, *, before: float, limit: int) -> list[str]:
    """Delete up to ``limit`` sync records received before ``before`` (epoch seconds), with
    their queued clusters' records and their delivery claims (those first: the sync record
    is what finds them again after a deletion cut short); the deliveries deleted."""
    gone = []
    for summary in store.listed_before(SYNC_KIND, before=before, limit=limit):
        delivery = str(summary.get("delivery") or summary["key"])
        for cluster in summary.get("results") or {}:
            store.discard_record(CLUSTER_KIND, f"{delivery}/{cluster}")
        store.discard_record(DELIVERY_KIND, delivery)
        store.delete_listed(SYNC_KIND, summary)
        gone.append(delivery)
    return gone


# Retention deletes at most this many syncs per sweep (each: a few deletes).
RETENTION_SYNCS_PER_SWEEP = 20
# A store says with this record that the syncs recorded before their listing rows have
# been listed, once.
_INDEX_KIND, _LISTING_KEY = "sweeper", "sync-listing"


def sweep_syncs(deps: Collaborators) -> list[str]:
    """The sweeper's GitOps share: once per store, list the syncs recorded before syncs
    were listed; then delete those past ``retention``. The deliveries deleted."""
    store = deps.store
    if store.get_record(_INDEX_KIND, _LISTING_KEY) is None:
        listed = list_syncs_from_before_the_listing(store)
        logger.info("sweeper: listed %d GitOps syncs recorded before syncs were listed", listed)
        store.put_record(_INDEX_KIND, _LISTING_KEY, {"at": iso(deps.clock.now())})
    cutoff = deps.clock.now() - deps.config.retention.total_seconds()
    try:
        return expire_syncs(store, before=cutoff, limit=RETENTION_SYNCS_PER_SWEEP)
    except TemporaryError as exc:
        logger.warning("retention of GitOps syncs: stopped for this sweep (%s); the next one goes on", exc)
        return []


def list_syncs_from_before_the_listing(store: Any) -> int:
    """Give sync records written before they had listing rows theirs; how many."""
    legacy = [r for r in store.list_records(SYNC_KIND) if "_listing" not in r]
    for record in legacy:
        put_sync(
            store,
            str(record.get("delivery") or record["key"]),
            {k: v for k, v in record.items() if k != "key"},
        )
    return len(legacy)


def _done(plan: Any, objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "state": "done",
        "sources": [t.key for t in plan.sources],
        "objects": objects,
        "untouched": plan.untouched,
    }


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"state": result.get("state")}
    if "objects" in result:
        out["requested"] = sum(1 for o in result["objects"] if o.get("requested"))
        out["objects"] = [f"{o['kind']}/{o['namespace']}/{o['name']}" for o in result["objects"]]
    if result.get("error"):
        out["error"] = result["error"]
    return out
