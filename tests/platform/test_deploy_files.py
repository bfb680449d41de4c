"""deploy/ (issue 18): the Grafana dashboard and the Prometheus alert rules parse, and every
metric they name is on a running node's /metrics; promtool checks the rules where installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "aquafleet.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\baquafleet_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert all(queries) and len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    queries += [str(v.get("definition", "")) for v in dashboard["templating"]["list"]]
    return queries


def alert_rules() -> list[dict[str, Any]]:
    rules = [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        assert (
            rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
        )
    return rules


def test_the_dashboard_shows_what_operators_watch():
    text = " ".join(dashboard_queries())
    for name in (
        "aquafleet_devices_online", "aquafleet_records_stored_total",
        "aquafleet_ack_latency_seconds_bucket", "aquafleet_meter_round_seconds_bucket",
        "aquafleet_logins_ok_total", "aquafleet_login_seconds_bucket",
        "aquafleet_command_round_trip_seconds_bucket",
        "aquafleet_http_request_duration_seconds_bucket", "aquafleet_ledger_backlog",
        "aquafleet_redis_errors_total",
    ):  # fmt: skip
        assert name in text, name


def test_the_alerts_cover_the_failures_the_docs_name():
    """Each alert in deploy/ is in docs/operations.md's table (what fires it, where to look
    first), and each alert that table names is in deploy/."""
    names = {rule["alert"] for rule in alert_rules()}
    operations = (ROOT / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(Aquafleet\w+)` \(", operations, flags=re.MULTILINE))
    assert names == documented
    assert {"AquafleetNodeDown", "AquafleetLedgerBacklogGrowing", "AquafleetAckLatencyHigh",
            "AquafleetRedisUnavailable", "AquafleetEventLoopLagging"} <= names  # fmt: skip


async def test_every_metric_named_in_deploy_is_served_by_a_node(node_factory: Any):
    node = await node_factory()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{node.http_port}/metrics") as response,
    ):
        text = await response.text()
    served = {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES[family.type]
    }
    named = {
        name
        for expr in dashboard_queries() + [rule["expr"] for rule in alert_rules()]
        for name in METRIC.findall(expr)
    }
    assert len(named) >= 15 and "aquafleet_ack_latency_seconds_bucket" in named
    assert named <= served, sorted(named - served)
    # docs/operations.md explains every family the node serves.
    operations = (DEPLOY.parent / "docs" / "operations.md").read_text()
    families = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
    }
    assert {f for f in families if f"`{f}`" not in operations} == set()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules():
    checked = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
