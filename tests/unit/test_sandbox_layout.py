"""The sandbox's Azure side and its Functions host keep the shape issue #19 gave them:
packages of modules under 800 lines, the modules they replaced gone (no shims), and the
host's process entry point at ``python -m sandbox.host``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SANDBOX = Path(__file__).resolve().parents[2] / "sandbox"
MAX_LINES = 800


@pytest.mark.parametrize("package", ["arm", "host"])
def test_every_module_of_the_package_is_under_800_lines(package: str) -> None:
    modules = sorted((SANDBOX / package).glob("*.py"))
    assert (SANDBOX / package / "__init__.py") in modules
    too_long = {
        m.name: n for m in modules if (n := len(m.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not too_long


@pytest.mark.parametrize("old", ["arm.py", "runner.py", "azure_rbac.py", "arm_access.py"])
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
