"""`python -m sandbox up` as a user runs it: endpoints, kubeconfig, supervision, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.sandbox_helpers import http_json

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _wait_for(path: Path, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.2)
    raise AssertionError(f"{path} was not written within {timeout}s")


def test_sandbox_up_serves_everything_restarts_dead_runners_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox",
            "up",
            "--state-dir",
            str(state),
            "--pools",
            "p1:linux:2,w1:windows:1",
            "--runners",
            "2",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        endpoints = _wait_for(state / "endpoints.json")
        for key in (
            "kube_url",
            "arm_url",
            "storage_connection_string",
            "functions_url",
            "subscription_id",
            "cluster",
            "runner_pids",
            "maintenance_configuration_id",
            "gallery_image_definition_id",
            "github_webhook_secret",
            "gitops_repo_url",
            "gitops_branch",
        ):
            assert endpoints.get(key), key
        assert len(endpoints["runner_pids"]) == 2
        # kubectl, a client nobody here wrote, reads the cluster through the kubeconfig it wrote.
        home = tmp_path / "home"
        home.mkdir()
        out = subprocess.run(
            [
                "kubectl",
                "--kubeconfig",
                str(state / "kubeconfig"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "get",
                "nodes",
                "-o",
                "name",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": str(home)},
            check=True,
        )
        assert len(out.stdout.split()) == 3
        status, body = http_json("GET", f"{endpoints['functions_url']}/api/runs")
        assert status == 200 and body == {"runs": []}
        # Like the Functions host, a worker that dies is started again.
        victim = endpoints["runner_pids"][0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = json.loads((state / "endpoints.json").read_text())["runner_pids"]
            if victim not in pids and len(pids) == 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the dead runner was not replaced")
        assert (state / "history.jsonl").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0
    for pid in json.loads((state / "endpoints.json").read_text())["runner_pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
