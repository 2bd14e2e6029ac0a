"""What the rollout needs from the outside world, as one value handed to every part of it.

Its own module, below everything that uses it: the state machine, admission, the
sweeper, the services and the composition root (``shared.app``) all take a
``Collaborators`` without importing each other for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared.adapters.compute import ComputeClient
from shared.adapters.kube import KubeClient
from shared.adapters.notify import Notifier, no_notifications
from shared.adapters.workqueue import WorkQueue
from shared.clock import Clock
from shared.config import PatcherConfig
from shared.rollout.store.base import RunStore


@dataclass
class Collaborators:
    """What a step needs from the outside world; tests pass fakes, the app real clients."""

    store: RunStore
    queue: WorkQueue
    clock: Clock
    config: PatcherConfig
    kube: Callable[[str], KubeClient]  # cluster name -> client
    compute: Callable[[str], ComputeClient]  # subscription id -> client
    notify: Notifier = no_notifications
