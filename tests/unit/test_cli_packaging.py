"""The vmss-patcher command is installed by the project's own packaging, by `make demo`."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_declares_the_console_script_and_a_build_backend() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = project["project"]["scripts"]["vmss-patcher"]
    module, _, attribute = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    # Only the CLI is packaged: the app is published by .funcignore's allowlist.
    assert project["tool"]["setuptools"]["packages"] == ["cli"]


def test_make_demos_set_up_installs_the_command() -> None:
    makefile = (ROOT / "Makefile").read_text()
    demo_setup = re.search(r"^\$\(STAMP_DEMO\):.*?(?=^\S)", makefile, re.M | re.S)
    assert demo_setup, "the demo's install step"
    assert "pip install --quiet --no-deps -e ." in demo_setup.group(0)
