"""What a listing endpoint was asked: a page (``limit``, ``next``) and its filters.

The records listed grow with every run and push, so no listing reads them all: each
answer is one page, taken by the store with its own continuation, and says in ``next``
where the following one starts (absent at the end). A page may hold fewer items than
``limit`` and still have a ``next``, as Table storage's own pages may.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import ValidationError
from shared.rollout.model import RunState

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# The function key may come as ?code=...; the host passes it through.
_HOST_PARAMETERS = frozenset({"code"})
MAX_FILTER_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _filter_value(params: Mapping[str, str], name: str) -> str | None:
    """A name to filter by: no name configured or recorded is longer or holds control
    characters, and the store's query language is not asked to compare such a value."""
    value = params.get(name) or None
    if value is not None and (len(value) > MAX_FILTER_CHARS or _CONTROL.search(value)):
        raise ValidationError(
            f"{name} must be at most {MAX_FILTER_CHARS} characters, none a control character"
        )
    return value


@dataclass(frozen=True)
class PageRequest:
    limit: int = DEFAULT_LIMIT
    next: str = ""

    @classmethod
    def from_query(cls, params: Mapping[str, str], *, filters: frozenset[str]) -> PageRequest:
        """``limit`` and ``next`` from a query string that may also carry ``filters``;
        ValidationError naming anything else, or a limit out of range."""
        unknown = sorted(set(params) - {"limit", "next"} - filters - _HOST_PARAMETERS)
        if unknown:
            allowed = ", ".join(sorted({"limit", "next"} | filters))
            raise ValidationError(f"unknown query parameters {unknown}; this listing takes {allowed}")
        raw = params.get("limit", "")
        limit = DEFAULT_LIMIT
        if raw != "":
            if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
                raise ValidationError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
            limit = int(raw)
        return cls(limit=limit, next=params.get("next", ""))


@dataclass(frozen=True)
class RunQuery:
    """GET /api/runs: a page of runs, newest first, of one cluster and in given states
    (comma-separated) when asked."""

    page: PageRequest
    cluster: str | None = None
    states: frozenset[RunState] | None = None

    FILTERS = frozenset({"cluster", "state"})

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> RunQuery:
        page = PageRequest.from_query(params, filters=cls.FILTERS)
        cluster = _filter_value(params, "cluster")
        states = None
        if "state" in params:
            names = [s.strip() for s in params["state"].split(",")]
            known = [str(s) for s in RunState]
            wrong = [n for n in names if n not in known]
            if wrong:
                raise ValidationError(
                    f"state must be one or more of {', '.join(known)} (comma-separated), got {wrong}"
                )
            states = frozenset(RunState(n) for n in names)
        return cls(page=page, cluster=cluster, states=states)


@dataclass(frozen=True)
class SyncQuery:
    """GET /api/gitops/syncs: a page of deliveries, newest first, of one repository
    (owner/name, as GitHub names it) when asked."""

    page: PageRequest
    repository: str | None = None

    FILTERS = frozenset({"repository"})

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> SyncQuery:
        return cls(
            page=PageRequest.from_query(params, filters=cls.FILTERS),
            repository=_filter_value(params, "repository"),
        )
