"""The project's own files agree with each other: supported Python versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]


def test_the_makefile_checks_the_python_versions_pyproject_supports() -> None:
    requires = SpecifierSet(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    )
    match = re.search(r"^PYTHON_SUPPORTED := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match is not None
    supported = [f"3.{minor}" for minor in range(8, 20) if requires.contains(f"3.{minor}.0")]
    assert match.group(1).split() == supported
