"""The sandbox's Azure side and its Functions host keep the shape issue #19 gave them: the
modules they replaced gone (no shims), and the host's process entry point at
``python -m sandbox.host``. (The line limit of every module: tests/unit/test_layout.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SANDBOX = Path(__file__).resolve().parents[2] / "sandbox"


@pytest.mark.parametrize(
    "old",
    [
        "arm.py",
        "runner.py",
        "azure_rbac.py",
        "arm_access.py",
        "kubeapi.py",
        "rbac.py",
        "kubelet.py",
        "flux.py",
    ],
)
def test_the_replaced_module_is_gone(old: str) -> None:
    assert not (SANDBOX / old).exists()


def test_the_host_runs_as_python_m_sandbox_host() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "sandbox.host", "--help"],
        cwd=SANDBOX.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("usage: python -m sandbox.host")
