"""KubeClient's watch loop, driven by a scripted API server: how it resumes, when it backs
off and what it counts (the same waits over real HTTP: tests/integration/test_kube_watch_ends.py)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

import shared.adapters.kube as kube_module
from shared.adapters.kube import WATCH_BACKOFF_INITIAL, WATCH_BACKOFF_MAX, KubeClient, watch_backoff


def node(rv: int, *, ready: bool, boot: str = "b1") -> dict[str, Any]:
    return {
        "metadata": {"name": "n", "resourceVersion": str(rv)},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "nodeInfo": {"bootID": boot},
        },
    }


class Stream:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._events = events

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        for event in self._events:
            yield (json.dumps(event) + "\n").encode()

    def release_conn(self) -> None:
        return None


class Core:
    """list_node answers a GET-like read (no watch) and, for watches, the next scripted stream."""

    def __init__(self, watches: list[list[dict[str, Any]]], current: dict[str, Any]) -> None:
        self.watches = watches
        self.current = current
        self.asked: list[str] = []  # resourceVersion of each watch

    def read_node(self, name: str, **kwargs: Any) -> Any:
        return type("R", (), {"data": json.dumps(self.current).encode()})()

    def list_node(self, **kwargs: Any) -> Any:
        self.asked.append(kwargs["resource_version"])
        return Stream(self.watches.pop(0) if self.watches else [])


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Pauses are recorded and the clock moves by them (no real sleeping)."""
    now = [1000.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(kube_module.time, "sleep", sleep)
    monkeypatch.setattr(kube_module.time, "monotonic", lambda: now[0])
    return pauses


def client(core: Core) -> KubeClient:
    kube = KubeClient.__new__(KubeClient)
    kube._core = core
    kube._timeout = (5, 30)
    kube.watch_early_ends = 0
    return kube


def test_an_early_end_resumes_from_the_last_resource_version_after_a_back_off(slept: list[float]) -> None:
    core = Core(
        watches=[
            [{"type": "MODIFIED", "object": node(11, ready=False)}],  # then the server closes it
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}],
            [{"type": "MODIFIED", "object": node(17, ready=True, boot="b2")}],
        ],
        current=node(10, ready=False),
    )
    kube = client(core)
    seen = kube.wait_for_node("n", lambda n: n.ready and n.boot_id == "b2", timeout=20)
    assert seen.ready and seen.boot_id == "b2"
    assert core.asked == ["10", "11", "15"]  # bookmarks move it on too
    assert kube.watch_early_ends == 2
    assert len(slept) == 2 and WATCH_BACKOFF_INITIAL <= slept[0] < slept[1] <= WATCH_BACKOFF_MAX


def test_a_wait_whose_watches_all_end_at_once_spends_its_timeout_in_back_offs(slept: list[float]) -> None:
    core = Core(watches=[], current=node(10, ready=False))
    kube = client(core)
    assert not kube.wait_for_node("n", lambda n: n.ready, timeout=20).ready
    assert sum(slept) == pytest.approx(20)
    # 0.2, 0.4, 0.8, 1.6, then 2 s each (plus jitter): about a dozen watches, not thousands.
    assert 8 <= len(core.asked) <= 14
    assert kube.watch_early_ends == len(core.asked)


def test_a_resource_version_too_old_starts_again_from_the_current_state(slept: list[float]) -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    core = Core(
        watches=[[gone], [{"type": "ADDED", "object": node(40, ready=True, boot="b2")}]],
        current=node(10, ready=False),
    )
    kube = client(core)
    seen = kube.wait_for_node("n", lambda n: n.ready, timeout=20)
    assert seen.ready
    # No resourceVersion: the server starts with the Node as it is (a synthetic ADDED).
    assert core.asked == ["10", ""]


def test_back_off_doubles_from_the_initial_pause_up_to_the_maximum() -> None:
    pauses = [watch_backoff(i) for i in range(1, 9)]
    assert WATCH_BACKOFF_INITIAL <= pauses[0] <= WATCH_BACKOFF_INITIAL * 1.5
    assert pauses[-1] == WATCH_BACKOFF_MAX
    assert all(b >= a * 0.9 for a, b in itertools.pairwise(pauses))
