"""``vmss-patcher``: kubectl-style verbs over the patcher's operator API.

Every failure ends in one line on stderr and an exit code (``cli.client``): 0 done, 1 the
API said no or could not be reached, 2 bad input, 3 a watched run ended without success.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from cli import render
from cli.client import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RUN_NOT_SUCCEEDED,
    EXIT_USAGE,
    ApiError,
    PatcherClient,
    entra_token_provider,
)

PROG = "vmss-patcher"
URL_ENV = "VMSS_PATCHER_URL"
KEY_ENV = "VMSS_PATCHER_FUNCTION_KEY"
SCOPE_ENV = "VMSS_PATCHER_SCOPE"
TOKEN_ENV = "VMSS_PATCHER_TOKEN"
RUN_STATES = ("planned", "running", "paused", "succeeded", "failed", "cancelled")
MAX_LIMIT = 500  # the API's largest page


class UsageError(Exception):
    """Bad input found after parsing (a value argparse cannot judge alone)."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage before its error; a script's log wants one line.
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _names(values: list[str] | None) -> list[str] | None:
    """--pools a,b --pools c -> [a, b, c]."""
    if not values:
        return None
    names = [v.strip() for value in values for v in value.split(",")]
    if any(not n for n in names):
        raise UsageError("empty name in a comma-separated list")
    return names


def _utc(value: str) -> str:
    """An ISO 8601 time with its offset (or Z), as UTC with Z: the API's notBefore."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {value!r} (like 2026-12-05T22:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} has no time zone: end it with Z or an offset like +01:00"
        )
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {value!r}")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value!r}")
    return number


def _connection_options() -> _Parser:
    """A fresh parent each time: parents share their action objects, and the top level's
    defaults must not leak into the verbs' (or a --url before the verb would be lost)."""
    common = _Parser(add_help=False)
    # SUPPRESS: given after the verb they override, otherwise the top-level value stands.
    common.add_argument("--url", default=argparse.SUPPRESS, help=f"the app's base URL (or ${URL_ENV})")
    common.add_argument(
        "--function-key",
        default=argparse.SUPPRESS,
        help=f"a function key, sent as x-functions-key (or ${KEY_ENV})",
    )
    common.add_argument(
        "--entra",
        action="store_true",
        default=argparse.SUPPRESS,
        help="authenticate with an Entra ID token (azure-identity DefaultAzureCredential)",
    )
    common.add_argument(
        "--scope",
        default=argparse.SUPPRESS,
        help=f"the token's scope with --entra, e.g. api://APP_ID/.default (or ${SCOPE_ENV})",
    )
    common.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help=f"a bearer token to send as it is, e.g. from `python -m sandbox token` (or ${TOKEN_ENV})",
    )

    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Operate vmss-node-patcher: list, plan, start, watch and steer rollouts.",
        epilog="Exit codes: 0 done, 1 the API refused or could not be reached, 2 bad input, "
        "3 a watched run ended failed or cancelled.",
        parents=[_connection_options()],
    )
    parser.set_defaults(url=None, function_key=None, entra=False, scope=None, token=None)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True

    def verb(name: str, help_text: str, handler: Callable[..., int], *, output: bool = False) -> Any:
        p = verbs.add_parser(name, help=help_text, description=help_text, parents=[_connection_options()])
        p.set_defaults(handler=handler)
        if output:
            p.add_argument("-o", "--output", choices=render.OUTPUTS, default="table", help="output format")
        return p

    p = verb("runs", "List runs, newest first.", cmd_runs, output=True)
    p.add_argument("--cluster", help="only this cluster's runs")
    p.add_argument("--state", choices=RUN_STATES, help="only runs in this state")
    _paging_arguments(p, "runs")

    p = verb("show", "Show a run: its pools, nodes, reasons and blockers.", cmd_show, output=True)
    p.add_argument("run", metavar="RUN", help="run id")

    p = verb("watch", "Follow a run to its end with a progress bar and ETA.", cmd_watch)
    p.add_argument("run", metavar="RUN", help="run id")
    p.add_argument("--interval", type=_positive, default=2.0, help="seconds between looks (default 2)")
    p.add_argument("--timeout", type=_positive, help="give up after this many seconds (exit 1)")

    p = verb("start", "Start a run on a cluster.", cmd_start, output=True)
    _target_arguments(p)
    p.add_argument("--reason", default="", help="why, recorded on the run")
    _timing_arguments(p)
    p.add_argument("--watch", action="store_true", help="then follow it to its end")
    p.add_argument("--interval", type=_positive, default=2.0, help="with --watch: seconds between looks")

    p = verb(
        "plan", "What a run would do, touching nothing: waves, ETA, windows, blockers.", cmd_plan, output=True
    )
    _target_arguments(p)
    _timing_arguments(p)

    for name, text in (
        ("pause", "Pause a run: nodes in flight finish, no new node starts."),
        ("resume", "Resume a paused run."),
        ("cancel", "Cancel a run: nodes not yet reimaged are uncordoned; failed ones stay cordoned."),
    ):
        p = verb(name, text, cmd_run_action)
        p.add_argument("run", metavar="RUN", help="run id")
    for name, text in (
        ("retry", "Retry a failed node of a run."),
        ("release", "Release a failed node: uncordon it if our run left it cordoned."),
    ):
        p = verb(name, text, cmd_node_action)
        p.add_argument("run", metavar="RUN", help="run id")
        p.add_argument("node", metavar="NODE", help="node name")

    p = verb("syncs", "List GitOps deliveries, newest first (or show one).", cmd_syncs, output=True)
    p.add_argument("delivery", metavar="DELIVERY", nargs="?", help="an X-GitHub-Delivery id")
    p.add_argument("--repository", help="only pushes to this repository (owner/name)")
    _paging_arguments(p, "deliveries")
    return parser


