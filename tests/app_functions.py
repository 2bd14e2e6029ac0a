"""The app's functions, indexed once per test session: the Functions SDK refuses a second
``get_functions()`` on the same app (each indexing registers the names again)."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def app_functions() -> dict[str, Any]:
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}
