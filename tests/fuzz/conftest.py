"""The long fuzz campaign runs only as `make fuzz` (PATCHER_FUZZ=1), never in `make test`:
it is meant to run for minutes, and `make test` runs the bounded one (tests/integration/
test_api_fuzz.py)."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("PATCHER_FUZZ") == "1" else ["test_*.py"]
