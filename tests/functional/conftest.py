from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.app import use_collaborators
from tests.app_functions import app_functions
from tests.harness import Harness


@pytest.fixture(scope="session")
def functions() -> dict[str, Any]:
    """The app's functions by name."""
    return app_functions()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness({"linux": 1, "win": 1}, nodes_per_pool=2)
    use_collaborators(h.deps)
    yield h
    use_collaborators(None)