def _paging_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--limit", type=_count, default=20, help=f"{what} per page (default 20, at most 500)")
    pages = p.add_mutually_exclusive_group()
    pages.add_argument("--next", metavar="TOKEN", help="the page the previous one's 'next' names")
    pages.add_argument("--all", action="store_true", help=f"every page: all the {what}")


def _pages(fetch: Callable[..., dict[str, Any]], key: str, args: argparse.Namespace) -> dict[str, Any]:
    """One page as the API answers it, or with --all every page's items (the server pages;
    the CLI follows its next)."""
    answer = fetch(limit=min(args.limit, MAX_LIMIT) if args.all else args.limit, next=args.next)
    if not args.all:
        return answer
    items = list(answer.get(key, []))
    while answer.get("next"):
        answer = fetch(limit=MAX_LIMIT, next=answer["next"])
        items += answer.get(key, [])
    return {key: items}


def _target_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", required=True, help="the cluster's name in the configuration")
    p.add_argument("--pools", action="append", metavar="P[,P...]", help="only these pools")
    p.add_argument("--nodes", action="append", metavar="N[,N...]", help="only these nodes")


def _timing_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--not-before", type=_utc, help="start no node before this ISO 8601 time")
    p.add_argument("--immediate", action="store_true", help="start now, whatever the pools' windows say")


def _client(args: argparse.Namespace) -> PatcherClient:
    url = args.url or os.environ.get(URL_ENV)
    if not url:
        raise UsageError(f"no URL: pass --url or set {URL_ENV}")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with https:// (or http:// locally): {url!r}")
    token = None
    given = (args.token or os.environ.get(TOKEN_ENV) or "").strip()
    if args.entra:
        if args.token:
            raise UsageError("--token and --entra are two ways to get the token: pass one")
        scope = args.scope or os.environ.get(SCOPE_ENV)
        if not scope:
            raise UsageError(f"--entra needs --scope (or {SCOPE_ENV}), e.g. api://APP_ID/.default")
        token = entra_token_provider(scope)
    elif given:
        if any(ch.isspace() for ch in given) or not given.isprintable():
            raise UsageError(f"--token (or {TOKEN_ENV}) must be the token alone, without 'Bearer ' or spaces")

        def fixed_token() -> str:
            return given

        token = fixed_token
    return PatcherClient(url, function_key=args.function_key or os.environ.get(KEY_ENV), token=token)


def _target_body(args: argparse.Namespace) -> dict[str, Any]:
    """The fields of POST /api/runs that say what and when, shared by start and plan."""
    body: dict[str, Any] = {"cluster": args.cluster}
    if pools := _names(args.pools):
        body["pools"] = pools
    if nodes := _names(args.nodes):
        body["nodes"] = nodes
    if args.not_before:
        body["notBefore"] = args.not_before
    if args.immediate:
        body["immediate"] = True
    return body


# ---- verbs -----------------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace, out: Any) -> int:
    client = _client(args)
    answer = _pages(
        lambda **page: client.list_runs(cluster=args.cluster, state=args.state, **page), "runs", args
    )
    if args.output != "table":
        render.dump(answer, args.output, out)
        return EXIT_OK
    runs = answer.get("runs", [])
    out.print(render.runs_table(runs) if runs else "No runs.")
    _more(answer, out)
    return EXIT_OK


def _more(answer: dict[str, Any], out: Any) -> None:
    if answer.get("next"):
        out.print(f"more: --next {answer['next']} (or --all)", markup=False)


