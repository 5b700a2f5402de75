"""deploy/monitoring/ (issue 14): the Prometheus alert rules pass `promtool check rules` and fire as
their own unit tests say (`promtool test rules`); the Grafana dashboard matches a JSON schema of what
Grafana needs to import it, its queries are PromQL promtool accepts, and every metric either file
names is one hubcache exports."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from hubcache.metrics import Metrics

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES, RULE_TESTS, DASHBOARD = MONITORING / "hubcache-alerts.yml", MONITORING / "hubcache-alerts.test.yml", MONITORING / "hubcache-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian's prometheus package; scripts/test installs it)")

TARGET = {"type": "object", "required": ["refId", "expr"],
          "properties": {"refId": {"type": "string", "pattern": "^[A-Z]$"}, "expr": {"type": "string", "minLength": 1},
                         "legendFormat": {"type": "string"}, "datasource": {"$ref": "#/$defs/datasource"}}}
PANEL = {"type": "object", "required": ["id", "type", "title", "gridPos", "targets", "datasource"],
         "properties": {"id": {"type": "integer", "minimum": 1},
                        "type": {"enum": ["timeseries", "stat", "gauge", "bargauge", "table", "text"]},
                        "title": {"type": "string", "minLength": 1},
                        "gridPos": {"type": "object", "required": ["h", "w", "x", "y"], "additionalProperties": False,
                                    "properties": {"h": {"type": "integer", "minimum": 1}, "w": {"type": "integer", "minimum": 1, "maximum": 24},
                                                   "x": {"type": "integer", "minimum": 0, "maximum": 23}, "y": {"type": "integer", "minimum": 0}}},
                        "targets": {"type": "array", "minItems": 1, "items": TARGET},
                        "datasource": {"$ref": "#/$defs/datasource"},
                        "fieldConfig": {"type": "object", "required": ["defaults"]}}}
SCHEMA = {  # what Grafana (10, 11) needs to import a dashboard JSON, and what this one promises
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
    "$defs": {"datasource": {"type": "object", "required": ["type", "uid"],
                             "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}}}},
    "properties": {"title": {"type": "string", "minLength": 1}, "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
                   "schemaVersion": {"type": "integer", "minimum": 30}, "refresh": {"type": "string"},
                   "time": {"type": "object", "required": ["from", "to"]},
                   "templating": {"type": "object", "required": ["list"],
                                  "properties": {"list": {"type": "array", "items": {"type": "object", "required": ["name", "type"]}}}},
                   "panels": {"type": "array", "minItems": 1, "items": PANEL}},
}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def exprs():
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def rules():
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def exported() -> set[str]:
    """Every series name hubcache's /metrics can show."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_alert_rules_pass_promtool_check():
    res = promtool("check", "rules", RULES.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules())} rules found" in res.stdout


@needs_promtool
def test_alert_rules_fire_as_their_unit_tests_say():
    res = promtool("test", "rules", RULE_TESTS.name)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_is_tested_and_says_what_to_do():
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    for r in rules():
        assert r["alert"] in tested
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
    assert {"HubcachePullBudgetLow", "HubcacheUpstreamBackingOff", "HubcacheUpstreamDown", "HubcacheStoreNearCap",
            "HubcacheErrorRate"} <= {r["alert"] for r in rules()}  # what issue 14 asks for


def test_dashboard_matches_the_schema_and_its_panels_do_not_overlap():
    d = dashboard()
    jsonschema.validate(d, SCHEMA)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "instance"}


def test_dashboard_schema_rejects_a_broken_panel():  # the schema check can fail
    d = dashboard()
    del d["panels"][0]["targets"][0]["expr"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(d, SCHEMA)


@needs_promtool
def test_dashboard_queries_are_promql(tmp_path):
    """Each query, with Grafana's variables given values, as a recording rule promtool must accept."""
    grafana = {"$instance": ".*", "$__rate_interval": "5m", "$__range": "6h"}
    records = []
    for i, e in enumerate(exprs()):
        for var, value in grafana.items():
            e = e.replace(var, value)
        assert "$" not in e, e
        records.append({"record": f"dashboard:query{i}", "expr": e})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    res = promtool("check", "rules", str(path), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_metric_named_is_exported():
    names = exported()
    assert "hubcache_pulls_saved_total" in names and "hubcache_upstream_backoff" in names
    used = set()
    for e in exprs() + [r["expr"] for r in rules()]:
        used |= set(re.findall(r"\bhubcache_\w+", e))
    assert used and used <= names, used - names
