"""Cold start: a fresh interpreter importing the app (``import function_app``: every
blueprint, no settings read) against one importing only ``azure.functions``, from the
repository root with the same Python. One unmeasured run of each first (bytecode caches
written, files in the page cache), then the two alternate, so drift hits both alike."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
APP = "import function_app"
BASELINE = "import azure.functions"


def _once(code: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHER_")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def measure(reps: int = 9) -> dict[str, Any]:
    _once(APP)
    _once(BASELINE)
    app: list[float] = []
    base: list[float] = []
    for _ in range(reps):
        app.append(_once(APP))
        base.append(_once(BASELINE))
    app_median, base_median = statistics.median(app), statistics.median(base)
    return {
        "reps": reps,
        "python": sys.executable,
        "app_seconds": [round(x, 4) for x in app],
        "baseline_seconds": [round(x, 4) for x in base],
        "app_median": round(app_median, 4),
        "baseline_median": round(base_median, 4),
        "ratio": round(app_median / base_median, 3),
    }
