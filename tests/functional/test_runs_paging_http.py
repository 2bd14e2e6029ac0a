"""GET /api/runs answers a page at a time, newest first, filtered by cluster and state,
and refuses a limit, next or state it cannot honour with a reason."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
import pytest

from shared.rollout.model import RunState
from tests.harness import Harness
from tests.store_contract import make_timed_run


def get(functions: dict[str, Any], **params: str) -> tuple[int, dict[str, Any]]:
    req = func.HttpRequest(method="GET", url="/api/runs?" + urlencode(params), body=b"", params=params)
    resp = functions["runs_list"].get_user_function()(req)
    return resp.status_code, json.loads(resp.get_body())


def test_runs_page_with_next_until_the_last_page(functions: dict, harness: Harness) -> None:
    now = harness.clock.now()
    made = [make_timed_run(harness.store, now - 3600 + i, cluster="test") for i in range(5)]
    status, first = get(functions, limit="2")
    assert status == 200 and len(first["runs"]) == 2 and first["next"]
    seen = [r["id"] for r in first["runs"]]
    answer = first
    while "next" in answer:
        status, answer = get(functions, limit="2", next=answer["next"])
        assert status == 200
        seen += [r["id"] for r in answer["runs"]]
    assert seen == [r.id for r in reversed(made)]
    status, everything = get(functions)
    assert "next" not in everything and len(everything["runs"]) == 5


def test_runs_filter_by_cluster_and_states(functions: dict, harness: Harness) -> None:
    now = harness.clock.now()
    done = make_timed_run(harness.store, now - 30, cluster="test", state=RunState.SUCCEEDED)
    failed = make_timed_run(harness.store, now - 20, cluster="test", state=RunState.FAILED)
    other = make_timed_run(harness.store, now - 10, cluster="other", state=RunState.FAILED)
    assert [r["id"] for r in get(functions, cluster="test")[1]["runs"]] == [failed.id, done.id]
    assert [r["id"] for r in get(functions, state="failed")[1]["runs"]] == [other.id, failed.id]
    both = get(functions, cluster="test", state="failed,succeeded")[1]["runs"]
    assert [r["id"] for r in both] == [failed.id, done.id]
    assert get(functions, cluster="nowhere") == (200, {"runs": []})


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 500, got '0'"),
        ({"limit": "501"}, "from 1 to 500"),
        ({"limit": "ten"}, "got 'ten'"),
        ({"limit": "-1"}, "got '-1'"),
        ({"limit": "²"}, "whole number"),
        ({"next": "garbage!"}, "next is not a continuation token this API gave out"),
        ({"next": "e30"}, "continuation token"),
        ({"state": "done"}, "state must be one or more of planned, running"),
        ({"state": "failed,"}, "got ['']"),
        ({"cluster": "a\x00b"}, "cluster must be at most 256 characters, none a control character"),
        ({"cluster": "c" * 257}, "at most 256 characters"),
        ({"page": "2"}, "unknown query parameters ['page']; this listing takes cluster, limit, next, state"),
    ],
)
def test_bad_paging_or_filters_are_refused_with_the_reason(
    functions: dict, harness: Harness, params: dict[str, str], reason: str
) -> None:
    status, body = get(functions, **params)
    assert status == 400
    assert reason in body["error"]


def test_the_function_key_in_the_query_is_not_a_filter(functions: dict, harness: Harness) -> None:
    make_timed_run(harness.store, harness.clock.now(), cluster="test")
    status, body = get(functions, code="the-function-key")
    assert status == 200 and len(body["runs"]) == 1
