"""README's statements of the HTTP routes and the app settings stay those of the code."""

from __future__ import annotations

import re
from pathlib import Path

from tests.app_functions import app_functions

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

# Settings the app does not read itself but README tells the operator about: the SDKs
# honour the proxy variables, the Functions host reads the identity-based storage form.
READ_BY_OTHERS = {"HTTPS_PROXY", "NO_PROXY", "AzureWebJobsStorage__accountName"}


def _registered_routes() -> frozenset[tuple[str, str]]:
    routes = set()
    for function in app_functions().values():
        for binding in function.get_bindings():
            spec = binding.get_dict_repr()
            if spec.get("type") == "httpTrigger":
                for method in spec["methods"]:
                    routes.add((str(getattr(method, "value", method)), f"/api/{spec['route']}"))
    return frozenset(routes)


def _documented_calls() -> set[tuple[str, str]]:
    """Every `METHOD /api/...` README names, with `/x` siblings written after one in the
    same table cell or sentence (`POST /api/runs/{id}/pause`, `/resume`) expanded."""
    calls = set()
    for match in re.finditer(
        r"`(GET|POST|PUT|PATCH|DELETE) (/api/[^`\s?]+)[^`]*`((?:,\s*(?:and\s+)?`/[^`]+`)*)", README
    ):
        method, path, siblings = match.groups()
        calls.add((method, path))
        for sibling in re.findall(r"`(/[^`]+)`", siblings):
            calls.add((method, path.rsplit("/", 1)[0] + sibling))
    return calls


def _matches(route: str, path: str) -> bool:
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(route))
    return re.fullmatch(pattern, path) is not None or route == path


def test_every_route_the_app_serves_is_in_readme() -> None:
    documented = _documented_calls()
    missing = sorted(
        (m, r)
        for m, r in _registered_routes()
        if not any(dm == m and _matches(r, dp) for dm, dp in documented)
    )
    assert not missing, f"routes served but not in README: {missing}"


def test_every_call_readme_names_is_served() -> None:
    routes = _registered_routes()
    unknown = sorted(
        (m, p) for m, p in _documented_calls() if not any(rm == m and _matches(r, p) for rm, r in routes)
    )
    assert not unknown, f"README names calls the app does not serve: {unknown}"


def _settings_read_by_code() -> set[str]:
    names: set[str] = set()
    for source in [*ROOT.joinpath("shared").rglob("*.py"), *ROOT.joinpath("functions").rglob("*.py")]:
        names |= set(re.findall(r"[\"'%]((?:PATCHER|OTEL|APPLICATIONINSIGHTS)_[A-Z_]+)", source.read_text()))
    from shared.settings import STORAGE

    return names | {STORAGE}


def _settings_in_readme() -> set[str]:
    table = README[README.index("| setting | meaning |") :]
    table = table[: table.index("\n\n")]
    return {
        name for row in table.splitlines()[2:] for name in re.findall(r"`([A-Za-z_]+)`", row.split("|")[1])
    }


def test_every_app_setting_the_code_reads_is_in_readme() -> None:
    missing = sorted(_settings_read_by_code() - _settings_in_readme())
    assert not missing, f"app settings the code reads but README's table does not list: {missing}"


def test_readme_lists_no_app_setting_nobody_reads() -> None:
    stale = sorted(_settings_in_readme() - _settings_read_by_code() - READ_BY_OTHERS)
    assert not stale, f"README lists app settings nothing reads: {stale}"
