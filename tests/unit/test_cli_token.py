"""vmss-patcher's --token / VMSS_PATCHER_TOKEN: sent as a bearer beside the function key,
and refused in one line when it is not a token alone."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_cli import Recorder, api, run

__all__ = ["api"]  # the fixture, shared with test_cli.py


def test_a_token_is_sent_as_a_bearer_with_the_function_key(api: tuple[Recorder, str]) -> None:
    recorder, url = api
    recorder.answers[("GET", "/api/runs?limit=20")] = (200, json.dumps({"runs": []}).encode())
    code, _, err = run("--url", url, "--function-key", "k3y", "--token", "eyJ.abc.def", "runs")
    assert code == 0, err
    headers = recorder.seen[0]["headers"]
    assert headers["Authorization"] == "Bearer eyJ.abc.def" and headers["x-functions-key"] == "k3y"


def test_the_token_may_come_from_the_environment(
    api: tuple[Recorder, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, url = api
    recorder.answers[("GET", "/api/runs?limit=20")] = (200, json.dumps({"runs": []}).encode())
    monkeypatch.setenv("VMSS_PATCHER_TOKEN", "eyJ.from.env")
    code, _, err = run("--url", url, "runs")
    assert code == 0, err
    assert recorder.seen[0]["headers"]["Authorization"] == "Bearer eyJ.from.env"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--token", "Bearer eyJ.abc.def"], "without 'Bearer '"),
        (["--token", "eyJ\n.abc"], "without 'Bearer '"),
        (["--token", "eyJ.abc", "--entra", "--scope", "api://x/.default"], "pass one"),
    ],
)
def test_a_token_that_is_not_one_is_refused_in_one_line(argv: list[str], needle: str) -> None:
    code, out, err = run("--url", "http://127.0.0.1:9", *argv, "runs")
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err


def test_a_403_names_the_missing_role_in_one_line(api: tuple[Recorder, str]) -> None:
    recorder, url = api
    refusal = {"error": "rita does not hold the app role Patcher.Operate", "missingRole": "Patcher.Operate"}
    recorder.answers[("POST", "/api/runs/r1/pause")] = (403, json.dumps(refusal).encode())
    code, _, err = run("--url", url, "--token", "t", "pause", "r1")
    assert code == 1 and err.count("\n") == 1 and "HTTP 403" in err and "Patcher.Operate" in err
