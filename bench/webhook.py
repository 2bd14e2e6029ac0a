"""The GitHub webhook's in-process latency for a 1 MiB signed push, against the bare
HMAC-SHA256 of the same bytes (the one computation the handler cannot avoid).

The real function handler (``gitops_github`` from ``function_app``) is called with a real
``func.HttpRequest``, as the host calls it, with in-memory collaborators: the functional
tests' Flux fake (``tests.fakes_flux``), a memory store and a memory hand-off queue. Every
delivery has its own id, so each one is planned and synced (no duplicate short-cut).
If the webhook is not there (yet), the measure reports itself as pending.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = REPO / "tests" / "payloads" / "github-push.json"
SECRET_SETTING = "GITHUB_WEBHOOK_SECRET"
SECRET = "bench-webhook-secret"
PENDING = "pending: webhook not built"


def build_push(size: int) -> bytes:
    """A push of ``size`` bytes (within a few hundred): GitHub's sample push with ten
    commits touching 60 files each under ./apps and ./infrastructure, filled up with long
    commit messages (generated changelogs), as big pushes are."""
    base = json.loads(PAYLOAD.read_text(encoding="utf-8"))
    template = base["commits"][0]
    commits = []
    for i in range(10):
        commit = copy.deepcopy(template)
        commit["id"] = f"{i:02d}" + template["id"][2:]
        commit["added"] = [f"apps/web/overlay-{i}-{j}.yaml" for j in range(20)]
        commit["modified"] = [f"infrastructure/controllers/part-{i}-{j}.yaml" for j in range(40)]
        commit["removed"] = []
        commit["message"] = ""
        commits.append(commit)
    base["commits"] = commits
    base["head_commit"] = copy.deepcopy(commits[-1])
    base["size"] = base["distinct_size"] = len(commits)
    body = json.dumps(base).encode()
    room = max(0, size - len(body))
    line = "* bump chart dependencies and regenerate manifests; "  # no characters JSON escapes
    per_commit = room // len(commits)
    for commit in commits:
        commit["message"] = (line * (per_commit // len(line) + 1))[:per_commit]
    return json.dumps(base).encode()


def _handler() -> Callable[[Any], Any] | None:
    """The registered ``gitops_github`` function as the host would call it, or None."""
    try:
        import function_app  # noqa: F401 - registers the blueprints as the host would
        from functions import gitops
    except ImportError:
        return None
    builder = getattr(gitops, "gitops_github", None)
    function = getattr(builder, "_function", None)
    if function is not None and function.get_function_name() == "gitops_github":
        return function.get_user_function()
    return None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(size: int = 1 << 20, iterations: int = 200, warmup: int = 5) -> dict[str, Any]:
    handler = _handler()
    try:
        import azure.functions as func

        from shared.app import use_collaborators
        from shared.gitops.github import sign
        from shared.gitops.service import MemorySyncQueue, use_sync_queue
        from tests.fakes_flux import fleet, gitops_config, gitops_deps
    except ImportError as exc:
        return {"pending": True, "reason": f"{PENDING} ({exc})"}
    if handler is None:
        return {"pending": True, "reason": PENDING}

    body = build_push(size)
    cluster = fleet()
    deps = gitops_deps({"prod": cluster}, gitops_config())
    saved = os.environ.get(SECRET_SETTING)
    os.environ[SECRET_SETTING] = SECRET
    use_collaborators(deps)
    use_sync_queue(MemorySyncQueue())
    statuses: dict[int, int] = {}
    handler_times: list[float] = []
    try:
        signature = sign(SECRET, body)
        for i in range(warmup + iterations):
            headers = {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                "User-Agent": "GitHub-Hookshot/044aadd",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": f"bench-{i:06d}-cc78-11e3-81ab-4c9367dc0958",
                "X-Hub-Signature-256": signature,
            }
            req = func.HttpRequest(method="POST", url="/api/gitops/github", headers=headers, body=body)
            started = time.perf_counter()
            resp = handler(req)
            elapsed = time.perf_counter() - started
            if i >= warmup:
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                handler_times.append(elapsed)
        hmac_times = []
        for _ in range(warmup + iterations):
            started = time.perf_counter()
            sign(SECRET, body)
            hmac_times.append(time.perf_counter() - started)
        hmac_times = hmac_times[warmup:]
    finally:
        use_collaborators(None)
        use_sync_queue(None)
        if saved is None:
            os.environ.pop(SECRET_SETTING, None)
        else:
            os.environ[SECRET_SETTING] = saved
    p50, p99 = _percentile(handler_times, 0.5), _percentile(handler_times, 0.99)
    h50, h99 = _percentile(hmac_times, 0.5), _percentile(hmac_times, 0.99)
    return {
        "pending": False,
        "bytes": len(body),
        "iterations": iterations,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "ok": set(statuses) <= {200, 202},
        "handler_p50_ms": round(p50 * 1000, 3),
        "handler_p99_ms": round(p99 * 1000, 3),
        "handler_mean_ms": round(statistics.fmean(handler_times) * 1000, 3),
        "hmac_p50_ms": round(h50 * 1000, 3),
        "hmac_p99_ms": round(h99 * 1000, 3),
        "ratio_p50": round(p50 / h50, 2),
        "ratio_p99": round(p99 / h99, 2),
    }
