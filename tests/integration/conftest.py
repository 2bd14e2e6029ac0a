"""One sandbox for the whole test session: 30 nodes in three pools (one Windows),
4 runner processes. Tests that patch take turns on it (one active run per cluster)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.cluster import PoolSpec
from sandbox.stack import Sandbox, SandboxOptions
from tests.integration.sandbox_helpers import Driver

SESSION_POOLS = "alpha:linux:12,beta:linux:10,win:windows:8"


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(
        SandboxOptions(
            state_dir=tmp_path_factory.mktemp("sandbox"),
            pools=PoolSpec.parse_list(SESSION_POOLS),
            runners=4,
            time_scale=0.01,
            max_unavailable=2,
            max_concurrent_nodes=6,
            max_failed_nodes=30,
            maintenance_pools=["win"],
            # The crash test kills runners every second or so: give drains in its pools
            # room for the redeliveries (beta keeps the short default for the fault tests).
            # A kill can interrupt the first steps of up to four nodes at once (a worker
            # starts that many after an admission), each back only when its lease ends, and
            # the win pool's PDB lets its drains evict one pod at a time.
            pool_overrides={
                "alpha": {"drain": {"timeout": 60, "deleteEmptyDirData": True, "onTimeout": "fail"}},
                "win": {"drain": {"timeout": 60, "deleteEmptyDirData": True, "onTimeout": "fail"}},
                # Two beta nodes drain at once and share the shop PDB: under load one waits
                # for the other's evicted pods to be Ready elsewhere, which the 10 s default
                # did not always cover.
                "beta": {"drain": {"timeout": 30, "deleteEmptyDirData": True, "onTimeout": "fail"}},
            },
        )
    )
    sb.start()
    yield sb
    sb.stop()
    # The app runs with exactly infra/'s grants: a refusal it shrugged off (an event
    # acknowledged as unrelated, say) would otherwise go unnoticed.
    assert sb.arm_server is not None
    refused = [r for r in sb.arm_server.request_log if r["status"] == 403]
    assert not refused, f"ARM refused the app's identity: {refused[:5]}"


@pytest.fixture(scope="session")
def driver(sandbox: Sandbox) -> Driver:
    return Driver(sandbox)
