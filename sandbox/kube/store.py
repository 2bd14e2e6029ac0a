"""The etcd layer of the simulated API server: objects, resourceVersions, indexes, watch.

One ``RLock``, one resourceVersion counter for every object (like etcd's revision), dict
indexes by resource/namespace/name, plus the indexes the hot paths need (pods by
``spec.nodeName``, objects by uid, dependents by owner uid). Every write goes through a
transaction (``_txn``); its changes are appended to the watch log, which watches resume
from, and handed to the listeners after the lock is released, in resourceVersion order, so
a listener may itself write to the store. What a write means (the registry's rules, the
controllers folded in) is ``sandbox.kube.registry``'s, through two hooks: ``_changed``
for every change recorded and ``_settle`` before the outermost transaction ends.
"""

from __future__ import annotations

import base64
import bisect
import builtins
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sandbox.kube.errors import KubeError, bad_request, not_found
from sandbox.kube.objects import Obj, clone
from sandbox.kube.resources import PODS, RESOURCE_TYPES, ResourceType, resource_type
from sandbox.kube.selectors import (
    FieldSelector,
    LabelSelector,
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

logger = logging.getLogger(__name__)


@dataclass
class _Event:
    rv: int
    type: str
    resource: str
    namespace: str
    obj: Obj
    old: Obj | None


_ListenerFn = Callable[[str, str, Obj], None]


class ObjectStore:
    """The objects of one simulated cluster, as etcd and the watch cache hold them."""

    # Watch history kept for resuming watches, like etcd's compaction window; older
    # resourceVersions get 410 Expired. Tests lower it per instance to provoke that.
    watch_log_limit = 50_000

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._depth = 0
        self._objects: dict[str, dict[str, dict[str, Obj]]] = {rt.key: {} for rt in RESOURCE_TYPES}
        self._pods_by_node: dict[str, set[tuple[str, str]]] = {}
        self._by_uid: dict[str, tuple[str, str, str]] = {}
        self._dependents: dict[str, set[tuple[str, str, str]]] = {}
        self._rv = 0
        self._log: builtins.list[_Event] = []
        self._log_rvs: builtins.list[int] = []
        self._log_floor = 0
        self._listeners: builtins.list[_ListenerFn] = []
        self._outbox: deque[tuple[str, str, Obj]] = deque()
        self._dispatch_lock = threading.Lock()

    # ---- reads (used by the rest of the sandbox and by tests)

    def get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        rt = resource_type(resource)
        with self._lock:
            obj = self._lookup(rt, namespace, name)
            return None if obj is None else clone(self._present(rt, obj))

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]:
        rt = resource_type(resource)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, rt)
        with self._lock:
            return [clone(self._present(rt, o)) for o in self._select(rt, namespace, labels, fields)]

    def pod_counts_by_node(self) -> dict[str, int]:
        """How many pods each node has bound (what the scheduler's cache knows), without
        copying every pod."""
        with self._lock:
            return {node: len(pods) for node, pods in self._pods_by_node.items()}

    def add_listener(self, fn: Callable[[str, str, Obj], None]) -> None:
        with self._lock:
            self._listeners.append(fn)

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    # ---- transactions and change notification

    @contextmanager
    def _txn(self) -> Iterator[None]:
        with self._lock:
            self._depth += 1
            try:
                yield
            finally:
                if self._depth == 1:
                    self._settle()
                self._depth -= 1
                outermost = self._depth == 0
        if outermost:
            self._dispatch()

    def _dispatch(self) -> None:
        # Whoever holds the dispatch lock drains the whole outbox; a thread that finds it taken
        # leaves its events to the holder. Listeners thus run outside the store lock, in
        # resourceVersion order, and may write to the store (their events queue up behind).
        while self._outbox:
            if not self._dispatch_lock.acquire(blocking=False):
                return
            try:
                while True:
                    try:
                        event_type, resource, obj = self._outbox.popleft()
                    except IndexError:
                        break
                    for fn in list(self._listeners):
                        try:
                            fn(event_type, resource, clone(obj))
                        except Exception:
                            logger.exception("kube store listener failed")
            finally:
                self._dispatch_lock.release()

    def _record(self, rt: ResourceType, event_type: str, obj: Obj, old: Obj | None) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        ns = obj["metadata"].get("namespace", "")
        self._log.append(_Event(rv, event_type, rt.key, ns, obj, old))
        self._log_rvs.append(rv)
        if len(self._log) > self.watch_log_limit * 1.25:
            drop = len(self._log) - self.watch_log_limit
            self._log_floor = self._log_rvs[drop - 1]
            del self._log[:drop]
            del self._log_rvs[:drop]
        if self._listeners:
            self._outbox.append((event_type, rt.key, obj))
        self._cond.notify_all()
        self._changed(rt, event_type, obj, old)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def wake_watchers(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ---- hooks for the registry

    def _changed(self, rt: ResourceType, event_type: str, obj: Obj, old: Obj | None) -> None:
        """Called under the lock for every change recorded (controllers queue their work here)."""

    def _settle(self) -> None:
        """Called under the lock before the outermost transaction ends (controllers sync here)."""

    # ---- lookup and indexes

    def _lookup(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        if rt.namespaced and not namespace:
            raise ValueError(f"{rt.key} is namespaced: a namespace is required")
        return self._objects[rt.key].get((namespace or "") if rt.namespaced else "", {}).get(name)

    def _store(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        meta = obj["metadata"]
        ns, name = meta.get("namespace", "") if rt.namespaced else "", meta["name"]
        self._objects[rt.key].setdefault(ns, {})[name] = obj
        self._by_uid[meta["uid"]] = (rt.key, ns, name)
        if rt is PODS:
            old_node = (old or {}).get("spec", {}).get("nodeName")
            new_node = obj.get("spec", {}).get("nodeName")
            if old_node != new_node:
                if old_node:
                    self._pods_by_node.get(old_node, set()).discard((ns, name))
                if new_node:
                    self._pods_by_node.setdefault(new_node, set()).add((ns, name))
        old_owners = {r.get("uid") for r in (old or {}).get("metadata", {}).get("ownerReferences") or []}
        new_owners = {r.get("uid") for r in meta.get("ownerReferences") or []}
        for uid in old_owners - new_owners:
            self._dependents.get(str(uid), set()).discard((rt.key, ns, name))
        for uid in new_owners - old_owners:
            if uid:
                self._dependents.setdefault(str(uid), set()).add((rt.key, ns, name))

    def _unstore(self, rt: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        ns, name = meta.get("namespace", "") if rt.namespaced else "", meta["name"]
        bucket = self._objects[rt.key].get(ns, {})
        bucket.pop(name, None)
        if not bucket:
            self._objects[rt.key].pop(ns, None)
        self._by_uid.pop(meta["uid"], None)
        if rt is PODS and (node := obj.get("spec", {}).get("nodeName")):
            pods = self._pods_by_node.get(node)
            if pods is not None:
                pods.discard((ns, name))
                if not pods:
                    del self._pods_by_node[node]
        for ref in meta.get("ownerReferences") or []:
            self._dependents.get(str(ref.get("uid")), set()).discard((rt.key, ns, name))

    def _select(
        self, rt: ResourceType, namespace: str | None, labels: LabelSelector, fields: FieldSelector
    ) -> builtins.list[Obj]:
        by_ns = self._objects[rt.key]
        candidates: builtins.list[Obj]
        node = (
            next((v for f, op, v in fields if f == "spec.nodeName" and op == "="), None)
            if rt is PODS
            else None
        )
        if node is not None:
            keys = self._pods_by_node.get(node, set())
            candidates = [by_ns[ns][n] for ns, n in keys if not namespace or ns == namespace]
        elif rt.namespaced and namespace:
            candidates = list(by_ns.get(namespace, {}).values())
        else:
            candidates = [o for bucket in by_ns.values() for o in bucket.values()]
        result = [o for o in candidates if labels_match(labels, o) and fields_match(fields, o)]
        result.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return result

    def _present(self, rt: ResourceType, obj: Obj) -> Obj:
        """The object as a reader sees it."""
        return obj

    # ---- the API's reads, as the HTTP layer calls them (stored references: do not mutate)

    def api_get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        with self._lock:
            obj = self._lookup(rt, namespace, name)
            if obj is None:
                raise not_found(rt, name)
            return self._present(rt, obj)

    def api_list(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        *,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> tuple[builtins.list[Obj], str, str | None, int | None]:
        """Returns (items, list resourceVersion, continue token, remainingItemCount)."""
        start: tuple[str, str] | None = None
        if continue_token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                start = (str(decoded["ns"]), str(decoded["name"]))
            except (ValueError, KeyError, TypeError):
                raise bad_request(f"continue key is not valid: {continue_token}") from None
        with self._lock:
            items = self._select(rt, namespace, labels, fields)
            rv = str(self._rv)
            if start is not None:
                items = [
                    o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start
                ]
            token, remaining = None, None
            if limit > 0 and len(items) > limit:
                last = items[limit - 1]["metadata"]
                token = base64.urlsafe_b64encode(
                    json.dumps({"ns": last.get("namespace", ""), "name": last["name"], "rv": rv}).encode()
                ).decode()
                remaining = len(items) - limit
                items = items[:limit]
            return [self._present(rt, o) for o in items], rv, token, remaining

    # ---- watch

    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        *,
        since: str | None,
        deadline: float,
        stopped: threading.Event,
        send_initial_events: bool = False,
    ) -> Iterator[builtins.list[Obj]]:
        """Yields batches of watch events (``{"type", "object"}``) until ``deadline`` or ``stopped``."""

        def passes(obj: Obj | None) -> bool:
            if obj is None:
                return False
            if rt.namespaced and namespace and obj["metadata"].get("namespace") != namespace:
                return False
            return labels_match(labels, obj) and fields_match(fields, obj)

        with self._lock:
            if since in (None, "", "0") or send_initial_events:
                initial = [
                    {"type": "ADDED", "object": self._present(rt, o)}
                    for o in self._select(rt, namespace, labels, fields)
                ]
                last = self._rv
                if send_initial_events:
                    initial.append(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": rt.kind,
                                "apiVersion": rt.api_version,
                                "metadata": {
                                    "resourceVersion": str(last),
                                    "annotations": {"k8s.io/initial-events-end": "true"},
                                },
                            },
                        }
                    )
            else:
                try:
                    last = int(str(since))
                except ValueError:
                    raise bad_request(f"invalid resource version: {since}") from None
                initial = []
        if initial:
            yield initial
        while not stopped.is_set():
            expired: KubeError | None = None
            batch: builtins.list[Obj] = []
            with self._cond:
                if last < self._log_floor:
                    expired = KubeError(
                        410,
                        "Expired",
                        f"too old resource version: {last} ({self._log_floor + 1})",
                        details=False,
                    )
                    events: builtins.list[_Event] = []
                else:
                    events = self._log[bisect.bisect_right(self._log_rvs, last) :]
                if expired is None and not events:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    # Wake up at least once a second so that stop() ends idle streams.
                    self._cond.wait(min(remaining, 1.0))
                    continue
                for ev in events:
                    last = ev.rv
                    if ev.resource != rt.key:
                        continue
                    if ev.type == "DELETED":
                        if passes(ev.obj):
                            batch.append({"type": "DELETED", "object": self._present(rt, ev.obj)})
                        continue
                    now_passes = passes(ev.obj)
                    before = ev.type == "MODIFIED" and passes(ev.old)
                    if now_passes:
                        batch.append(
                            {
                                "type": ev.type if before or ev.type == "ADDED" else "ADDED",
                                "object": self._present(rt, ev.obj),
                            }
                        )
                    elif before and ev.old is not None:
                        # cacheWatcher: the previous state, stamped with this event's resourceVersion.
                        gone = dict(ev.old)
                        gone["metadata"] = {**ev.old["metadata"], "resourceVersion": str(ev.rv)}
                        batch.append({"type": "DELETED", "object": self._present(rt, gone)})
            if expired is not None:
                yield [{"type": "ERROR", "object": expired.status()}]
                return
            if batch:
                yield batch
            if time.monotonic() >= deadline:
                return
