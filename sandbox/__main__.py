"""``python -m sandbox up|demo|token``: the local stand-ins for Azure and Kubernetes."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from sandbox.cluster import PoolSpec
from sandbox.stack import DEFAULT_POOLS, REPO, Sandbox, SandboxOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything and run until SIGTERM/SIGINT")
    up.add_argument("--state-dir", type=Path, required=True)
    up.add_argument(
        "--pools",
        default=DEFAULT_POOLS,
        help="NAME:OS:COUNT[:flex],... (:flex for a Flexible scale set; default: %(default)s)",
    )
    up.add_argument(
        "--runners", type=int, default=2, help="Functions runner processes (default: %(default)s)"
    )
    up.add_argument("--time-scale", type=float, default=0.02, help="sandbox seconds per cloud second")
    up.add_argument("--max-unavailable", default="2", help="each pool's budget, a count or a percentage")
    demo = sub.add_parser("demo", help="a whole patch run, shown live, with invariant checks")
    demo.add_argument("--state-dir", type=Path, default=None)
    demo.add_argument("--pools", default=DEFAULT_POOLS)
    demo.add_argument("--runners", type=int, default=2)
    token = sub.add_parser(
        "token", help="print an Entra ID access token for the app, as the sandbox's Entra ID issues it"
    )
    token.add_argument("--state-dir", type=Path, required=True, help="the state directory of `up`")
    token.add_argument("--user", required=True, help="the caller's name (preferred_username)")
    token.add_argument(
        "--role", action="append", default=[], help="an app role (Patcher.Read, Patcher.Operate); repeatable"
    )
    token.add_argument("--lifetime", type=float, default=3600.0, help="seconds (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.command == "token":
        from sandbox.easy_auth import EasyAuth

        key_file = args.state_dir / "easy-auth.json"
        if not key_file.is_file():
            parser.error(
                f"{key_file} does not exist: start the sandbox first (`up --state-dir {args.state_dir}`)"
            )
        # Entra ID issues only the roles the app registration defines (infra/app-roles.json).
        app_roles = json.loads((REPO / "infra" / "app-roles.json").read_text(encoding="utf-8"))
        defined = {role["value"] for role in app_roles}
        unknown = sorted(set(args.role) - defined)
        if unknown:
            parser.error(f"--role {', '.join(unknown)}: the app registration defines only {sorted(defined)}")
        print(EasyAuth.load(key_file).mint(args.user, args.role, lifetime=args.lifetime))
        return 0

    if args.command == "demo":
        from sandbox.demo import run_demo

        return run_demo(state_dir=args.state_dir, pools=args.pools, runners=args.runners)

    try:
        pools = PoolSpec.parse_list(args.pools)
    except ValueError as exc:
        parser.error(str(exc))
    budget: int | str = int(args.max_unavailable) if args.max_unavailable.isdigit() else args.max_unavailable
    sandbox = Sandbox(
        SandboxOptions(
            state_dir=args.state_dir,
            pools=pools,
            runners=args.runners,
            time_scale=args.time_scale,
            max_unavailable=budget,
        )
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sandbox.start()
    print(f"sandbox up: {sandbox.endpoints_path}", flush=True)
    try:
        stop.wait()
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
