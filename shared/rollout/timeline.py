"""A run's timeline as an SVG Gantt chart: one row per node, its phases coloured.

Pure: the run and its node records in, an SVG document out, no third-party library.
Phases come from the transitions each node recorded (``NodeWork.history``), so the chart
shows what happened rather than what was planned; a node still in flight has its last
phase end at ``now``. A wave is one admission pass: ``Admission`` stamps every node it
admits in one transaction with the same time, so nodes admitted together share a wave.
A failed node that an operator retries carries on in the same row, and every end it
reached is marked there (a release after a failure keeps the failure's mark).

Every text that comes from a record (node names, reasons) is escaped with
``xml.sax.saxutils``: a reason quoting a pod's error message must not break the document.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from shared.clock import iso, parse_iso
from shared.rollout.model import NodeState, NodeWork, Run

# Pending and admitted both mean "not touched yet": one phase, as an operator reads it.
WAITING = "waiting"
PHASE_COLOURS = {
    WAITING: "#c9ced6",
    "draining": "#f2b134",
    "reimaging": "#a05fd0",
    "booting": "#3a9ad9",
}
# States this module does not know (added after it was written) still get a bar.
OTHER_PHASE_COLOUR = "#7d8590"
OUTCOME_COLOURS = {
    "succeeded": "#2e9e4f",
    "failed": "#d1343a",
}
OTHER_OUTCOME_COLOUR = "#6e7681"

ROW_HEIGHT = 22
BAR_HEIGHT = 14
CHART_WIDTH = 760
HEADER_HEIGHT = 64
AXIS_HEIGHT = 22
WAVE_COLUMN = 34
CHAR_WIDTH = 7  # of the 12 px sans-serif labels, generously
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400)


@dataclass(frozen=True)
class Phase:
    name: str  # "waiting", or the node state it was in
    start: float
    end: float
    reason: str


@dataclass(frozen=True)
class End:
    state: str
    at: float
    reason: str


@dataclass(frozen=True)
class NodeRow:
    name: str
    pool: str
    state: str
    reason: str
    wave: int | None  # 1-based, of its first admission; None for a node never admitted
    admitted_at: float | None  # its first admission
    phases: tuple[Phase, ...]
    # Every end it reached: an operator can retry a failed node (failed -> pending) or
    # release it (failed -> released), so a row may fail more than once.
    ends: tuple[End, ...] = ()
    admissions: tuple[float, ...] = ()


@dataclass(frozen=True)
class Timeline:
    start: float
    end: float
    rows: tuple[NodeRow, ...]


def phase_of(state: str) -> str:
    return WAITING if state in (NodeState.PENDING, NodeState.ADMITTED) else state


def _terminal(state: str) -> bool:
    try:
        return NodeState(state).terminal
    except ValueError:
        return False


def build_timeline(run: Run, nodes: Sequence[NodeWork], *, now: float) -> Timeline:
    start = parse_iso(run.created_at)
    stamps = [parse_iso(h["at"]) for n in nodes for h in n.history]
    if run.state.terminal:
        end = max([start, *stamps, *([parse_iso(run.ended_at)] if run.ended_at else [])])
    else:
        end = max([start, now, *stamps])
    admissions = sorted(
        {
            h["at"]
            for n in nodes
            for h in n.history
            if h["from"] == NodeState.PENDING and h["to"] == NodeState.ADMITTED
        },
        key=parse_iso,
    )
    wave_of = {at: i + 1 for i, at in enumerate(admissions)}
    rows = [_row(node, start=start, end=end, wave_of=wave_of) for node in nodes]
    order = {n.name: n.order for n in nodes}
    rows.sort(key=lambda r: (r.admitted_at if r.admitted_at is not None else math.inf, order[r.name], r.name))
    return Timeline(start=start, end=end, rows=tuple(rows))


def _row(node: NodeWork, *, start: float, end: float, wave_of: dict[str, int]) -> NodeRow:
    phases: list[Phase] = []
    history = node.history
    # History keeps its latest entries only (HISTORY_LIMIT): when the first one kept is
    # not the node's first step, what came before it is unknown and left blank.
    # ``current`` is None while the node is at an end (no bar until it is retried).
    current: str | None
    if history and history[0]["from"] == NodeState.PENDING:
        begin, current, reason = start, WAITING, ""
    elif history:
        first = history[0]["from"]
        begin, current, reason = (
            parse_iso(history[0]["at"]),
            None if _terminal(first) else phase_of(first),
            "",
        )
    else:
        begin, current, reason = start, phase_of(node.state), node.reason
    ends: list[End] = []
    admissions: list[float] = []
    wave: int | None = None
    for entry in history:
        at = parse_iso(entry["at"])
        if entry["from"] == NodeState.PENDING and entry["to"] == NodeState.ADMITTED:
            if not admissions:
                wave = wave_of.get(entry["at"])
            admissions.append(at)
        if _terminal(entry["to"]):
            if current is not None:
                _close(phases, current, begin, at, reason)
            ends.append(End(state=entry["to"], at=at, reason=entry["reason"]))
            current = None
            continue
        following = phase_of(entry["to"])
        if following != current:
            if current is not None:
                _close(phases, current, begin, at, reason)
            begin, current = at, following
        reason = entry["reason"]
    if current is not None:
        _close(phases, current, begin, end, reason or node.reason)
    return NodeRow(
        name=node.name,
        pool=node.pool,
        state=str(node.state),
        reason=node.reason,
        wave=wave,
        admitted_at=admissions[0] if admissions else None,
        phases=tuple(phases),
        ends=tuple(ends),
        admissions=tuple(admissions),
    )


def _close(phases: list[Phase], name: str, begin: float, end: float, reason: str) -> None:
    phases.append(Phase(name=name, start=begin, end=max(begin, end), reason=reason))


# ---------------------------------------------------------------------------- SVG


def render_svg(run: Run, nodes: Sequence[NodeWork], *, now: float) -> str:
    timeline = build_timeline(run, nodes, now=now)
    label_width = max([len("node"), *(len(r.name) for r in timeline.rows)]) * CHAR_WIDTH + 16
    chart_x = label_width + WAVE_COLUMN
    width = chart_x + CHART_WIDTH + 40
    rows_top = HEADER_HEIGHT + AXIS_HEIGHT
    height = rows_top + max(1, len(timeline.rows)) * ROW_HEIGHT + 12
    span = max(timeline.end - timeline.start, 1.0)

    def x(t: float) -> float:
        return round(chart_x + (t - timeline.start) / span * CHART_WIDTH, 2)

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="system-ui, -apple-system, Segoe UI, sans-serif" '
        f'font-size="12" role="img" aria-label={quoteattr(f"timeline of run {run.id}")}>',
        f"<title>{escape(f'run {run.id} on {run.cluster}: {run.state}')}</title>",
        f'<rect class="background" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    out += _header(run, timeline, width=width)
    out += _axis(timeline, x=x, top=HEADER_HEIGHT, bottom=height - 12, span=span)
    out.append('<g class="rows">')
    if not timeline.rows:
        out.append(f'<text x="{chart_x}" y="{rows_top + 15}" fill="#57606a">no nodes in this run</text>')
    for index, row in enumerate(timeline.rows):
        out += _row_svg(row, top=rows_top + index * ROW_HEIGHT, width=width, x=x, label_width=label_width)
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _header(run: Run, timeline: Timeline, *, width: int) -> list[str]:
    counts: dict[str, int] = {}
    for row in timeline.rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    waves = max((r.wave for r in timeline.rows if r.wave is not None), default=0)
    title = f"run {run.id} · {run.cluster} · {run.state}"
    detail = (
        f"{len(timeline.rows)} nodes ({summary or 'none'}) · {waves} waves · "
        f"{iso(timeline.start)} + {_duration(timeline.end - timeline.start)}"
    )
    out = [
        '<g class="header">',
        f'<text x="12" y="20" font-size="15" font-weight="600" fill="#1f2328">{escape(title)}</text>',
        f'<text x="12" y="38" fill="#57606a">{escape(detail)}</text>',
        '<g class="legend">',
    ]
    legend_x = 12
    for name, colour in PHASE_COLOURS.items():
        out.append(
            f'<rect x="{legend_x}" y="48" width="12" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 16}" y="57" fill="#1f2328">{name}</text>'
        )
        legend_x += 16 + len(name) * CHAR_WIDTH + 14
    out.append(
        f'<line x1="{legend_x + 2}" y1="47" x2="{legend_x + 2}" y2="59" stroke="#1f2328" stroke-width="1.5"/>'
        f'<text x="{legend_x + 8}" y="57" fill="#1f2328">admitted</text>'
    )
    legend_x += 8 + len("admitted") * CHAR_WIDTH + 14
    for name, mark, colour in (
        ("succeeded", "✓", OUTCOME_COLOURS["succeeded"]),
        ("failed", "✕", OUTCOME_COLOURS["failed"]),
        ("other end", "●", OTHER_OUTCOME_COLOUR),
    ):
        out.append(
            f'<text x="{legend_x}" y="57" fill="{colour}" font-weight="700">{mark}</text>'
            f'<text x="{legend_x + 14}" y="57" fill="#1f2328">{name}</text>'
        )
        legend_x += 14 + len(name) * CHAR_WIDTH + 14
    out += ["</g>", "</g>"]
    return out


def _axis(
    timeline: Timeline, *, x: Callable[[float], float], top: int, bottom: int, span: float
) -> list[str]:
    step = next((s for s in NICE_STEPS if span / s <= 10), NICE_STEPS[-1])
    out = ['<g class="axis">']
    tick = 0.0
    while tick <= span + 1e-9:
        at = x(timeline.start + tick)
        out.append(
            f'<line x1="{at}" y1="{top + 16}" x2="{at}" y2="{bottom}" stroke="#d0d7de" stroke-width="1"/>'
            f'<text x="{at}" y="{top + 12}" text-anchor="middle" fill="#57606a">{_duration(tick)}</text>'
        )
        tick += step
    out.append("</g>")
    return out


def _row_svg(
    row: NodeRow, *, top: int, width: int, x: Callable[[float], float], label_width: int
) -> list[str]:
    failed = row.state == NodeState.FAILED
    wave = "" if row.wave is None else str(row.wave)
    attrs = (
        f"class={quoteattr('node ' + row.state)} data-node={quoteattr(row.name)} "
        f"data-pool={quoteattr(row.pool)} data-state={quoteattr(row.state)} data-wave={quoteattr(wave)}"
    )
    out = [f"<g {attrs}>"]
    if row.wave is not None and row.wave % 2 == 0:
        # Alternate waves are shaded, so rows admitted together read as one band.
        out.append(
            f'<rect class="wave-band" x="0" y="{top}" width="{width}" height="{ROW_HEIGHT}" fill="#f3f5f8"/>'
        )
    mid = top + ROW_HEIGHT / 2
    label_colour = OUTCOME_COLOURS["failed"] if failed else "#1f2328"
    label_tip = f"{row.name} ({row.pool}): {row.state}" + (f": {row.reason}" if row.reason else "")
    out.append(
        f'<text class="label" x="12" y="{mid + 4}" fill="{label_colour}">{escape(row.name)}'
        f"<title>{escape(label_tip)}</title></text>"
    )
    if wave:
        out.append(f'<text class="wave" x="{label_width + 4}" y="{mid + 4}" fill="#57606a">w{wave}</text>')
    bar_top = top + (ROW_HEIGHT - BAR_HEIGHT) / 2
    for phase in row.phases:
        left, right = x(phase.start), x(phase.end)
        colour = PHASE_COLOURS.get(phase.name, OTHER_PHASE_COLOUR)
        tip = f"{phase.name} {_duration(phase.end - phase.start)}" + (
            f": {phase.reason}" if phase.reason else ""
        )
        out.append(
            f"<rect class={quoteattr('phase ' + phase.name)} data-phase={quoteattr(phase.name)} "
            f'x="{left}" y="{bar_top}" width="{max(round(right - left, 2), 1.0)}" height="{BAR_HEIGHT}" '
            f'fill="{colour}"><title>{escape(tip)}</title></rect>'
        )
    for admitted in row.admissions:
        # Waiting covers pending and admitted: the tick shows when its wave took the slot.
        at = x(admitted)
        out.append(
            f'<line class="admitted" x1="{at}" y1="{bar_top - 2}" x2="{at}" y2="{bar_top + BAR_HEIGHT + 2}" '
            f'stroke="#1f2328" stroke-width="1.5"><title>admitted at {escape(iso(admitted))}</title></line>'
        )
    for ending in row.ends:
        out.append(_outcome_mark(ending, at=x(ending.at), mid=mid))
    out.append("</g>")
    return out


def _outcome_stroke(kind: str, d: str, colour: str, tip: str, *, style: str) -> str:
    return (
        f'<path class="outcome {kind}" d="{d}" stroke="{colour}" stroke-width="2.5" {style}>'
        f"<title>{tip}</title></path>"
    )


def _outcome_mark(ending: End, *, at: float, mid: float) -> str:
    tip = escape(f"{ending.state}: {ending.reason}" if ending.reason else ending.state)
    if ending.state == NodeState.FAILED:
        cross = f"M{at - 5},{mid - 5} L{at + 5},{mid + 5} M{at - 5},{mid + 5} L{at + 5},{mid - 5}"
        return _outcome_stroke(
            "failure", cross, OUTCOME_COLOURS["failed"], tip, style='stroke-linecap="round"'
        )
    if ending.state == NodeState.SUCCEEDED:
        tick = f"M{at + 2},{mid} L{at + 5},{mid + 4} L{at + 11},{mid - 5}"
        style = 'fill="none" stroke-linecap="round" stroke-linejoin="round"'
        return _outcome_stroke("success", tick, OUTCOME_COLOURS["succeeded"], tip, style=style)
    return (
        f"<circle class={quoteattr('outcome ' + ending.state)} "
        f'cx="{at + 5}" cy="{mid}" r="4" '
        f'fill="{OTHER_OUTCOME_COLOUR}"><title>{tip}</title></circle>'
    )


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"


__all__ = ["End", "NodeRow", "Phase", "Timeline", "build_timeline", "phase_of", "render_svg"]
