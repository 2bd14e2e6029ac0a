"""The state all resource providers share: one lock, the stores, the events raised under it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, TypeVar

from sandbox.arm.faults import FaultInjector
from sandbox.arm.limits import WriteLimit
from sandbox.arm.replies import _ApiError, _Ctx, _parent_not_found, _resource_not_found
from sandbox.arm.resources import _Gallery, _Instance, _MaintenanceConfig, _Operation, _ScaleSet
from sandbox.world import World

logger = logging.getLogger(__name__)

_Found = TypeVar("_Found")

Listener = Callable[[str, dict[str, Any]], None]


@dataclass
class ComputeDurations:
    """How long Compute takes, in cloud seconds; the World's clock scales them."""

    reimage: float = 240.0
    model_update: float = 20.0
    scale: float = 120.0
    delete: float = 60.0
    image_replication: float = 60.0  # a gallery version PUT: Creating -> Succeeded


class _Store:
    def __init__(
        self,
        world: World,
        *,
        subscription_id: str,
        location: str = "westeurope",
        durations: ComputeDurations | None = None,
        write_limit: WriteLimit | None = None,
    ) -> None:
        self.world = world
        self.subscription_id = subscription_id
        self.location = location
        self.durations = durations or ComputeDurations()
        self.write_limit = write_limit or WriteLimit()
        self.faults = FaultInjector()
        self.page_size = 50  # VMs per page of the list API (Compute's own page size varies)
        self._lock = threading.RLock()
        self._scale_sets: dict[tuple[str, str], _ScaleSet] = {}
        self._galleries: dict[tuple[str, str], _Gallery] = {}
        self._maintenance: dict[tuple[str, str], _MaintenanceConfig] = {}
        self._operations: dict[str, _Operation] = {}
        self._listeners: list[Listener] = []
        self._pending_events: list[tuple[str, dict[str, Any]]] = []
        self._tls = threading.local()  # transaction nesting depth, per thread

    def add_listener(self, fn: Callable[[str, dict], None]) -> None:
        with self._lock:
            self._listeners.append(fn)

    # ---------------------------------------------------------------- locking and events

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Hold the state lock; deliver the events raised inside after releasing it.

        Events are delivered even when the block raises: the state changes they describe
        have already happened.
        """
        self._lock.acquire()
        depth = getattr(self._tls, "depth", 0)
        self._tls.depth = depth + 1
        events: list[tuple[str, dict[str, Any]]] = []
        listeners: list[Listener] = []
        try:
            yield
        finally:
            self._tls.depth = depth
            if depth == 0:
                events, self._pending_events = self._pending_events, []
                listeners = list(self._listeners)
            self._lock.release()
            for kind, payload in events:
                for fn in listeners:
                    try:
                        fn(kind, deepcopy(payload))
                    except Exception:  # one broken listener must not break the others or the server
                        logger.exception("compute listener failed on %s", kind)

    def _emit(
        self, kind: str, ss: _ScaleSet, inst: _Instance | None, image: dict[str, Any], **extra: Any
    ) -> None:
        payload: dict[str, Any] = {
            "resource_group": ss.resource_group,
            "scale_set": ss.name,
            "os_type": ss.os_type,
            "image_reference": deepcopy(image),
        }
        history: dict[str, Any] = {
            "resource_group": ss.resource_group,
            "scale_set": ss.name,
            "image": deepcopy(image),
        }
        if inst is not None:
            payload.update(instance_id=inst.instance_id, computer_name=inst.computer_name, zone=inst.zone)
            payload["vm_name"] = inst.vm_name or f"{ss.name}_{inst.instance_id}"
            history.update(instance_id=inst.instance_id, computer_name=inst.computer_name, zone=inst.zone)
        history.update(extra)
        self.world.history.append(kind, **history)
        self._pending_events.append((kind, payload))

    # ---------------------------------------------------------------- lookups every provider shares

    def _check_subscription(self, ctx: _Ctx) -> None:
        sub = ctx.match["sub"]
        if sub.lower() != self.subscription_id.lower():
            raise _ApiError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")

    def _resource_group(self, ctx: _Ctx) -> str:
        """The route's resource group, once its subscription and the group are known to exist."""
        self._check_subscription(ctx)
        rg = ctx.match["rg"]
        self._require_group(rg)
        return rg

    def _find(
        self,
        ctx: _Ctx,
        resources: Mapping[tuple[str, str], _Found],
        name_from: str,
        resource_type: str,
        *,
        parent: bool,
    ) -> _Found:
        """The resource of a resource group the route names (``ctx.match[name_from]``), or
        the 404 ARM answers; ``parent``: the request is for one of its nested resources."""
        rg = self._resource_group(ctx)
        name = ctx.match[name_from]
        found = resources.get((rg.lower(), name.lower()))
        if found is None:
            if parent:
                raise _parent_not_found(name)
            raise _resource_not_found(f"{resource_type}/{name}", rg)
        return found

    def _require_group(self, rg: str) -> None:
        """A resource group exists when the sandbox holds any resource in it."""
        key = rg.lower()
        stores: list[Any] = [self._scale_sets, self._galleries, self._maintenance]
        if not any(k[0] == key for store in stores for k in store):
            raise _ApiError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")

    def _announce(self, kind: str, payload: dict[str, Any]) -> None:
        """Record ``kind`` in the history and queue it for listeners (inside a transaction)."""
        self.world.history.append(kind, **payload)
        self._pending_events.append((kind, payload))
