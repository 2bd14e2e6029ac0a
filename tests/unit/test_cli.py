"""vmss-patcher's own contract: --help on every verb, one-line errors with exit codes, and
the requests it sends (paths, JSON fields, auth header), seen by a local HTTP server."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cli.main import build_parser, main

VERBS = ["runs", "show", "watch", "start", "plan", "pause", "resume", "cancel", "retry", "release", "syncs"]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


class Recorder:
    """A stand-in operator API: answers each path with a canned status and body, and keeps
    what it was sent."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answers: dict[tuple[str, str], tuple[int, bytes]] = {}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.seen.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(body) if body else None,
                    }
                )
                status, payload = recorder.answers.get((self.command, self.path), (404, b""))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *_: Any) -> None:
                pass

        return Handler


@pytest.fixture
def api() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), recorder.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield recorder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_every_verb_has_help() -> None:
    listed = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert sorted(listed) == sorted(VERBS)
    for verb in VERBS:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([verb, "--help"])
        assert exit_info.value.code == 0
    code, _, _ = run("--help")
    assert code == 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["plan"], "--cluster"),
        (["frobnicate"], "invalid choice"),
        (["runs", "-o", "xml"], "invalid choice"),
        (["runs", "--limit", "0"], "at least 1"),
        (["runs", "--state", "sleeping"], "invalid choice"),
        (["runs", "--all", "--next", "TOKEN"], "not allowed with"),
        (["syncs", "--limit", "0"], "at least 1"),
        (["start", "--cluster", "c", "--not-before", "tomorrow"], "not an ISO 8601 time"),
        (["start", "--cluster", "c", "--not-before", "2026-12-05T22:00:00"], "no time zone"),
        (["watch", "r", "--interval", "-1"], "more than 0"),
        (["retry", "run-only"], "NODE"),
        (["runs"], "no URL"),
        (["--url", "ftp://host", "runs"], "must start with https://"),
        (["--url", "http://127.0.0.1:9", "--entra", "runs"], "--entra needs --scope"),
        (["--url", "http://127.0.0.1:9", "plan", "--cluster", "c", "--pools", "a,,b"], "empty name"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VMSS_PATCHER_URL", raising=False)
    code, out, err = run(*argv)
    err += capsys.readouterr().err  # argparse writes its own errors to sys.stderr
    assert code == 2
    assert out == "" and err.count("\n") == 1 and needle in err, err


def test_start_sends_the_run_fields_and_the_function_key(api: tuple[Recorder, str]) -> None:
    recorder, url = api
    recorder.answers[("POST", "/api/runs")] = (202, json.dumps({"id": "r1", "state": "planned"}).encode())

    code, out, _ = run(
        "--url", url, "--function-key", "k3y", "start", "--cluster", "prod", "--pools", "a,b", "--pools", "c",
        "--nodes", "n1", "--not-before", "2026-12-05T23:00:00+01:00", "--immediate",
    )  # fmt: skip

    assert code == 0 and "run r1 started on prod" in out
    sent = recorder.seen[0]
    assert sent["headers"]["x-functions-key"] == "k3y"
    assert sent["body"] == {
        "cluster": "prod",
        "pools": ["a", "b", "c"],
        "nodes": ["n1"],
        "reason": "started with vmss-patcher",
        "notBefore": "2026-12-05T22:00:00Z",
        "immediate": True,
    }


@pytest.mark.parametrize("verb", ["retry", "release"])
def test_node_verbs_call_the_node_routes(api: tuple[Recorder, str], verb: str) -> None:
    recorder, url = api
    path = f"/api/runs/r1/nodes/aks-node%2F1/{verb}"
    recorder.answers[("POST", path)] = (202, json.dumps({"state": "pending"}).encode())

    code, out, _ = run("--url", url, verb, "r1", "aks-node/1")

    assert code == 0 and f"{verb} accepted (pending)" in out
    assert [(s["method"], s["path"]) for s in recorder.seen] == [("POST", path)]


def test_plan_posts_to_the_plans_route(api: tuple[Recorder, str]) -> None:
    recorder, url = api
    plan = {"cluster": "c", "wouldStart": True, "pools": {}, "waves": [], "nodes": [], "estimatedSeconds": 0}
    recorder.answers[("POST", "/api/plans")] = (200, json.dumps(plan).encode())

    code, out, _ = run("--url", url, "plan", "--cluster", "c", "--nodes", "n1", "--immediate", "-o", "json")

    assert code == 0 and json.loads(out) == plan
    assert recorder.seen[0]["body"] == {"cluster": "c", "nodes": ["n1"], "immediate": True, "reason": "plan"}


@pytest.mark.parametrize(
    ("status", "body", "code", "needle"),
    [
        (404, json.dumps({"error": "run r1 not found"}).encode(), 1, "HTTP 404: run r1 not found"),
        (409, json.dumps({"error": "already active", "activeRun": "r0"}).encode(), 1, "active run r0"),
        (400, json.dumps({"error": "unknown cluster 'x'"}).encode(), 2, "unknown cluster"),
        (500, b"<html>\n<b>Internal error</b>\n</html>", 1, "HTTP 500: <html> <b>Internal error</b> </html>"),
        (200, b"not json", 1, "not JSON"),
    ],
)
def test_http_failures_are_one_line_with_an_exit_code(
    api: tuple[Recorder, str], status: int, body: bytes, code: int, needle: str
) -> None:
    recorder, url = api
    recorder.answers[("GET", "/api/runs/r1")] = (status, body)

    got, out, err = run("--url", url, "show", "r1")

    assert got == code and out == ""
    assert err.count("\n") == 1 and needle in err, err


def test_an_unreachable_app_is_one_line_and_exit_1() -> None:
    code, _, err = run("--url", "http://127.0.0.1:9", "runs")
    assert (
        code == 1 and err.startswith("vmss-patcher: cannot reach http://127.0.0.1:9") and err.count("\n") == 1
    )


def test_watch_exits_3_when_the_run_ends_without_success(api: tuple[Recorder, str]) -> None:
    recorder, url = api
    run_body = {
        "id": "r1",
        "state": "failed",
        "stateReason": "1 nodes failed: n1",
        "counts": {"failed": 1},
        "nodes": [{"name": "n1", "pool": "p", "state": "failed", "reason": "drain timed out"}],
    }
    recorder.answers[("GET", "/api/runs/r1")] = (200, json.dumps(run_body).encode())

    code, out, _ = run("--url", url, "watch", "r1", "--interval", "0.1")

    assert code == 3
    assert "n1" in out and "drain timed out" in out and "run r1 failed: 1 nodes failed: n1" in out


def test_plan_table_shows_the_window_its_fit_and_nodes_that_would_never_start(
    api: tuple[Recorder, str],
) -> None:
    from shared.rollout.requests import StartRequest
    from shared.rollout.service import RunService
    from tests.harness import Harness

    windows = {
        "windows": [
            {
                "name": "short",
                "days": ["sat"],
                "start": "22:00",
                "end": "22:30",
                "timeZone": "Europe/Amsterdam",
            }
        ]
    }
    h = Harness(
        {"linux": 1, "win": 1}, nodes_per_pool=2, extra_config=windows, pool_linux={"window": "short"}
    )
    h.kube.nodes["win-1"]["spec"]["unschedulable"] = True  # takes the win pool's only slot
    plan = RunService(h.deps).preview(StartRequest(cluster="test", reason="plan"))
    recorder, url = api
    recorder.answers[("POST", "/api/plans")] = (200, json.dumps(plan).encode())

    code, out, _ = run("--url", url, "plan", "--cluster", "test")

    assert code == 0
    assert "short (Europe/Amsterdam): next 2023-11-18T22:00:00+01:00" in out and "does NOT fit" in out
    assert "(would start: at 2023-11-18T21:00:00.000Z: deferred until" in out
    assert "ETA: 2 waves, about 40m in total (ending about 2023-11-18T21:40:00.000Z)" in out
    assert "win-0: would never start: pool budget of 1 unavailable reached" in out
    assert "cordoned by someone else" in out


def test_a_host_that_does_not_resolve_is_named_in_one_line() -> None:
    code, _, err = run("--url", "http://no-such-host.invalid", "runs")
    assert code == 1
    assert err == (
        "vmss-patcher: cannot reach http://no-such-host.invalid: "
        "cannot resolve the host no-such-host.invalid\n"
    )


def test_json_and_yaml_output_are_never_wrapped_by_a_narrow_terminal() -> None:
    import io
    import json as jsonlib

    import yaml
    from rich.console import Console

    from cli import render

    data = {"reason": "Ready on 2026.11.01 (boot cdec796c); uncordoned " * 6, "nodes": [{"name": "n" * 90}]}
    for output, load in (("json", jsonlib.loads), ("yaml", yaml.safe_load)):
        buffer = io.StringIO()
        render.dump(data, output, Console(file=buffer, width=40, force_terminal=False))
        assert load(buffer.getvalue()) == data, output
