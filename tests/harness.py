"""Drives the workflow with in-memory collaborators and a fake clock.

``pump()`` delivers queued work items in due order (advancing the clock to the next due
item when nothing is due), completes reimages after ``reimage_seconds`` of fake time and
reboots the node onto the new image. It also tracks the most nodes of each pool that
were ever disrupted at once, the invariant the budget promises.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from shared.adapters.workqueue import MemoryWorkQueue, WorkItem
from shared.clock import FakeClock
from shared.config import parse_config
from shared.rollout.engine import Workflow
from shared.rollout.model import NodeState
from shared.rollout.ports import Collaborators
from shared.rollout.requests import StartRequest
from shared.rollout.service import RunService
from shared.rollout.store.base import RunStore
from shared.rollout.store.memory import MemoryRunStore
from shared.work import handle_work_item, sweep
from tests.fakes import SUB, FakeCompute, FakeKube, make_node, scale_set_id


def config_dict(pools: dict[str, int], **cluster: Any) -> dict[str, Any]:
    return {
        "clusters": [
            {
                "name": "test",
                "kubeconfig": {"setting": "KUBECONFIG_TEST"},
                "maxConcurrentNodes": cluster.pop("maxConcurrentNodes", 10),
                "maxFailedNodes": cluster.pop("maxFailedNodes", 3),
                "waveOrder": cluster.pop("waveOrder", "budgets"),
                "pools": [
                    {
                        "name": name,
                        "scaleSetId": scale_set_id(f"vmss-{name}"),
                        "os": "windows" if name.startswith("win") else "linux",
                        "maxUnavailable": budget,
                        **cluster.pop(f"pool_{name}", {}),
                    }
                    for name, budget in pools.items()
                ],
            }
        ],
        "workflow": {
            "pollInterval": 5,
            "drainRetryInterval": 5,
            "leaseDuration": 60,
            "stallAfter": 600,
            "retryBackoffInitial": 1,
            "retryBackoffMax": 30,
            "maxTransientRetries": 4,
        },
    }


class Harness:
    def __init__(
        self,
        pools: dict[str, int],
        *,
        nodes_per_pool: int = 3,
        reimage_seconds: float = 60.0,
        boot_seconds: float = 0.0,
        extra_config: dict[str, Any] | None = None,
        store: RunStore | None = None,
        **cluster: Any,
    ) -> None:
        self.clock = FakeClock()
        self.kube = FakeKube()
        self.compute = FakeCompute()
        self.compute.clock = self.clock.now
        self.store = store if store is not None else MemoryRunStore()
        self.queue = MemoryWorkQueue()
        self.config = parse_config({**config_dict(pools, **cluster), **(extra_config or {})})
        self.deps = Collaborators(
            store=self.store,
            queue=self.queue,
            clock=self.clock,
            config=self.config,
            kube=lambda _c: self.kube,
            compute=lambda _s: self.compute,  # type: ignore[arg-type,return-value]
        )
        self.workflow = Workflow(self.deps)
        self.reimage_seconds = reimage_seconds
        self.boot_seconds = boot_seconds
        self.booting: list[tuple[float, str, str]] = []  # (when, node, image)
        self.booted_at: dict[str, float] = {}
        # The cloud moves on while a worker waits in place.
        advance = self.clock.sleep
        self.clock.sleep = lambda seconds: (advance(seconds), self._complete_reimages())  # type: ignore[method-assign]
        self.kube.sleep = self.clock.sleep
        self.pending: list[tuple[float, WorkItem]] = []
        self.op_started: dict[str, float] = {}
        self.max_disrupted: dict[str, int] = defaultdict(int)
        self.outcomes: list[str] = []
        self.duplicate_every_message = False
        # The sweeper's timer: every this many seconds of fake time (None: never).
        self.sweep_every: float | None = None
        self._last_sweep = self.clock.now()
        self.delivering: WorkItem | None = None  # the item being handled (a crash's redelivery)
        self.instance_to_node: dict[str, str] = {}
        for pool in pools:
            for i in range(nodes_per_pool):
                name = f"{pool}-{i}"
                iid = f"{pool}{i}"
                self.kube.nodes[name] = make_node(name, f"vmss-{pool}", iid, zone=str(i % 3 + 1))
                self.instance_to_node[iid] = name
                self.compute.scale_sets.setdefault(scale_set_id(f"vmss-{pool}").lower(), []).append(iid)

    def start(self, **kwargs: Any) -> str:
        run = RunService(self.deps).start(StartRequest(cluster="test", reason="test", **kwargs))
        return run.id

    def _collect(self) -> None:
        for item, delay in self.queue.take():
            self.pending.append((self.clock.now() + delay, item))
            if self.duplicate_every_message:
                self.pending.append((self.clock.now() + delay, item))

    def _complete_reimages(self) -> None:
        for token, op in self.compute.operations.items():
            if token not in self.op_started:
                self.op_started[token] = self.clock.now()
                for iid in op["ids"]:  # the OS disk is replaced: the kubelet is gone
                    self.kube.nodes[self.instance_to_node[iid]]["status"]["conditions"] = [
                        {"type": "Ready", "status": "False"}
                    ]
            if not op["done"] and self.clock.now() - self.op_started[token] >= self.reimage_seconds:
                op["done"] = True
                for iid in op["ids"]:
                    self.compute.reimaged(iid, failed=op["failed"])
                    if not op["failed"]:
                        self.booting.append(
                            (
                                self.clock.now() + self.boot_seconds,
                                self.instance_to_node[iid],
                                self.compute.model_image.rsplit("/", 1)[-1],
                            )
                        )
        for boot in [b for b in self.booting if b[0] <= self.clock.now()]:
            self.booting.remove(boot)
            self.kube.reboot(boot[1], image=boot[2])
            self.booted_at[boot[1]] = self.clock.now()

    def _track_budget(self, run_id: str) -> None:
        by_pool: dict[str, int] = defaultdict(int)
        for n in self.store.list_nodes(run_id):
            if n.state.holds_slot:
                by_pool[n.pool] += 1
        for pool, count in by_pool.items():
            self.max_disrupted[pool] = max(self.max_disrupted[pool], count)

    def pump(self, run_id: str, *, max_steps: int = 2000) -> None:
        for _ in range(max_steps):
            self._collect()
            self._complete_reimages()
            if self.sweep_every is not None and self.clock.now() - self._last_sweep >= self.sweep_every:
                self._last_sweep = self.clock.now()
                sweep(self.deps)
                self._collect()
            if not self.pending:
                if any(
                    not n.state.terminal and n.state != NodeState.PENDING
                    for n in self.store.list_nodes(run_id)
                ):
                    self.clock.advance(1)
                    continue
                return
            self.pending.sort(key=lambda p: p[0])
            due, item = self.pending[0]
            if due > self.clock.now():
                # Reimages may finish before the next item is due.
                self.clock.advance(min(due - self.clock.now(), 5))
                continue
            self.pending.pop(0)
            self.delivering = item
            self.outcomes.append(handle_work_item(self.deps, item, workflow=self.workflow))
            self._track_budget(run_id)
        raise AssertionError("workflow did not settle")

    def node_states(self, run_id: str) -> dict[str, str]:
        return {n.name: str(n.state) for n in self.store.list_nodes(run_id)}

    @property
    def subscription(self) -> str:
        return SUB


def admitted_steps(h: Harness) -> list[WorkItem]:
    """Deliver admissions until nodes are admitted; return their step items."""
    for _ in range(5):
        steps = []
        for item, _delay in h.queue.take():
            if item.kind == "step":
                steps.append(item)
            else:
                handle_work_item(h.deps, item, workflow=h.workflow)
        if steps:
            return steps
    raise AssertionError("no node was admitted")


def lead_while_others_drain(
    h: Harness, first: WorkItem, others: list[WorkItem], *, then: Any = None
) -> tuple[list[str], list[float], list[str]]:
    """Step ``first``; during its first look in place, ``others`` finish draining on other
    workers (and ``then()`` runs, if given). Returns the reimage writes, the seconds it
    waited in place, and the others' outcomes."""
    real_sleep = h.clock.sleep
    slept: list[float] = []
    outcomes: list[str] = []

    def linger(seconds: float) -> None:
        if not slept:
            outcomes.extend(Workflow(h.deps).handle(item) for item in others)
            if then is not None:
                then()
        slept.append(seconds)
        real_sleep(seconds)

    h.clock.sleep = linger  # type: ignore[method-assign]
    try:
        h.workflow.handle(first)
    finally:
        h.clock.sleep = real_sleep  # type: ignore[method-assign]
    writes = [c for c in h.compute.calls if c.startswith(("reimage", "manualupgrade"))]
    return writes, slept, outcomes
