"""``python -m sandbox.host``: one Functions host process (the sandbox starts K of them)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sandbox.easy_auth import EasyAuth
from sandbox.host.config import HOST_QUEUE_LEASE_SECONDS
from sandbox.host.runner import FunctionsRunner

logger = logging.getLogger("sandbox.host")


def _load_settings(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    # Accept local.settings.json ({"Values": {...}}) as well as a flat mapping.
    if isinstance(data, dict) and isinstance(data.get("Values"), dict):
        data = data["Values"]
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a JSON object of settings")
    return {str(k): str(v) for k, v in data.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.host", description="Local Azure Functions host")
    parser.add_argument("--app-dir", type=Path, required=True)
    parser.add_argument("--settings-file", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--queue-lease-seconds", type=float, default=HOST_QUEUE_LEASE_SECONDS)
    parser.add_argument("--lock-retry-seconds", type=float, default=None)
    parser.add_argument("--easy-auth", type=Path, default=None, help="App Service Authentication's key file")
    parser.add_argument("--name", default="runner")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The SDK logs every storage request at INFO; the host's own polling would drown the app's logs.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    runner = FunctionsRunner(
        args.app_dir,
        settings=_load_settings(args.settings_file),
        host=args.host,
        port=args.port,
        queue_lease_seconds=args.queue_lease_seconds,
        name=args.name,
        lock_retry_seconds=args.lock_retry_seconds,
        easy_auth=EasyAuth.load(args.easy_auth) if args.easy_auth else None,
    )
    try:
        runner.start()
    except Exception:
        logger.exception("runner %s failed to start", args.name)
        return 1
    print(f"READY {runner.url}", flush=True)
    while not stop.wait(0.5):
        pass
    runner.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
