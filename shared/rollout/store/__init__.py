"""Durable run state behind a small interface; one module per backend.

The base class owns all record logic (serialisation, key layout, query columns, the
one-active-run guard); a backend implements a few private primitives, and the atomic
part, a conditional multi-record write inside one partition, lives in the backend.
"""

from shared.rollout.store.base import ClusterLock, NodeSummary, RunStore

__all__ = ["ClusterLock", "NodeSummary", "RunStore"]
