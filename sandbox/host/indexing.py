"""Importing ``function_app.py`` once and describing its functions (triggers, outputs)."""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from sandbox.host.config import RunnerConfigError, resolve_setting_refs


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# get_functions() may be called only once per app object, and a module re-executed for a
# second runner would re-register the same blueprints: so each app is imported and
# indexed once per process.
_INDEX_CACHE: dict[Path, list[Any]] = {}
_INDEX_LOCK = threading.Lock()


def _index_app(app_dir: Path) -> list[Any]:
    from azure.functions.decorators.function_app import FunctionRegister

    script = (app_dir / "function_app.py").resolve()
    with _INDEX_LOCK:
        if script in _INDEX_CACHE:
            return _INDEX_CACHE[script]
        if not script.exists():
            raise RunnerConfigError(f"{script} not found")
        spec = importlib.util.spec_from_file_location("function_app", script)
        if spec is None or spec.loader is None:
            raise RunnerConfigError(f"cannot import {script}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["function_app"] = module
        spec.loader.exec_module(module)
        apps = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
        if len(apps) != 1:
            raise RunnerConfigError(f"{script} must define exactly one FunctionApp, found {len(apps)}")
        functions = list(apps[0].get_functions())
        _INDEX_CACHE[script] = functions
        return functions


@dataclass
class IndexedFunction:
    name: str
    user_function: Callable[..., Any]
    is_async: bool
    trigger: dict[str, Any]
    outputs: list[dict[str, Any]]
    wants_context: bool
    trigger_annotation: Any

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def trigger_arg(self) -> str:
        return str(self.trigger["name"])


_SUPPORTED_TRIGGERS = {"httpTrigger", "queueTrigger", "eventGridTrigger", "timerTrigger"}


def _describe(fn: Any, settings: Mapping[str, str]) -> IndexedFunction:
    name = fn.get_function_name()
    bindings = [_plain(b.get_dict_repr()) for b in fn.get_bindings()]
    triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
    if len(triggers) != 1:
        raise RunnerConfigError(f"function {name!r} must have exactly one trigger")
    trigger = triggers[0]
    if trigger["type"] not in _SUPPORTED_TRIGGERS:
        raise RunnerConfigError(
            f"function {name!r}: trigger {trigger['type']} is not supported by the runner"
        )
    outputs: list[dict[str, Any]] = []
    for b in bindings:
        if b is trigger:
            continue
        if b.get("direction") != 1 or b.get("type") not in ("queue", "http"):
            raise RunnerConfigError(
                f"function {name!r}: binding {b.get('name')!r} of type {b.get('type')} "
                "is not supported by the runner"
            )
        if b["type"] == "queue":
            outputs.append({**b, "queueName": resolve_setting_refs(str(b["queueName"]), settings).lower()})
        else:
            outputs.append(b)
    if trigger["type"] == "queueTrigger":
        trigger = {**trigger, "queueName": resolve_setting_refs(str(trigger["queueName"]), settings).lower()}
    if trigger["type"] == "timerTrigger":
        trigger = {**trigger, "schedule": resolve_setting_refs(str(trigger["schedule"]), settings)}
    user_function = fn.get_user_function()
    params = inspect.signature(user_function).parameters
    binding_names = {b["name"] for b in bindings}
    annotation = params[trigger["name"]].annotation if trigger["name"] in params else inspect.Parameter.empty
    return IndexedFunction(
        name=name,
        user_function=user_function,
        is_async=inspect.iscoroutinefunction(user_function),
        trigger=trigger,
        outputs=outputs,
        wants_context="context" in params and "context" not in binding_names,
        trigger_annotation=annotation,
    )
