"""The simulated Compute, Gallery and Update Manager providers of one subscription."""

from __future__ import annotations

from sandbox.arm.flexible import _FlexibleVms
from sandbox.arm.gallery import _Galleries
from sandbox.arm.maintenance import _Maintenance


class ComputeState(_FlexibleVms, _Galleries, _Maintenance):
    """Scale sets, their instances and LROs; the single source of truth behind ArmServer.

    Each resource provider is a layer over the shared store (:mod:`sandbox.arm.store`);
    this class only puts them together, so a request handler named in
    :mod:`sandbox.arm.routes` is a method of whichever layer serves it."""
