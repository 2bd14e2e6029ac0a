"""The registry of the simulated API server: what a create, update, delete or eviction
does, with the controllers whose effects the patcher observes folded in.

``KubeStore`` adds to the etcd layer (``sandbox.kube.store``) what the real apiserver's
generic registry and strategies do (system fields, generations, graceful deletion,
finalizers, preconditions, optimistic concurrency) and what a cluster gets from
controllers but the patcher observes through the API: the kubelet finishing a graceful pod
deletion (scheduled on the shared ``World`` clock), the PodDisruptionBudget status (the
disruption controller, ``sandbox.kube.controllers``), the garbage collector removing
dependents, and the namespace controller emptying a terminating namespace. Everything else
(schedulers, ReplicaSets recreating pods, node heartbeats) is left to the rest of the
sandbox, which drives the store through ``create``/``mutate``/``remove_now``.

The Python methods are the simulation's backdoor and keep what they are given (a pod
created there keeps its ``status``, as if the kubelet had written it), while writes
through the API (``api_*``) get the apiserver's treatment: system fields and status reset
on create, status only through ``/status``, optimistic concurrency, validation. Either
way, stored objects are completed with the fields a Go struct always serialises.
"""

from __future__ import annotations

import builtins
import random
import string
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta

from sandbox.kube.controllers import budget_status, budgets_moved_by
from sandbox.kube.errors import (
    MODIFIED,
    KubeError,
    already_exists,
    bad_request,
    conflict,
    name_mismatch,
    not_found,
)
from sandbox.kube.eviction import budget_refusal
from sandbox.kube.objects import Obj, clone, hangs_terminating, json_equal, metadata_of, to_iso, utc_now
from sandbox.kube.patch import APPLY_PATCH, apply_patch, decode_patch
from sandbox.kube.resources import (
    BY_GVK,
    BY_KEY,
    NAMESPACES,
    NODES,
    PDBS,
    PODS,
    RESOURCE_TYPES,
    ResourceType,
    resource_type,
)
from sandbox.kube.selectors import FieldSelector, LabelSelector
from sandbox.kube.store import ObjectStore
from sandbox.kube.strategy import (
    DEFAULT_GRACE_SECONDS,
    apply_defaults,
    complete_fields,
    validate,
    validate_name,
)
from sandbox.world import World

_DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class KubeStore(ObjectStore):
    """The objects of one simulated cluster (what etcd plus the registries would hold)."""

    def __init__(self, world: World, *, pod_termination_cloud_seconds: float = 5.0) -> None:
        super().__init__()
        self.world = world
        self.pod_termination_cloud_seconds = pod_termination_cloud_seconds
        self._deletion_via: dict[str, str] = {}
        self._orphan_on_delete: set[str] = set()
        # The disruption controller's work queue: budgets whose status may be out of date.
        self._budgets_to_sync: set[tuple[str, str]] = set()
        with self._txn():
            for ns in _DEFAULT_NAMESPACES:
                self._create_locked(
                    NAMESPACES, {"metadata": {"name": ns}}, None, from_api=False, dry_run=False
                )

    # ---- public Python API (used by the rest of the sandbox and by tests)

    def create(self, obj: Obj) -> Obj:
        rt = BY_GVK.get((str(obj.get("apiVersion", "")), str(obj.get("kind", ""))))
        if rt is None:
            raise ValueError(f"unsupported apiVersion/kind {obj.get('apiVersion')}/{obj.get('kind')}")
        namespace = (obj.get("metadata", {}).get("namespace") or "default") if rt.namespaced else None
        with self._txn():
            if namespace and self._lookup(NAMESPACES, None, namespace) is None:
                # A cluster never holds objects in a namespace that does not exist; creating it
                # here keeps API writes into that namespace (events, leases) working as they would.
                self._create_locked(
                    NAMESPACES, {"metadata": {"name": namespace}}, None, from_api=False, dry_run=False
                )
            stored = self._create_locked(rt, obj, namespace, from_api=False, dry_run=False)
            return clone(self._present(rt, stored))

    def mutate(self, resource: str, namespace: str | None, name: str, fn: Callable[[Obj], None]) -> Obj:
        rt = resource_type(resource)
        with self._txn():
            old = self._lookup(rt, namespace, name)
            if old is None:
                raise not_found(rt, name)
            new = clone(old)
            fn(new)
            # The simulation may not rename or move objects; keep the identity it was stored under.
            meta = metadata_of(new)
            meta["name"], meta["uid"] = old["metadata"]["name"], old["metadata"]["uid"]
            if rt.namespaced:
                meta["namespace"] = old["metadata"]["namespace"]
            return clone(self._present(rt, self._commit(rt, old, new, force=True)))

    def delete(
        self, resource: str, namespace: str | None, name: str, *, grace_period_seconds: int | None = None
    ) -> Obj | None:
        """Delete as ``kubectl delete`` would: returns the object (Terminating or gone), or ``None``."""
        rt = resource_type(resource)
        with self._txn():
            if self._lookup(rt, namespace, name) is None:
                return None
            obj, _ = self._delete_locked(rt, namespace, name, grace=grace_period_seconds, via="delete")
            return clone(obj)

    def remove_now(self, resource: str, namespace: str | None, name: str) -> None:
        """Remove at once, finalizers and grace periods notwithstanding (the node's disk was wiped)."""
        rt = resource_type(resource)
        with self._txn():
            obj = self._lookup(rt, namespace, name)
            if obj is not None:
                self._remove_locked(rt, obj, via_default="remove_now")

    def evict(
        self,
        namespace: str,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        dry_run: bool = False,
        preconditions: Obj | None = None,
    ) -> Obj:
        """The ``pods/eviction`` subresource; returns the 201 Status or raises the apiserver's error."""
        with self._txn():
            return self._evict_locked(namespace, name, grace_period_seconds, dry_run, preconditions)

    # ---- the disruption controller's queue

    def _changed(self, rt: ResourceType, event_type: str, obj: Obj, old: Obj | None) -> None:
        ns = obj["metadata"].get("namespace", "")
        budgets = self._objects[PDBS.key].get(ns)
        if budgets:
            self._budgets_to_sync.update(
                (ns, name) for name in budgets_moved_by(rt, event_type, obj, old, budgets)
            )

    def _settle(self) -> None:
        if self._budgets_to_sync:
            self._sync_disruption_budgets()

    def _sync_disruption_budgets(self) -> None:
        """The disruption controller's sync of every queued budget, written through /status."""
        while self._budgets_to_sync:
            ns, name = self._budgets_to_sync.pop()
            pdb = self._lookup(PDBS, ns, name)
            if pdb is None or pdb["metadata"].get("deletionTimestamp"):
                continue
            status = budget_status(pdb, self._objects[PODS.key].get(ns, {}).values(), self._lookup)
            if json_equal(status, pdb.get("status")):
                continue
            new = clone(pdb)
            new["status"] = status
            self._commit(PDBS, pdb, new)

    # ---- create / update

    def _create_locked(
        self, rt: ResourceType, body: Obj, namespace: str | None, *, from_api: bool, dry_run: bool
    ) -> Obj:
        obj = clone(body)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = metadata_of(obj)
        if rt.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
            ns_obj = self._objects[NAMESPACES.key].get("", {}).get(namespace)
            if from_api and ns_obj is None:
                raise not_found(NAMESPACES, namespace)
            if from_api and ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                raise KubeError(
                    403,
                    "Forbidden",
                    f'{rt.plural} "{meta.get("name") or meta.get("generateName", "")}" is forbidden: '
                    f"unable to create new content in namespace {namespace} because it is being terminated",
                    name=str(meta.get("name", "")),
                    group=rt.group,
                    kind=rt.plural,
                )
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = f"{meta['generateName']}{suffix}"
        validate_name(rt, meta.get("name"))
        if self._lookup(rt, namespace, meta["name"]) is not None:
            raise already_exists(rt, meta["name"])
        if from_api:
            # rest.FillObjectMetaSystemFields + the strategies' PrepareForCreate: clients do not
            # choose system fields, and status is the controllers' (nodes keep theirs).
            for fld in (
                "uid",
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
            ):
                meta.pop(fld, None)
            if rt.has_status and rt is not NODES:
                obj["status"] = {}
        if not meta.get("uid"):
            meta["uid"] = str(uuid.uuid4())
        # The simulation may backdate objects through the store; API clients may not (they send null).
        if from_api or not meta.get("creationTimestamp"):
            meta["creationTimestamp"] = to_iso(utc_now())
        meta["generation"] = 1
        apply_defaults(rt, obj)
        complete_fields(rt, obj)
        validate(rt, obj, None)
        if dry_run:
            return obj
        meta["resourceVersion"] = self._next_rv()
        self._store(rt, obj, None)
        self._record(rt, "ADDED", obj, None)
        return obj

    def _commit(self, rt: ResourceType, old: Obj, new: Obj, *, force: bool = False) -> Obj:
        """Store ``new`` in place of ``old``; no-op writes are skipped unless ``force``d."""
        meta = new["metadata"]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        complete_fields(rt, new)
        if not force and json_equal(new, old):
            return old
        old_spec = {k: v for k, v in old.items() if k not in ("metadata", "status", "apiVersion", "kind")}
        new_spec = {k: v for k, v in new.items() if k not in ("metadata", "status", "apiVersion", "kind")}
        if not json_equal(old_spec, new_spec):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = self._next_rv()
        if (
            rt is not NAMESPACES
            and meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and meta.get("deletionGracePeriodSeconds") == 0
        ):
            # registry.Store.Update: the last finalizer is gone on an object marked for deletion.
            self._store(rt, new, old)
            self._remove_locked(rt, new, via_default="delete")
            return new
        self._store(rt, new, old)
        self._record(rt, "MODIFIED", new, old)
        if (
            rt is PODS
            and meta.get("deletionTimestamp")
            and hangs_terminating(old)
            and not hangs_terminating(new)
        ):
            # The kubelet got unstuck: it finishes the termination it had given up on.
            self._schedule_kubelet(new, int(meta.get("deletionGracePeriodSeconds") or 0))
        return new

    # ---- delete

    def _delete_locked(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        grace: int | None,
        via: str,
        preconditions: Obj | None = None,
        propagation: str | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Returns (the object as it now is, whether it is gone)."""
        obj = self._lookup(rt, namespace, name)
        if obj is None:
            raise not_found(rt, name)
        meta = obj["metadata"]
        self._check_preconditions(rt, obj, preconditions)
        if rt is PODS:
            # podStrategy.CheckGracefulDelete: unscheduled and terminal pods go at once.
            if grace is None:
                grace = int(
                    (obj.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
                )
            phase = (obj.get("status") or {}).get("phase")
            if not (obj.get("spec") or {}).get("nodeName") or phase in ("Succeeded", "Failed"):
                grace = 0
        else:
            grace = 0
        grace = max(0, grace)
        if dry_run:
            return obj, grace == 0 and not meta.get("finalizers")
        if propagation == "Orphan":
            self._orphan_on_delete.add(meta["uid"])
        if rt is PODS:
            self._deletion_via.setdefault(meta["uid"], via)
        if meta.get("deletionTimestamp"):
            # Already terminating: a second delete may only shorten the grace period.
            current = int(meta.get("deletionGracePeriodSeconds") or 0)
            if grace >= current:
                return obj, False
            new = clone(obj)
            new["metadata"]["deletionGracePeriodSeconds"] = grace
            new["metadata"]["deletionTimestamp"] = to_iso(
                utc_now() + timedelta(seconds=self.world.clock.seconds(grace))
            )
            stored = self._commit(rt, obj, new)
            gone = self._lookup(rt, namespace, name) is None
            if not gone and grace > 0 and rt is PODS:
                self._schedule_kubelet(stored, grace)
            return stored, gone
        # Namespaces always pass through Terminating (their spec.finalizers are the namespace controller's).
        if grace == 0 and not meta.get("finalizers") and rt is not NAMESPACES:
            self._remove_locked(rt, obj, via_default=via)
            return obj, True
        new = clone(obj)
        new_meta = new["metadata"]
        new_meta["deletionTimestamp"] = to_iso(utc_now() + timedelta(seconds=self.world.clock.seconds(grace)))
        new_meta["deletionGracePeriodSeconds"] = grace
        new_meta["generation"] = int(meta.get("generation", 1)) + 1
        if rt is NAMESPACES:
            new.setdefault("status", {})["phase"] = "Terminating"
        stored = self._commit(rt, obj, new, force=True)
        if rt is PODS and grace > 0:
            self.world.history.append(
                "pod_terminating",
                namespace=meta["namespace"],
                name=name,
                node=(obj.get("spec") or {}).get("nodeName"),
                uid=meta["uid"],
                via=self._deletion_via.get(meta["uid"], via),
                grace_period_seconds=grace,
            )
            self._schedule_kubelet(stored, grace)
        if rt is NAMESPACES:
            self._empty_namespace(name)
        return stored, False

    def _check_preconditions(self, rt: ResourceType, obj: Obj, preconditions: Obj | None) -> None:
        if not preconditions:
            return
        meta = obj["metadata"]
        want_uid, want_rv = preconditions.get("uid"), preconditions.get("resourceVersion")
        if want_uid and want_uid != meta["uid"]:
            raise conflict(
                rt,
                meta["name"],
                f"Precondition failed: UID in precondition: {want_uid}, UID in object meta: {meta['uid']}",
            )
        if want_rv and want_rv != meta["resourceVersion"]:
            raise conflict(
                rt,
                meta["name"],
                f"Precondition failed: ResourceVersion in precondition: {want_rv}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
            )

    # ---- the kubelet, the garbage collector and the namespace controller, folded in

    def _schedule_kubelet(self, pod: Obj, grace: int) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        delay = self.world.clock.seconds(min(float(grace), self.pod_termination_cloud_seconds))
        self.world.scheduler.call_later(delay, lambda: self._kubelet_finish(ns, name, uid))

    def _kubelet_finish(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet has stopped the containers and confirms the deletion (grace period 0)."""
        with self._txn():
            pod = self._lookup(PODS, namespace, name)
            if pod is None or pod["metadata"]["uid"] != uid or not pod["metadata"].get("deletionTimestamp"):
                return
            if hangs_terminating(pod):
                return
            if pod["metadata"].get("finalizers"):
                new = clone(pod)
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                self._commit(PODS, pod, new)
                return
            self._remove_locked(PODS, pod, via_default="delete")

    def _remove_locked(self, rt: ResourceType, obj: Obj, *, via_default: str) -> None:
        meta = obj["metadata"]
        current = self._lookup(rt, meta.get("namespace"), meta["name"])
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return
        gone = clone(current)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._unstore(rt, current)
        self._record(rt, "DELETED", gone, current)
        uid = meta["uid"]
        if rt is PODS:
            self.world.history.append(
                "pod_deleted",
                namespace=meta["namespace"],
                name=meta["name"],
                node=(current.get("spec") or {}).get("nodeName"),
                uid=uid,
                via=self._deletion_via.pop(uid, via_default),
            )
        self._collect_garbage(uid, orphan=uid in self._orphan_on_delete)
        self._orphan_on_delete.discard(uid)
        if rt.namespaced:
            ns = self._objects[NAMESPACES.key].get("", {}).get(meta["namespace"])
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                self._finish_namespace(meta["namespace"])

    def _collect_garbage(self, owner_uid: str, *, orphan: bool) -> None:
        """The garbage collector: dependents whose owners are all gone are deleted (background)."""
        for key, ns, name in sorted(self._dependents.pop(owner_uid, set())):
            rt = BY_KEY[key]
            dep = self._lookup(rt, ns or None, name)
            if dep is None:
                continue
            refs = dep["metadata"].get("ownerReferences") or []
            if orphan:
                new = clone(dep)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                if not new["metadata"]["ownerReferences"]:
                    del new["metadata"]["ownerReferences"]
                self._commit(rt, dep, new)
            elif not any(r.get("uid") in self._by_uid for r in refs if r.get("uid") != owner_uid):
                with suppress(KubeError):
                    self._delete_locked(rt, ns or None, name, grace=None, via="delete")

    def _empty_namespace(self, namespace: str) -> None:
        """The namespace controller: delete everything in a terminating namespace."""
        for rt in RESOURCE_TYPES:
            if not rt.namespaced:
                continue
            for name in sorted(self._objects[rt.key].get(namespace, {})):
                with suppress(KubeError):
                    self._delete_locked(rt, namespace, name, grace=None, via="delete")
        self._finish_namespace(namespace)

    def _finish_namespace(self, namespace: str) -> None:
        if any(self._objects[rt.key].get(namespace) for rt in RESOURCE_TYPES if rt.namespaced):
            return
        ns = self._objects[NAMESPACES.key].get("", {}).get(namespace)
        if ns is not None and ns["metadata"].get("deletionTimestamp"):
            self._remove_locked(NAMESPACES, ns, via_default="delete")

    # ---- eviction

    def _evict_locked(
        self,
        namespace: str,
        name: str,
        grace: int | None,
        dry_run: bool,
        preconditions: Obj | None,
    ) -> Obj:
        pod = self._lookup(PODS, namespace, name)
        if pod is None:
            raise not_found(PODS, name)
        meta = pod["metadata"]
        node = (pod.get("spec") or {}).get("nodeName")
        record = {"namespace": namespace, "name": name, "node": node, "uid": meta["uid"]}
        success: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }
        refusal = budget_refusal(pod, self._objects[PDBS.key].get(namespace, {}).values())
        if refusal is not None:
            # A dry run leaves no trace in the history.
            if not dry_run:
                blamed = {} if refusal.pdb is None else {"pdb": refusal.pdb}
                self.world.history.append("eviction", **record, result=refusal.error.code, **blamed)
            raise refusal.error
        if dry_run:
            self._check_preconditions(PODS, pod, preconditions)
            return success
        self._delete_locked(PODS, namespace, name, grace=grace, via="eviction", preconditions=preconditions)
        self.world.history.append("eviction", **record, result=201)
        return success

    # ---- the API's writes, as the HTTP layer calls them (stored references: do not mutate)

    def api_create(self, rt: ResourceType, namespace: str | None, body: Obj, *, dry_run: bool) -> Obj:
        in_body = (body.get("metadata") or {}).get("namespace")
        if rt.namespaced and in_body and in_body != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        with self._txn():
            return self._present(rt, self._create_locked(rt, body, namespace, from_api=True, dry_run=dry_run))

    def _prepare_update(
        self,
        rt: ResourceType,
        old: Obj,
        body: Obj,
        *,
        subresource: str | None,
        namespace: str | None,
        name: str,
    ) -> Obj:
        """rest.BeforeUpdate and the strategies' PrepareForUpdate for a PUT or PATCH result."""
        if not isinstance(body, dict):
            raise bad_request("the object to update must be a JSON object")
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        if meta.get("name") not in (None, "", name):
            raise name_mismatch(meta.get("name"), name)
        if rt.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        old_meta = old["metadata"]
        if meta.get("uid") not in (None, "", old_meta["uid"]):
            uids = f"UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}"
            raise conflict(rt, name, f"Precondition failed: {uids}")
        want_rv = meta.get("resourceVersion")
        if want_rv not in (None, "") and str(want_rv) != old_meta["resourceVersion"]:
            raise conflict(rt, name, MODIFIED)
        if subresource == "status":
            new = clone(old)
            if "status" in body:
                new["status"] = clone(body["status"])
            else:
                new.pop("status", None)
            return new
        new = clone(body)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        new_meta = metadata_of(new)
        new_meta["name"] = name
        if rt.namespaced:
            new_meta["namespace"] = namespace
        for fld in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if fld in old_meta:
                new_meta[fld] = old_meta[fld]
            else:
                new_meta.pop(fld, None)
        if rt.has_status:
            # The main resource ignores status changes; they go through /status.
            if "status" in old:
                new["status"] = clone(old["status"])
            else:
                new.pop("status", None)
        apply_defaults(rt, new)
        validate(rt, new, old)
        return new

    def api_update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str | None,
        dry_run: bool,
    ) -> tuple[Obj, bool]:
        """PUT; returns (object, created)."""
        with self._txn():
            old = self._lookup(rt, namespace, name)
            if old is None:
                if rt.create_on_update and subresource is None:
                    meta: Obj = body.get("metadata") or {}
                    if meta.get("resourceVersion"):
                        raise not_found(rt, name)
                    if meta.get("name") not in (None, "", name):
                        raise name_mismatch(meta.get("name"), name)
                    body = clone(body)
                    metadata_of(body)["name"] = name
                    return self._create_locked(rt, body, namespace, from_api=True, dry_run=dry_run), True
                raise not_found(rt, name)
            new = self._prepare_update(rt, old, body, subresource=subresource, namespace=namespace, name=name)
            if dry_run:
                return new, False
            return self._present(rt, self._commit(rt, old, new)), False

    def api_patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        subresource: str | None,
        content_type: str,
        raw: bytes,
        dry_run: bool,
        field_manager: str | None,
    ) -> tuple[Obj, bool]:
        """PATCH; returns (object, created) — only an apply patch can create."""
        patch = decode_patch(content_type, raw, field_manager=field_manager)
        with self._txn():
            old = self._lookup(rt, namespace, name)
            if old is None:
                if content_type == APPLY_PATCH and subresource is None:
                    body = clone(patch)
                    metadata_of(body).setdefault("name", name)
                    if metadata_of(body)["name"] != name:
                        raise name_mismatch(metadata_of(body)["name"], name)
                    return self._create_locked(rt, body, namespace, from_api=True, dry_run=dry_run), True
                raise not_found(rt, name)
            patched = apply_patch(rt, self._present(rt, old), content_type, patch)
            new = self._prepare_update(
                rt, old, patched, subresource=subresource, namespace=namespace, name=name
            )
            if dry_run:
                return new, False
            return self._present(rt, self._commit(rt, old, new)), False

    def api_delete(
        self, rt: ResourceType, namespace: str | None, name: str, options: Obj, *, dry_run: bool
    ) -> tuple[Obj, bool]:
        grace = options.get("gracePeriodSeconds")
        with self._txn():
            obj, gone = self._delete_locked(
                rt,
                namespace,
                name,
                grace=int(grace) if grace is not None else None,
                via="delete",
                preconditions=options.get("preconditions"),
                propagation=options.get("propagationPolicy")
                or ("Orphan" if options.get("orphanDependents") is True else None),
                dry_run=dry_run,
            )
            return self._present(rt, obj), gone

    def api_delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        options: Obj,
        *,
        dry_run: bool,
    ) -> builtins.list[Obj]:
        with self._txn():
            deleted = []
            for obj in self._select(rt, namespace, labels, fields):
                result, _ = self.api_delete(
                    rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], options, dry_run=dry_run
                )
                deleted.append(result)
            return deleted
