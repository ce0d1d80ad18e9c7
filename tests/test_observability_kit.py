"""The operator's kit in docs/observability/: the alerting rules pass ``promtool check rules``
and their unit tests (``promtool test rules``), each alert is fired by one of them; the Grafana
dashboard is well formed and its expressions parse; every metric name the dashboard and the
rules use is in a real gateway's scrape; the README explains every metric and alert."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]
from fake_azure import open_fake_azure
from harness import MODEL, azure_deployment, open_gateway
from prometheus_client.parser import text_string_to_metric_families

KIT = Path(__file__).resolve().parent.parent / "docs" / "observability"
RULES = KIT / "alerts.yml"
RULE_TESTS = KIT / "alerts.test.yml"
DASHBOARD = KIT / "grafana-dashboard.json"
README = KIT / "README.md"

METRIC_NAME = re.compile(r"\bomixa_[a-z_]+")
# Grafana's variables, as a query sees them once Grafana has replaced them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "6h",
    "$model": ".*",
    "$deployment": ".*",
    "$instance": ".*",
}
# Sample names of each metric type, from its family's name (prometheus_client's parser names
# a counter's family without _total).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not found (Debian's prometheus package)")
    return found


def run_promtool(*args: str) -> None:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, those of collapsed rows included, rows themselves left out."""
    found = []
    for panel in items:
        if panel.get("type") == "row":
            found.extend(panels(panel.get("panels", [])))
        else:
            found.append(panel)
    return found


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in panels(dashboard()["panels"]) for target in panel["targets"]]


def variable_queries() -> list[str]:
    queries = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


def test_the_alerting_rules_pass_promtool_and_their_unit_tests():
    run_promtool("check", "rules", str(RULES))
    run_promtool("test", "rules", str(RULE_TESTS))


def test_every_alert_is_complete_and_fired_by_a_unit_test():
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert len(alerts) >= 12
    for name, rule in alerts.items():
        assert "for" in rule, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    fired: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fired.add(check["alertname"])
    assert fired == set(alerts)


def test_the_dashboard_is_importable_and_every_panel_explains_itself():
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"] and board["id"] is None
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("model", "deployment"):
        assert variables[name]["type"] == "query"
    assert all(query.startswith("label_values(") for query in variable_queries())
    rows = [panel["title"] for panel in board["panels"] if panel["type"] == "row"]
    assert rows == ["Traffic", "Latency", "Errors", "Money", "Deployments", "Engine"]
    every = panels(board["panels"])
    assert len({panel["id"] for panel in every}) == len(every)
    for panel in every:
        assert panel.get("title"), panel
        assert panel.get("description"), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(target.get("expr") for target in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]


def test_the_dashboard_expressions_parse(tmp_path):
    """Each expression, its Grafana variables replaced, as a recording rule: promtool parses it."""
    recorded = [
        {"record": f"omixa_dashboard:expr{n}", "expr": as_promql(expr)}
        for n, expr in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    run_promtool("check", "rules", str(path))


def test_the_readme_explains_every_alert():
    text = README.read_text()
    for rule in rules():
        if "alert" in rule:
            assert f"### {rule['alert']}" in text, rule["alert"]


async def scrape_a_real_gateway(tmp_path: Path) -> str:
    """A gateway in front of the fake Azure after a JSON and a streamed chat call, scraped on
    its own [metrics] listener."""
    async with (
        open_fake_azure(reply="One two three.") as fake,
        open_gateway(
            f"sqlite:///{tmp_path / 'kit.db'}",
            deployments=[azure_deployment(fake, rpm=1000, tpm=1_000_000)],
            metrics={"bind": "127.0.0.1:0"},
        ) as gw,
    ):
        _, key = await gw.funded_account("1.00")
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello."}], "max_tokens": 20}
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=20) as client:
            response = await client.post(f"{gw.base_url}/chat/completions", headers=headers, json=body)
            assert response.status_code == 200, response.text
            response = await client.post(
                f"{gw.base_url}/chat/completions", headers=headers, json={**body, "stream": True}
            )
            assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]")
            await gw.flushed()
            assert gw.gateway.metrics_url is not None
            scraped = await client.get(gw.gateway.metrics_url)
            assert scraped.status_code == 200
            return scraped.text


async def test_every_metric_the_kit_uses_is_in_a_real_scrape(tmp_path, monkeypatch):
    monkeypatch.setenv("OMIXA_ADMIN_TOKEN", "observability-kit-admin-token")
    text = await scrape_a_real_gateway(tmp_path)
    families = list(text_string_to_metric_families(text))
    exposed = {sample.name for family in families for sample in family.samples}
    for family in families:
        exposed.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    assert "omixa_requests_total" in exposed and "omixa_request_duration_seconds_bucket" in exposed

    used = {
        "the dashboard": dashboard_expressions() + variable_queries(),
        "the rules": [rule["expr"] for rule in rules()],
    }
    for where, expressions in used.items():
        names = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
        assert names, where
        missing = sorted(names - exposed)
        assert not missing, f"{where} uses metrics that the gateway does not expose: {missing}"

    # The README explains every metric the gateway exposes, under the name Prometheus stores
    # (a counter's with _total, a histogram's base name; not the *_created gauges that the
    # text format adds for them).
    readme = README.read_text()
    stored = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in families
        if not family.name.endswith("_created")
    }
    undocumented = sorted(name for name in stored if name.startswith("omixa_") and f"| `{name}` |" not in readme)
    assert not undocumented, f"docs/observability/README.md does not explain {undocumented}"
