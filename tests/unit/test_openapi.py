"""The API's OpenAPI description: valid OpenAPI 3.1, and its paths are the routes served."""

from __future__ import annotations

import json
import re

import azure.functions as func
from openapi_spec_validator import validate

from functions.openapi_http import description
from tests.app_functions import app_functions


def _served() -> set[tuple[str, str]]:
    served = set()
    for function in app_functions().values():
        for binding in function.get_bindings():
            spec = binding.get_dict_repr()
            if spec.get("type") == "httpTrigger":
                for method in spec["methods"]:
                    served.add((str(getattr(method, "value", method)).lower(), f"/{spec['route']}"))
    return served


def _described() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch"}
    return {(m, path) for path, item in description()["paths"].items() for m in item if m in methods}


def test_the_description_is_valid_openapi_3_1() -> None:
    document = description()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_route_served_is_described_and_nothing_else() -> None:
    served, described = _served(), _described()
    assert not served - described, f"served but not described: {sorted(served - described)}"
    assert not described - served, f"described but not served: {sorted(described - served)}"


def test_each_path_parameter_is_declared() -> None:
    for path, item in description()["paths"].items():
        for method, operation in item.items():
            declared = {
                p["name"] for p in operation.get("parameters", []) if "$ref" not in p and p["in"] == "path"
            } | {
                description()["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]["name"]
                for p in operation.get("parameters", [])
                if "$ref" in p
            }
            assert declared >= set(re.findall(r"\{(\w+)\}", path)), (method, path)


def test_the_description_is_served_as_json() -> None:
    req = func.HttpRequest(method="GET", url="/api/openapi.json", body=b"")
    resp = app_functions()["openapi_description"].get_user_function()(req)
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert json.loads(resp.get_body())["paths"]["/runs"]["post"]["requestBody"]
