"""The alert rules in infra/ query the metrics the app emits, under the names it emits them
(imported from shared/rollout/metrics.py, so that a rename fails here rather than in production)."""

from __future__ import annotations

import re
from typing import Any

from shared.rollout import metrics
from tests.infra import derive
from tests.infra.derive import INFRA

MONITORING = INFRA / "app" / "monitoring.bicep"


def _resolve(value: Any, variables: dict[str, Any]) -> Any:
    """A loop item's field: a literal, or the name of a variable holding one."""
    if isinstance(value, str) and value in variables:
        return variables[value]["value"]
    return value


def _alert_rules() -> list[dict[str, Any]]:
    """Each alert rule as deployed: the resource's loop expanded over its array variable."""
    doc = derive.parse_bicep(MONITORING)
    variables = doc["variables"]
    rules = []
    for resource in doc["resources"].values():
        if resource["type"] != "Microsoft.Insights/scheduledQueryRules":
            continue
        loop = resource["config"]["loop_type"]["detail"]
        item_name, items = loop["item_name"], variables[loop["array_name"]]["value"]
        body = resource["config"]["config"]
        for item in items:
            fields = {k: _resolve(v, variables) for k, v in item.items()}

            def fill(text: str, fields: dict[str, Any] = fields, item_name: str = item_name) -> str:
                return re.sub(rf"\$\{{{item_name}\.(\w+)\}}", lambda m: str(fields[m.group(1)]), text)

            criteria = body["properties"]["criteria"]["allOf"]
            rules.append(
                {
                    "name": fill(body["name"]),
                    "queries": [fill(c["query"]) for c in criteria],
                    "criteria": criteria,
                    "scopes": body["properties"]["scopes"],
                    "actions": body["properties"]["actions"],
                }
            )
    return rules


def _rule_for(metric: str) -> dict[str, Any]:
    found = [r for r in _alert_rules() if any(f'name == "{metric}"' in q for q in r["queries"])]
    assert len(found) == 1, f"one alert rule should query customMetrics for {metric}, found {found}"
    return found[0]


def test_a_failed_run_and_a_stalled_run_each_have_an_alert_on_the_metric_the_app_emits() -> None:
    failed, stalled = _rule_for(metrics.RUNS_FAILED), _rule_for(metrics.RUNS_STALLED)
    assert failed["name"] != stalled["name"]
    for rule in (failed, stalled):
        (query,) = rule["queries"]
        assert query.startswith("customMetrics"), query
        # Per cluster: the dimension the metric carries and the alert splits by.
        assert "customDimensions.cluster" in query
        (criterion,) = rule["criteria"]
        assert criterion["operator"] == "GreaterThan" and criterion["threshold"] == 0
        assert [d["name"] for d in criterion["dimensions"]] == ["cluster"]
        # Over the Application Insights component the app's exporter writes to.
        assert rule["scopes"] == [
            {
                "operator": {
                    "type": "property_accessor",
                    "operands": {"operand_1": "appInsights", "operand_2": "id"},
                }
            }
        ]


def test_the_action_group_is_optional_and_passed_through_from_main() -> None:
    params = derive.parse_bicep(MONITORING)["parameters"]
    assert params["actionGroupId"]["default"] == ""
    main = derive.parse_bicep(INFRA / "main.bicep")
    assert main["parameters"]["alertActionGroupId"]["default"] == ""
    assert main["modules"]["monitoring"]["config"]["params"]["actionGroupId"] == "alertActionGroupId"
    for rule in _alert_rules():
        assert "actionGroupId" in str(rule["actions"])
