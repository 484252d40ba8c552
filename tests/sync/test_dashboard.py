"""Every query of the dashboard (deploy/grafana/bridge.json) and every alert expression
(deploy/prometheus/alerts.yml) names only metrics, labels and label values that the bridge really
exports: the catalog is read from a live ``GET /metrics`` of the app over the test Redis, with
each kind of series present. The runbook's metric table lists exactly what is exported."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.sync.context import SYSTEMS, polled
from tests.sync.conftest import documented, post
from tests.unit.test_alerts import Catalog, alert_rules, dashboard_queries, problems

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def catalog_of(text: str) -> dict[str, dict[str, set[str]]]:
    """Metric name → label → values seen, from a Prometheus text exposition (families without
    samples still give their names)."""
    found: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            found.setdefault(family.name + suffix, {})
        for sample in family.samples:
            labels = found.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return found


@pytest.fixture
def exported(web: Any) -> Catalog:
    """/metrics with every family holding samples: a worker and a beat alive, both systems
    polled, sync outcomes of each kind counted, webhook deliveries of each result received."""
    stores = web.runtime.stores
    now = time.time()
    stores.activity.heartbeat("w1@host", now, 30)
    stores.redis.set(stores.keys.beat_lock, "token", ex=30)
    for system in SYSTEMS:
        stores.activity.set_cursor(polled(system), repr(now - 30))
    stores.activity.count(
        {
            "coredination.scheduled": 1,
            "coredination.job_created": 1,
            "servicem8.created": 1,
            "skipped.not_in_step": 1,
            "pending.unmapped_user": 1,
        }
    )
    assert post(web, documented()).json()["enqueued"] == 1
    assert post(web, documented()).json()["duplicates"] == 1
    assert post(web, documented(obj="invoice")).status_code == 200  # ignored
    assert post(web, b"{not json").json()["enqueued"] == 0  # rejected: answered 200, counted
    response = web.get("/metrics")
    assert response.status_code == 200
    return catalog_of(response.text)


def test_the_live_metrics_have_every_label_the_queries_read(exported):
    assert exported["bridge_live_workers"] == {} and exported["bridge_beat_up"] == {}
    assert exported["bridge_webhooks_total"]["result"] >= {"enqueued", "duplicate", "rejected"}
    assert exported["bridge_cursor_lag_seconds"]["system"] == set(SYSTEMS)
    assert exported["bridge_budget_used"]["window"] == {"minute", "day"}


def test_every_dashboard_query_names_only_exported_metrics_and_labels(exported):
    queries = dashboard_queries()
    assert len(queries) >= 10
    found = {q.where: problems(q.expr, exported, q.legend) for q in queries}
    assert {where: p for where, p in found.items() if p} == {}


def test_every_alert_expression_names_only_exported_metrics_and_labels(exported):
    found = {rule["alert"]: problems(rule["expr"], exported) for rule in alert_rules()}
    assert {name: p for name, p in found.items() if p} == {}


def test_a_typo_in_a_query_fails_against_the_live_metrics(exported):
    assert problems("bridge_live_worker == 0", exported) == ["unknown metric bridge_live_worker"]
    assert problems('rate(bridge_webhooks_total{result="rejectd"}[5m])', exported) == [
        "bridge_webhooks_total{result} has no value 'rejectd'"
    ]
    assert problems("sum by (sytem) (bridge_cursor_lag_seconds)", exported) == [
        "no metric here has label 'sytem'"
    ]


def test_the_runbook_lists_exactly_the_exported_metrics(exported):
    runbook = (ROOT / "docs" / "operations.md").read_text()
    table = runbook.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented_names = {
        name for row in table.splitlines() if row.startswith("| `")
        for name in re.findall(r"`(bridge_\w+)", row.split("|")[1])
    }  # fmt: skip
    exported_names = {n for n in exported if n.startswith("bridge_") and not n.endswith("_created")}
    assert documented_names == exported_names