def _answer(data: Any, args: argparse.Namespace, out: Any, table: Any) -> int:
    """The API's answer as asked for: its JSON or YAML, or the verb's table."""
    if args.output != "table":
        render.dump(data, args.output, out)
    else:
        table(data, out)
    return EXIT_OK


def cmd_show(args: argparse.Namespace, out: Any) -> int:
    return _answer(_client(args).get_run(args.run), args, out, render.show_run)


def cmd_plan(args: argparse.Namespace, out: Any) -> int:
    return _answer(_client(args).plan(_target_body(args) | {"reason": "plan"}), args, out, render.show_plan)


def cmd_start(args: argparse.Namespace, out: Any) -> int:
    body = _target_body(args) | {"reason": args.reason or "started with vmss-patcher"}
    client = _client(args)
    answer = client.start_run(body)
    if args.output != "table":
        render.dump(answer, args.output, out)
    else:
        out.print(
            f"run {answer['id']} started on {args.cluster} ({answer.get('state', 'planned')})", markup=False
        )
    if args.watch:
        return _watch(client, answer["id"], interval=args.interval, timeout=None, out=out)
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, out: Any) -> int:
    return _watch(_client(args), args.run, interval=args.interval, timeout=args.timeout, out=out)


def cmd_run_action(args: argparse.Namespace, out: Any) -> int:
    answer = _client(args).run_action(args.run, args.verb)
    out.print(f"run {args.run}: {args.verb} accepted ({answer.get('state', '')})", markup=False)
    return EXIT_OK


def cmd_node_action(args: argparse.Namespace, out: Any) -> int:
    answer = _client(args).node_action(args.run, args.node, args.verb)
    detail = answer.get("state") or answer.get("reason") or ""
    out.print(
        f"run {args.run} node {args.node}: {args.verb} accepted{f' ({detail})' if detail else ''}",
        markup=False,
    )
    return EXIT_OK


def cmd_syncs(args: argparse.Namespace, out: Any) -> int:
    client = _client(args)
    if args.delivery:
        data: Any = client.get_sync(args.delivery)
        render.dump(data, "yaml" if args.output == "table" else args.output, out)
        return EXIT_OK
    answer = _pages(lambda **page: client.list_syncs(repository=args.repository, **page), "syncs", args)
    syncs = answer.get("syncs", [])
    if args.output != "table":
        render.dump(answer, args.output, out)
        return EXIT_OK
    out.print(render.syncs_table(syncs) if syncs else "No GitOps deliveries.")
    _more(answer, out)
    return EXIT_OK


def _watch(client: PatcherClient, run_id: str, *, interval: float, timeout: float | None, out: Any) -> int:
    """Poll the run, print each node's changes as they happen, and keep a progress bar of
    the nodes that have ended, with rich's estimate of the time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    started = time.monotonic()
    seen: dict[str, str] = {}
    run = client.get_run(run_id)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("nodes"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=out,
        transient=False,
    ) as progress:
        task = progress.add_task(f"run {run_id}", total=len(run.get("nodes") or []) or None)
        while True:
            nodes = run.get("nodes") or []
            for n in nodes:
                if seen.get(n["name"]) != n["state"]:
                    seen[n["name"]] = n["state"]
                    progress.console.print(
                        f"{datetime.now(UTC):%H:%M:%S} {n['name']:<32} {render.coloured(n['state'])}  "
                        f"{n.get('reason', '')}"
                    )
            done = sum(1 for n in nodes if n["state"] not in ("pending", *render.IN_FLIGHT))
            progress.update(
                task, total=len(nodes) or None, completed=done, description=f"run {run_id} {run['state']}"
            )
            ended = run["state"] in render.ENDED and not any(n["state"] in render.IN_FLIGHT for n in nodes)
            if ended:
                break
            if timeout is not None and time.monotonic() - started > timeout:
                raise ApiError(f"run {run_id} is still {run['state']} after {timeout:.0f} s")
            time.sleep(interval)
            run = client.get_run(run_id)
    counts = ", ".join(f"{v} {k}" for k, v in sorted((run.get("counts") or {}).items()))
    out.print(f"run {run_id} {render.coloured(run['state'])}: {run.get('stateReason') or counts}")
    return EXIT_OK if run["state"] == "succeeded" else EXIT_RUN_NOT_SUCCEEDED


def main(argv: Sequence[str] | None = None, *, stdout: Any = None, stderr: Any = None) -> int:
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error already printed (2)
        return int(exc.code or 0)
    out = render.console(stdout)
    try:
        return int(args.handler(args, out))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return EXIT_USAGE
    except ApiError as exc:
        print(f"{PROG}: {exc}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
