"""The HTTP side of the CLI: one session, the auth header, and every failure turned into
one ``ApiError`` with a one-line message and the exit code a script can act on."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import requests

# Exit codes (README, "Command line"): scripts branch on these.
EXIT_OK = 0
EXIT_FAILED = 1  # the API said no (404, 409, 5xx) or could not be reached
EXIT_USAGE = 2  # bad input: a flag, an argument, or a request the API refused as invalid (400)
EXIT_RUN_NOT_SUCCEEDED = 3  # watch: the run ended failed or cancelled

FUNCTION_KEY_HEADER = "x-functions-key"
TIMEOUT = (10.0, 60.0)  # connect, read: a plan of a large cluster takes a while to answer


class ApiError(Exception):
    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED, status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status


def entra_token_provider(scope: str) -> Callable[[], str]:
    """A bearer token for ``scope`` from azure-identity's DefaultAzureCredential (az login,
    a managed identity, environment credentials), fetched again once it is near expiry."""
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    cached: dict[str, Any] = {}

    def token() -> str:
        import time

        current = cached.get("token")
        if current is None or current.expires_on - time.time() < 120:
            try:
                current = credential.get_token(scope)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ApiError(f"could not get an Entra ID token for {scope}: {first}") from None
            cached["token"] = current
        return str(current.token)

    return token


class PatcherClient:
    def __init__(
        self,
        base_url: str,
        *,
        function_key: str | None = None,
        token: Callable[[], str] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.function_key = function_key
        self.token = token
        self.session = session or requests.Session()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.function_key:
            headers[FUNCTION_KEY_HEADER] = self.function_key
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token()}"
        return headers

    def request(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}{path}"
        try:
            resp = self.session.request(
                method, url, json=body, headers=self._headers(), timeout=TIMEOUT, allow_redirects=False
            )
        except requests.exceptions.SSLError:
            raise ApiError(
                f"TLS verification failed for {self.base_url} (a private CA? set REQUESTS_CA_BUNDLE)"
            ) from None
        except requests.exceptions.Timeout:
            raise ApiError(f"{method} {url}: no answer within {TIMEOUT[1]:.0f} s") from None
        except requests.exceptions.RequestException as exc:
            raise ApiError(f"cannot reach {self.base_url}: {_reason(exc, url)}") from None
        try:
            answer = resp.json() if resp.content else None
        except ValueError:
            answer = None
        if resp.status_code >= 400:
            raise ApiError(
                _error_text(method, path, resp, answer),
                exit_code=_exit_code(resp.status_code),
                status=resp.status_code,
            )
        if resp.content and answer is None:
            raise ApiError(f"{method} {path}: HTTP {resp.status_code} with a body that is not JSON")
        return answer

    # ---- the operator API -------------------------------------------------------------------
    def list_runs(self, **query: str | int | None) -> dict[str, Any]:
        """One page of runs as the API answers it: ``runs`` and, when more follow, ``next``."""
        return dict(self.request("GET", "/api/runs" + _query(query)) or {})

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/runs/{_seg(run_id)}"))

    def start_run(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/api/runs", body))

    def plan(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/api/plans", body))

    def run_action(self, run_id: str, action: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/api/runs/{_seg(run_id)}/{action}") or {})

    def node_action(self, run_id: str, node: str, action: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/api/runs/{_seg(run_id)}/nodes/{_seg(node)}/{action}") or {})

    def list_syncs(self, **query: str | int | None) -> dict[str, Any]:
        """One page of GitOps deliveries: ``syncs`` and, when more follow, ``next``."""
        return dict(self.request("GET", "/api/gitops/syncs" + _query(query)) or {})

    def get_sync(self, delivery: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/gitops/syncs/{_seg(delivery)}"))


def _seg(value: str) -> str:
    return quote(value, safe="")


def _exit_code(status: int) -> int:
    return EXIT_USAGE if status == 400 else EXIT_FAILED


def _error_text(method: str, path: str, resp: requests.Response, answer: Any) -> str:
    detail = ""
    if isinstance(answer, dict) and answer.get("error"):
        detail = str(answer["error"])
        if answer.get("activeRun"):
            detail += f" (active run {answer['activeRun']})"
    elif resp.status_code == 401:
        detail = "unauthorized: pass a function key (--function-key), and a valid --token or --entra if any"
    elif resp.status_code == 404:
        detail = "not found (is the URL the app's, and does this version serve the route?)"
    else:
        text = " ".join(resp.text.split())[:200]
        detail = text or resp.reason or "no detail"
    return f"{method} {path}: HTTP {resp.status_code}: {json.dumps(detail)[1:-1]}"


def _reason(exc: Exception, url: str) -> str:
    """The readable part of what requests and urllib3 nest around a failed connection."""
    text = str(exc)
    if "NameResolutionError" in text or "Failed to resolve" in text:
        return f"cannot resolve the host {urlsplit(url).hostname}"
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _query(params: dict[str, str | int | None]) -> str:
    given = {k: str(v) for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(given) if given else ""
