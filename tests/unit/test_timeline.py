"""The run timeline: phases from each node's recorded transitions, drawn one row per node."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from shared.clock import iso
from shared.rollout.model import HISTORY_LIMIT, NodeState, NodeWork, Run, RunState
from shared.rollout.timeline import PHASE_COLOURS, build_timeline, render_svg

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_800_000_000.0

S = NodeState
# A node's path as (seconds after the run started, new state).
THROUGH = [(10, S.ADMITTED), (11, S.DRAINING), (30, S.REIMAGING), (90, S.BOOTING), (120, S.SUCCEEDED)]


def node(name: str, steps: list[tuple[float, NodeState]], *, order: int = 0, reason: str = "") -> NodeWork:
    record = NodeWork(
        run_id="r1", name=name, pool="linux", scale_set_id="/vmss", instance_id=name, order=order
    )
    for offset, state in steps:
        record.move_to(state, reason=reason or f"to {state}", at=iso(T0 + offset))
    return record


def run(state: RunState = RunState.SUCCEEDED, *, ended: float | None = 130) -> Run:
    return Run(
        id="r1",
        cluster="prod",
        reason="test",
        created_at=iso(T0),
        state=state,
        ended_at=iso(T0 + ended) if ended is not None and state.terminal else "",
    )


def rows(svg: str) -> list[ET.Element]:
    return ET.fromstring(svg).findall(f".//{SVG}g[@class='rows']/{SVG}g")


def phases(row: ET.Element) -> list[tuple[str, str | None]]:
    return [(r.get("data-phase") or "", r.get("fill")) for r in row.findall(f"{SVG}rect[@data-phase]")]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            THROUGH,
            [("waiting", 0, 11), ("draining", 11, 30), ("reimaging", 30, 90), ("booting", 90, 120)],
            id="a whole patch",
        ),
        # A failed reimage LRO goes round reimaging again: still one reimaging phase.
        pytest.param(
            [(5, S.ADMITTED), (6, S.DRAINING), (20, S.REIMAGING), (50, S.REIMAGING), (80, S.BOOTING)],
            [("waiting", 0, 6), ("draining", 6, 20), ("reimaging", 20, 80), ("booting", 80, 200)],
            id="a retried reimage, still booting",
        ),
        # A pod landed on it before the write: back to draining, then on again.
        pytest.param(
            [
                (5, S.ADMITTED),
                (6, S.DRAINING),
                (20, S.REIMAGING),
                (25, S.DRAINING),
                (40, S.REIMAGING),
                (60, S.FAILED),
            ],
            [
                ("waiting", 0, 6),
                ("draining", 6, 20),
                ("reimaging", 20, 25),
                ("draining", 25, 40),
                ("reimaging", 40, 60),
            ],
            id="back to draining, then failed",
        ),
        pytest.param([(30, S.CANCELLED)], [("waiting", 0, 30)], id="cancelled while pending"),
        pytest.param([], [("waiting", 0, 200)], id="still pending"),
    ],
)
def test_phases_follow_the_recorded_transitions(
    steps: list[tuple[float, NodeState]], expected: list[tuple[str, float, float]]
) -> None:
    timeline = build_timeline(run(RunState.RUNNING), [node("n1", steps)], now=T0 + 200)
    (row,) = timeline.rows
    assert [(p.name, p.start - T0, p.end - T0) for p in row.phases] == [
        (name, float(start), float(end)) for name, start, end in expected
    ]


def test_every_node_gets_one_row_with_its_phases_coloured_and_its_end_marked() -> None:
    nodes = [
        node("done", THROUGH, order=0),
        node(
            "broken", [(10, S.ADMITTED), (11, S.DRAINING), (70, S.FAILED)], order=1, reason="drain timed out"
        ),
        node("opted-out", [(10, S.SKIPPED)], order=2),
    ]
    got = rows(render_svg(run(RunState.FAILED), nodes, now=T0 + 500))
    assert [r.get("data-node") for r in got] == ["done", "broken", "opted-out"]
    assert [r.get("data-state") for r in got] == ["succeeded", "failed", "skipped"]
    done, broken, skipped = got
    assert phases(done) == [
        (name, PHASE_COLOURS[name]) for name in ("waiting", "draining", "reimaging", "booting")
    ]
    assert done.find(f"{SVG}path[@class='outcome success']") is not None
    assert phases(broken) == [("waiting", PHASE_COLOURS["waiting"]), ("draining", PHASE_COLOURS["draining"])]
    failure = broken.find(f"{SVG}path[@class='outcome failure']")
    assert failure is not None
    assert failure.findtext(f"{SVG}title") == "failed: drain timed out"
    assert broken.find(f"{SVG}text[@class='label']").get("fill") != done.find(
        f"{SVG}text[@class='label']"
    ).get("fill")
    assert skipped.find(f"{SVG}circle[@class='outcome skipped']") is not None
    assert done.find(f"{SVG}path[@class='outcome failure']") is None


def test_waves_are_admission_passes_and_rows_come_in_admission_order() -> None:
    nodes = [
        node("late", [(60, S.ADMITTED), (61, S.DRAINING)], order=0),
        node("first-a", [(10, S.ADMITTED), (11, S.DRAINING)], order=1),
        node("first-b", [(10, S.ADMITTED), (12, S.DRAINING)], order=2),
        node("never", [], order=3),
    ]
    got = rows(render_svg(run(RunState.RUNNING), nodes, now=T0 + 100))
    assert [(r.get("data-node"), r.get("data-wave")) for r in got] == [
        ("first-a", "1"),
        ("first-b", "1"),
        ("late", "2"),
        ("never", ""),
    ]
    # Each admitted row marks when its wave took the slot.
    ticks = [r.find(f"{SVG}line[@class='admitted']") for r in got]
    assert [t is not None for t in ticks] == [True, True, True, False]
    assert ticks[0].get("x1") == ticks[1].get("x1") != ticks[2].get("x1")
    # The second wave's rows are shaded, so each wave reads as a band.
    assert [r.find(f"{SVG}rect[@class='wave-band']") is not None for r in got] == [False, False, True, False]


def test_a_phase_is_drawn_to_scale_on_the_runs_span() -> None:
    svg = render_svg(run(), [node("n1", THROUGH)], now=T0 + 999)
    (row,) = rows(svg)
    widths = {r.get("data-phase"): float(r.get("width") or 0) for r in row.findall(f"{SVG}rect[@data-phase]")}
    # reimaging (60 s) is three times draining (19 s) within rounding; the run ended at 130 s.
    assert widths["reimaging"] == pytest.approx(widths["draining"] * 60 / 19, rel=0.01)
    assert sum(widths.values()) == pytest.approx(760 * 120 / 130, rel=0.01)


def test_a_retried_node_carries_on_in_its_row_and_each_failure_stays_marked() -> None:
    retried = node(
        "retried",
        [
            (5, S.ADMITTED),
            (6, S.DRAINING),
            (20, S.FAILED),
            (50, S.PENDING),
            (60, S.ADMITTED),
            (61, S.DRAINING),
            (70, S.REIMAGING),
            (90, S.BOOTING),
            (100, S.SUCCEEDED),
        ],
        order=0,
    )
    released = node("released", [(5, S.ADMITTED), (6, S.DRAINING), (20, S.FAILED), (40, S.RELEASED)], order=1)
    timeline = build_timeline(run(RunState.RUNNING), [retried, released], now=T0 + 120)
    again, given_back = timeline.rows
    assert [(p.name, p.start - T0, p.end - T0) for p in again.phases] == [
        ("waiting", 0, 6),
        ("draining", 6, 20),
        ("waiting", 50, 61),
        ("draining", 61, 70),
        ("reimaging", 70, 90),
        ("booting", 90, 100),
    ]
    assert [(e.state, e.at - T0) for e in again.ends] == [("failed", 20), ("succeeded", 100)]
    assert [(e.state, e.at - T0) for e in given_back.ends] == [("failed", 20), ("released", 40)]
    svg_rows = rows(render_svg(run(RunState.RUNNING), [retried, released], now=T0 + 120))
    assert [len(r.findall(f"{SVG}line[@class='admitted']")) for r in svg_rows] == [2, 1]
    for row in svg_rows:
        assert row.find(f"{SVG}path[@class='outcome failure']") is not None
    assert svg_rows[1].find(f"{SVG}circle[@class='outcome released']") is not None


def test_text_from_records_is_escaped() -> None:
    hostile = 'pod "a<b>" & <script>alert(1)</script>'
    nodes = [node("n1", [(5, S.ADMITTED), (6, S.DRAINING), (9, S.FAILED)], reason=hostile)]
    svg = render_svg(run(RunState.FAILED), nodes, now=T0 + 10)
    (row,) = rows(svg)  # parses: nothing broke out of its element
    assert row.find(f"{SVG}path[@class='outcome failure']").findtext(f"{SVG}title") == f"failed: {hostile}"
    assert "<script>" not in svg


def test_a_history_cut_to_its_limit_starts_where_the_record_does() -> None:
    steps = [(5, S.ADMITTED), (6, S.DRAINING), (7, S.REIMAGING)]
    steps += [(8 + i, S.REIMAGING) for i in range(HISTORY_LIMIT)]
    record = node("n1", steps)
    assert record.history[0]["from"] == S.REIMAGING
    (row,) = build_timeline(run(RunState.RUNNING), [record], now=T0 + 100).rows
    assert [(p.name, p.start - T0) for p in row.phases] == [("reimaging", 8.0)]


def test_an_unknown_state_still_gets_a_bar() -> None:
    record = node("n1", [(5, S.ADMITTED)])
    odd = 'quarantined "for now" <x>'
    record.history.append({"at": iso(T0 + 9), "from": "admitted", "to": odd, "reason": "new"})
    (row,) = rows(render_svg(run(RunState.RUNNING), [record], now=T0 + 20))
    assert [p for p, _ in phases(row)] == ["waiting", odd]


def test_a_run_without_nodes_says_so() -> None:
    svg = render_svg(run(), [], now=T0)
    assert rows(svg) == []
    assert "no nodes in this run" in svg
