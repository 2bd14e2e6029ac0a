"""The checks a node is put through on the cluster's side: the drain options its pool
asks for, and what still keeps a rebooted Node from being verified. Both the steps and
the batching (which checks a whole batch at once) use them."""

from __future__ import annotations

from shared.adapters.compute import image_version
from shared.adapters.kube import Node
from shared.config import PoolConfig
from shared.rollout.drain import DrainOptionsView
from shared.rollout.model import NodeWork


def node_problems(node: NodeWork, observed: Node) -> list[str]:
    problems = []
    if not observed.ready:
        problems.append("node is not Ready")
    if not observed.boot_id or observed.boot_id == node.boot_id_before:
        problems.append("node has not rebooted (boot id unchanged)")
    expected = image_version(node.expected_image)
    if expected and observed.image_version and observed.image_version.lower() != expected.lower():
        problems.append(f"node reports image {observed.image_version}, expected {expected}")
    return problems


def drain_options(pool: PoolConfig) -> DrainOptionsView:
    return DrainOptionsView(delete_emptydir_data=pool.drain.delete_emptydir_data, force=pool.drain.force)
