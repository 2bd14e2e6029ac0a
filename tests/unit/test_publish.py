"""What `func azure functionapp publish` ships: the app's files, and nothing a session leaves.

The candidates are the repository's files (tracked, untracked and git-ignored alike) plus the
caches and results a working session leaves behind, whether or not they exist right now.
`.funcignore` is applied twice: with gitignore's rules (pathspec's ``GitIgnoreSpec``), and as
Azure Functions Core Tools applies it (``GitIgnoreParser.cs``: any "!" line wins, patterns are
matched at the start of the path), so the file means the same thing to both readers.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pathspec
import pytest

ROOT = Path(__file__).resolve().parents[2]
FUNCIGNORE = ROOT / ".funcignore"

# What the Functions host needs (Python v2 model): the entry point, host.json, the
# requirements the remote build installs, the packages function_app.py imports, and the
# YAML configuration written in the project root (PATCHER_CONFIG_PATH, infra/README.md),
# the API's description and the status page's static file (functions/ serves both).
APP_FILES = {
    "function_app.py",
    "host.json",
    "requirements.txt",
    "patcher.yaml",
    "functions/openapi.yaml",
    "functions/ui/index.html",
}
APP_PACKAGES = ("functions", "shared")

# What a session leaves (make demo, make test, make bench, an editor), present or not.
SESSION_LEFTOVERS = [
    ".venv/bin/python",
    ".venv/checkov/bin/checkov",
    "node_modules/azurite/package.json",
    "node_modules/.installed",
    ".mypy_cache/3.11/shared/config.data.json",
    ".ruff_cache/0.17.6/123456789",
    ".pytest_cache/v/cache/nodeids",
    ".hypothesis/examples/0a/1b",
    ".sandbox/endpoints.json",
    ".sandbox/ca.pem",
    "bench/results.json",
    "bench/results.md",
    "bench/results.json.tmp",
    "sandbox/tls.py",
    "tests/unit/test_publish.py",
    "infra/main.bicep",
    "config/patcher.example.yaml",
    "local.settings.json.example",
    "__pycache__/function_app.cpython-311.pyc",
    "functions/__pycache__/runs_http.cpython-311.pyc",
    "functions/ui/.index.html.swp",
    "shared/__pycache__/config.cpython-311.pyc",
    "shared/rollout/store/__pycache__/base.cpython-311.pyc",
    "__azurite_db_queue__.json",
    "Makefile",
    "pyproject.toml",
    "requirements-dev.txt",
    "package.json",
    "README.md",
    # The operator's CLI and what its editable install (make demo) leaves: never deployed.
    "cli/main.py",
    "vmss_node_patcher.egg-info/PKG-INFO",
    "build/lib/cli/main.py",
]

# Core Tools never looks at these, whatever .funcignore says (FileSystemHelpers.GetLocalFiles).
CORE_TOOLS_SKIPPED_DIRS = {".git", ".vscode"}
CORE_TOOLS_SKIPPED_FILES = {".funcignore", ".gitignore", "local.settings.json", "project.lock.json"}


def _repository_files() -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return {*listed, *SESSION_LEFTOVERS, *APP_FILES}


def _is_app_file(path: str) -> bool:
    if path in APP_FILES:
        return True
    parts = path.split("/")
    return parts[0] in APP_PACKAGES and path.endswith(".py") and "__pycache__" not in parts


def _core_tools_accepts(lines: Iterable[str]) -> Callable[[str], bool]:
    """Core Tools' reading of .funcignore: a port of its GitIgnoreParser.Accepts."""

    def regex(pattern: str) -> str:
        escaped = re.sub(r"[\-\[\]/{}()+?.\\^$|]", lambda m: "\\" + m.group(0), pattern)
        return escaped.replace("**", "(.+)").replace("*", "([^/]+)")

    positive: list[str] = []
    negative: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        into = negative if line.startswith("!") else positive
        into.append(regex(line.removeprefix("!").removeprefix("/")))

    def accepts(path: str) -> bool:
        if any(re.match(p, path) for p in negative):
            return True
        return not any(re.match(p, path) for p in positive)

    return accepts


def _published_by_core_tools(files: Iterable[str]) -> set[str]:
    accepts = _core_tools_accepts(FUNCIGNORE.read_text().splitlines())
    return {
        path
        for path in files
        if path.split("/")[0] not in CORE_TOOLS_SKIPPED_DIRS
        and path.rsplit("/", 1)[-1] not in CORE_TOOLS_SKIPPED_FILES
        and accepts(path)
    }


def _published_by_gitignore_rules(files: Iterable[str]) -> set[str]:
    spec = pathspec.GitIgnoreSpec.from_lines(FUNCIGNORE.read_text().splitlines())
    return {path for path in files if not spec.match_file(path)}


@pytest.mark.parametrize(
    "published", [_published_by_gitignore_rules, _published_by_core_tools], ids=["gitignore", "core-tools"]
)
def test_publishing_ships_the_app_and_nothing_else(published: Callable[[Iterable[str]], set[str]]) -> None:
    files = _repository_files()
    shipped = published(files)
    assert sorted(shipped - {p for p in files if _is_app_file(p)}) == [], "not the app's: leave it out"
    missing = {p for p in files if _is_app_file(p)} - shipped
    assert sorted(missing) == [], "the app's own files: let them in (a new package needs its own line)"


def test_every_module_the_app_imports_is_published() -> None:
    shipped = _published_by_core_tools(_repository_files())
    for package in APP_PACKAGES:
        for module in (ROOT / package).rglob("*.py"):
            assert module.relative_to(ROOT).as_posix() in shipped
