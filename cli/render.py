"""What the CLI prints: kubectl-style tables (rich), or the API's own JSON / YAML."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

OUTPUTS = ("table", "json", "yaml")
ENDED = frozenset({"succeeded", "failed", "cancelled"})
IN_FLIGHT = frozenset({"admitted", "draining", "reimaging", "booting"})
STATE_COLOURS = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "red",
    "draining": "yellow",
    "reimaging": "magenta",
    "booting": "cyan",
    "paused": "yellow",
}


def console(stream: Any = None) -> Console:
    out = stream or sys.stdout
    # Piped into a file or another command, rich would wrap at 80 columns: keep lines whole.
    width = None if out.isatty() else max(160, shutil.get_terminal_size((160, 24)).columns)
    return Console(file=out, width=width, soft_wrap=False, highlight=False)


def dump(data: Any, output: str, out: Console) -> None:
    # soft_wrap: a console narrower than a line must not break it (a newline inside a JSON
    # string is no JSON any more); highlight off: nothing but the document.
    if output == "yaml":
        import yaml

        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip()
    else:
        text = json.dumps(data, indent=2)
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> Table:
    # kubectl's look: upper-case headers, no borders.
    t = Table(title=title, box=None, show_edge=False, pad_edge=False, title_justify="left")
    for c in columns:
        t.add_column(c.upper(), overflow="fold")
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


def coloured(state: str) -> str:
    colour = STATE_COLOURS.get(state)
    return f"[{colour}]{state}[/]" if colour else state


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def runs_table(runs: list[dict[str, Any]]) -> Table:
    return table(
        ["id", "cluster", "state", "trigger", "created", "ended", "reason"],
        (
            [
                r["id"],
                r.get("cluster"),
                coloured(str(r.get("state"))),
                r.get("trigger"),
                r.get("createdAt"),
                r.get("endedAt") or "-",
                r.get("reason"),
            ]
            for r in runs
        ),
    )


def show_run(run: dict[str, Any], out: Console) -> None:
    counts = ", ".join(f"{v} {k}" for k, v in sorted((run.get("counts") or {}).items()))
    out.print(f"[bold]Run {run['id']}[/] on cluster {run.get('cluster')}: {coloured(str(run.get('state')))}")
    for label, key in (
        ("Reason", "reason"),
        ("State reason", "stateReason"),
        ("Trigger", "trigger"),
        ("Created", "createdAt"),
        ("Not before", "notBefore"),
        ("Deadline", "deadline"),
        ("Ended", "endedAt"),
    ):
        if run.get(key):
            out.print(f"  {label + ':':<14}{run[key]}", markup=False)
    out.print(f"  {'Nodes:':<14}{counts or 'none'}", markup=False)
    pools = run.get("pools") or {}
    out.print(
        table(
            ["pool", "max unavailable", "size", "waiting"],
            (
                [name, p.get("maxUnavailable"), p.get("size"), (run.get("waiting") or {}).get(name, "")]
                for name, p in pools.items()
            ),
        )
    )
    out.print()
    out.print(
        table(
            ["node", "pool", "wave", "state", "since", "attempts", "reason"],
            (
                [
                    n["name"],
                    n.get("pool"),
                    n.get("wave") or "-",
                    coloured(str(n.get("state"))),
                    n.get("since"),
                    n.get("attempts"),
                    n.get("reason"),
                ]
                for n in run.get("nodes") or []
            ),
        )
    )
    blocked = [(n["name"], b) for n in run.get("nodes") or [] for b in n.get("blockers") or []]
    if blocked:
        out.print()
        out.print("[bold]Blockers[/]")
        for name, b in blocked:
            out.print(f"  {name}: {b}", markup=False)
    for name, why in (run.get("leftOut") or {}).items():
        out.print(f"  left out {name}: {why}", markup=False)


def show_plan(plan: dict[str, Any], out: Console) -> None:
    if plan.get("refusal"):
        start = f"no: {plan['refusal']}"
    elif plan.get("activeRun"):
        start = f"no, run {plan['activeRun']} is active"
    elif plan.get("notBefore"):
        start = f"at {plan['notBefore']}: {plan.get('stateReason') or 'notBefore'}"
    else:
        start = "now"
    out.print(f"[bold]Plan for cluster {escape(str(plan['cluster']))}[/] (would start: {escape(start)})")
    rows = []
    for name, p in (plan.get("pools") or {}).items():
        window = p.get("window")
        if window is None:
            when = "any time"
        elif window.get("start") is None:
            when = f"{window['name']} ({window['timeZone']}): {window.get('why', 'never open')}"
        else:
            fit = "fits" if window.get("fits") else "does NOT fit"
            state = "open now, until" if window.get("open") else f"next {window['start']} to"
            when = (
                f"{window['name']} ({window['timeZone']}): {state} {window['end']}; {fit} "
                f"(needs {duration(window.get('needs'))}, has {duration(window.get('has'))})"
            )
        rows.append(
            [
                name,
                p.get("maxUnavailable"),
                p.get("size"),
                f"{duration(p.get('nodeSeconds'))} ({p.get('durationSource')})",
                when,
            ]
        )
    out.print(table(["pool", "budget", "size", "per node", "window"], rows))
    out.print()
    out.print(
        table(
            ["wave", "starts", "takes", "nodes"],
            (
                [
                    w["wave"],
                    f"+{duration(w['startsAfter'])}",
                    duration(w["estimatedSeconds"]),
                    ", ".join(w["nodes"]),
                ]
                for w in plan.get("waves") or []
            ),
        )
    )
    waves = len(plan.get("waves") or [])
    out.print(
        f"ETA: {waves} waves, about {duration(plan.get('estimatedSeconds'))} in total "
        f"(ending about {plan.get('estimatedEnd')})",
        markup=False,
    )
    out.print()
    out.print(
        table(
            ["node", "pool", "action", "wave", "why"],
            (
                [
                    n["name"],
                    n.get("pool"),
                    n.get("action"),
                    n.get("wave") or "-",
                    "; ".join(n.get("why") or []) or n.get("reason") or "",
                ]
                for n in plan.get("nodes") or []
            ),
        )
    )
    never = plan.get("neverStart") or {}
    blocked = [(n["name"], b) for n in plan.get("nodes") or [] for b in n.get("blockers") or []]
    out.print()
    if not blocked and not never:
        out.print("Blockers now: none")
    else:
        out.print("[bold]Blockers now[/]")
        for name, b in blocked:
            out.print(f"  {name}: {b}", markup=False)
        for name, why in never.items():
            out.print(f"  {name}: would never start: {why}", markup=False)
    for name, why in (plan.get("leftOut") or {}).items():
        out.print(f"  left out {name}: {why}", markup=False)


def syncs_table(syncs: list[dict[str, Any]]) -> Table:
    return table(
        ["delivery", "received", "repository", "ref", "commit", "state", "clusters"],
        (
            [
                s.get("delivery"),
                s.get("receivedAt"),
                s.get("repository"),
                s.get("ref"),
                str(s.get("commit") or "")[:12],
                s.get("state"),
                ", ".join(sorted(s.get("clusters") or {})),
            ]
            for s in syncs
        ),
    )
