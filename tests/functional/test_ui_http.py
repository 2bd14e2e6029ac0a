"""The timeline and status page routes, called as the host calls them: real HttpRequest objects."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from tests.functional.test_runs_http import call
from tests.harness import Harness

SVG = "{http://www.w3.org/2000/svg}"


def test_a_finished_runs_timeline_is_an_svg_with_one_row_per_node(functions: dict, harness: Harness) -> None:
    run_id = json.loads(call(functions, "runs_start", "POST", "/api/runs", {"cluster": "test"}).get_body())[
        "id"
    ]
    harness.pump(run_id)
    resp = call(functions, "run_timeline", "GET", f"/api/runs/{run_id}/timeline", route_params={"id": run_id})
    assert resp.status_code == 200
    assert resp.mimetype == "image/svg+xml"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    root = ET.fromstring(resp.get_body())
    assert root.tag == f"{SVG}svg"
    rows = root.findall(f".//{SVG}g[@class='rows']/{SVG}g")
    assert sorted(r.get("data-node") for r in rows) == sorted(harness.node_states(run_id))
    for row in rows:
        assert row.get("data-state") == "succeeded"
        phases = [r.get("data-phase") for r in row.findall(f"{SVG}rect[@data-phase]")]
        assert phases == ["waiting", "draining", "reimaging", "booting"]
        assert row.find(f"{SVG}path[@class='outcome success']") is not None
    # One node per pool at a time (maxUnavailable 1, two pools of two): two waves.
    assert sorted({r.get("data-wave") for r in rows}) == ["1", "2"]


def test_the_timeline_of_an_unknown_run_is_a_404_naming_it(functions: dict, harness: Harness) -> None:
    resp = call(functions, "run_timeline", "GET", "/api/runs/nope/timeline", route_params={"id": "nope"})
    assert resp.status_code == 404
    assert "nope" in json.loads(resp.get_body())["error"]


def test_the_status_page_is_html_that_calls_the_api_with_the_key_it_was_given(
    functions: dict[str, Any], harness: Harness
) -> None:
    resp = call(functions, "status_page", "GET", "/api/ui?code=k")
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    page = resp.get_body().decode()
    assert "<title>vmss-node-patcher: runs</title>" in page
    assert 'searchParams.set("code", code)' in page
