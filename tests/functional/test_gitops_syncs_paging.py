"""GET /api/gitops/syncs answers a page at a time, newest first, filtered by repository;
the sweeper deletes deliveries past retention with what they own, and lists the ones
recorded before syncs were listed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
import pytest

from shared.clock import FakeClock, iso
from shared.gitops.service import CLUSTER_KIND, DELIVERY_KIND, SYNC_KIND
from shared.work import sweep
from tests.functional.test_gitops_webhook import (
    PUSH_BODY,
    World,
    headers_for,
    post,
    secrets_in_app_settings,  # noqa: F401 - the module's fixture: the webhook's secret in the settings
)

REPOSITORY = "Octocoders/fleet-gitops"


@pytest.fixture
def world() -> Iterator[World]:
    with World() as w:
        yield w


def listed(functions: dict[str, Any], **params: str) -> tuple[int, dict[str, Any]]:
    req = func.HttpRequest(
        method="GET", url="/api/gitops/syncs?" + urlencode(params), body=b"", params=params
    )
    resp = functions["gitops_syncs"].get_user_function()(req)
    return resp.status_code, json.loads(resp.get_body())


def push(functions: dict[str, Any], world: World, delivery: str) -> None:
    resp = post(functions, PUSH_BODY, headers_for(PUSH_BODY, delivery=delivery))
    assert resp.status_code in (200, 202), resp.get_body()
    clock = world.deps.clock
    assert isinstance(clock, FakeClock)
    clock.advance(60)


def test_syncs_page_newest_first_and_filter_by_repository(functions: dict, world: World) -> None:
    for i in range(3):
        push(functions, world, f"d-{i}")
    status, first = listed(functions, limit="2")
    assert status == 200 and [s["delivery"] for s in first["syncs"]] == ["d-2", "d-1"] and first["next"]
    status, rest = listed(functions, limit="2", next=first["next"])
    assert [s["delivery"] for s in rest["syncs"]] == ["d-0"] and "next" not in rest
    assert len(listed(functions, repository=REPOSITORY)[1]["syncs"]) == 3
    assert listed(functions, repository="someone/else") == (200, {"syncs": []})


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 500"),
        ({"next": "!!"}, "next is not a continuation token"),
        ({"repository": "a\nb"}, "repository must be at most 256 characters, none a control character"),
        ({"state": "done"}, "unknown query parameters ['state']; this listing takes limit, next, repository"),
    ],
)
def test_bad_paging_is_refused_with_the_reason(
    functions: dict, world: World, params: dict[str, str], reason: str
) -> None:
    status, body = listed(functions, **params)
    assert status == 400 and reason in body["error"]


def test_deliveries_past_retention_are_deleted_with_their_claims_and_cluster_records(
    functions: dict, world: World
) -> None:
    store, clock = world.deps.store, world.deps.clock
    assert isinstance(clock, FakeClock)
    push(functions, world, "old")
    store.put_record(CLUSTER_KIND, "old/prod", {"state": "done"})  # as a queued cluster leaves it
    clock.advance(91 * 86_400)
    push(functions, world, "new")
    report = sweep(world.deps)
    assert report.deleted_syncs == ["old"]
    assert store.get_record(SYNC_KIND, "old") is None and store.get_record(DELIVERY_KIND, "old") is None
    assert store.get_record(CLUSTER_KIND, "old/prod") is None
    assert [s["delivery"] for s in listed(functions)[1]["syncs"]] == ["new"]
    assert store.get_record(DELIVERY_KIND, "new") is not None


def test_syncs_recorded_before_the_listing_are_listed_after_a_sweep(functions: dict, world: World) -> None:
    store, clock = world.deps.store, world.deps.clock
    store.put_record(
        SYNC_KIND,
        "legacy",
        {"delivery": "legacy", "receivedAt": iso(clock.now()), "repository": REPOSITORY, "state": "done"},
    )
    assert listed(functions)[1]["syncs"] == []
    sweep(world.deps)
    assert [s["delivery"] for s in listed(functions)[1]["syncs"]] == ["legacy"]
