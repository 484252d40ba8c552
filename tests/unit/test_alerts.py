"""The alert rules and the dashboard as code (deploy/): promtool checks the rules, the scrape
config and every dashboard query, and runs the rules' unit tests
(deploy/prometheus/alerts.test.yml); every alert carries what an operator needs and is tested both
ways; and the PromQL checker that tests/sync/test_dashboard.py runs against a live /metrics finds
a misspelt metric, function, label or label value.

promtool comes from Debian's ``prometheus`` package, which ``make tools`` (run by ``make test``)
installs. Without it these tests skip locally and fail in CI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.unit.test_doc_references import anchors

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "bridge.json"
RUNBOOK = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning", "info"}


# --- what deploy/ queries -------------------------------------------------------------------------
def alert_rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


@dataclass(frozen=True)
class Query:
    where: str
    expr: str
    legend: str = ""


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows hold their panels


def dashboard_queries(dashboard: Mapping | None = None) -> list[Query]:
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    found = [
        Query(
            f"panel {panel.get('title')!r} {target.get('refId')}",
            target["expr"],
            target.get("legendFormat", ""),
        )
        for panel in _panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            expr = query.get("query") if isinstance(query, dict) else query
            expr = re.sub(r"^\s*(?:label_values|query_result)\((.*)\)\s*$", r"\1", expr or "")
            found.append(Query(f"variable {variable['name']!r}", expr.split(",")[0]))
    return found


# --- a small PromQL reader: which metrics, labels and label values an expression names ---------
_FUNCTIONS = (
    # aggregations
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk "
    "limit_ratio "
    # functions
    "abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week "
    "day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count "
    "histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum "
    "holt_winters double_exponential_smoothing hour idelta increase irate label_join "
    "label_replace ln log2 log10 minute month predict_linear rate resets round scalar sgn sort "
    "sort_desc sort_by_label sort_by_label_desc sqrt time timestamp vector year avg_over_time "
    "min_over_time max_over_time sum_over_time count_over_time quantile_over_time "
    "stddev_over_time stdvar_over_time last_over_time present_over_time mad_over_time acos acosh "
    "asin asinh atan atanh cos cosh sin sinh tan tanh deg pi rad"
)
_KEYWORDS = "by without on ignoring group_left group_right bool and or unless offset atan2 inf nan"
FUNCTIONS, KEYWORDS = frozenset(_FUNCTIONS.split()), frozenset(_KEYWORDS.split())
# Series Prometheus makes itself, and the labels it adds to every scraped series.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
TARGET_LABELS = frozenset({"job", "instance"})

_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\''
STRING = re.compile(_STRING + r"|`[^`]*`")
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*(" + _STRING + ")")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
RANGE = re.compile(r"\[[^\]]*\]")
IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
LITERALS = re.compile(r"^[\w.\-]+(?:\|[\w.\-]+)*$")

# metric name → label → the values seen for it
Catalog = Mapping[str, Mapping[str, set[str]]]


def problems(expr: str, catalog: Catalog, legend: str = "") -> list[str]:
    """What in ``expr`` the catalog of exported series does not know: metric names, functions,
    label names (in selectors, groupings and the legend) and literal label values."""
    found: list[str] = []
    text = GRAFANA_VARIABLE.sub("", expr)
    names: set[str] = set()
    for match in SELECTOR.finditer(text):
        name = match.group(1)
        if name is None or name in KEYWORDS:
            continue
        if name not in catalog:
            continue  # reported below as an unknown metric (or one Prometheus makes)
        labels = catalog[name]
        for label, op, quoted in MATCHER.findall(match.group(2)):
            if label == "__name__" or label in TARGET_LABELS:
                continue
            if label not in labels:
                found.append(f"{name} has no label {label!r}")
                continue
            value = quoted[1:-1]
            seen = labels.get(label, set())
            wanted = value.split("|") if op in ("=~", "!~") else [value]
            if op in ("=~", "!~") and not LITERALS.match(value):
                continue  # a real regular expression: nothing literal to check
            found += [f"{name}{{{label}}} has no value {v!r}" for v in wanted if v not in seen]
    bare = STRING.sub('""', text)
    bare = SELECTOR.sub(lambda m: m.group(1) or "", bare)
    bare = RANGE.sub("", bare)
    grouped: set[str] = set()
    for _, labels_text in GROUPING.findall(bare):
        grouped |= {label.strip() for label in labels_text.split(",") if label.strip()}
    bare = GROUPING.sub(" ", bare)
    for name, call in IDENTIFIER.findall(bare):
        if call:
            if name not in FUNCTIONS:
                found.append(f"unknown function {name}()")
        elif name.lower() not in KEYWORDS:
            names.add(name)
    known_labels = set(TARGET_LABELS)
    for name in sorted(names):
        if name in PROMETHEUS_SERIES:
            continue
        if name not in catalog:
            found.append(f"unknown metric {name}")
        else:
            known_labels |= set(catalog[name])
    grouping_labels = set(grouped)
    found += [f"no metric here has label {label!r}" for label in sorted(grouped - known_labels)]
    for label in LEGEND_LABEL.findall(legend):
        if label not in known_labels | grouping_labels:
            found.append(f"legend label {label!r} is on none of the series")
    return found


# A catalog as tests/sync/test_dashboard.py builds it from /metrics, for the checker's own tests.
SAMPLE: Catalog = {
    "bridge_sync_total": {"direction": {"coredination", "skipped"}, "outcome": {"scheduled"}},
    "bridge_budget_used": {"api": {"servicem8"}, "window": {"minute", "day"}},
    "bridge_budget_limit": {"api": {"servicem8"}, "window": {"minute", "day"}},
    "bridge_dead_letters": {},
}


@pytest.mark.parametrize(
    "expr",
    [
        'sum by (direction, outcome) (rate(bridge_sync_total{direction="coredination"}[5m]))',
        '60 * sum by (direction) (rate(bridge_sync_total{direction=~"coredination|skipped"}'
        "[$__rate_interval]))",
        "bridge_budget_used / on (api, window) bridge_budget_limit > 0.9",
        'max_over_time(bridge_dead_letters[1h] offset 30m) > 0 and up{job="bridge"} == 0',
        'label_replace(bridge_dead_letters, "x", "$1", "instance", "(.*)")',
        'bridge_budget_used{window!="day", instance=~"web.*"} > bool 1e3',
    ],
)
def test_the_checker_passes_what_the_catalog_knows(expr):
    assert problems(expr, SAMPLE, legend="{{instance}}") == []


@pytest.mark.parametrize(
    ("expr", "legend", "expected"),
    [
        ("rate(bridge_sync_totl[5m])", "", ["unknown metric bridge_sync_totl"]),
        ("bridge_dead_leters > 0", "", ["unknown metric bridge_dead_leters"]),
        ('bridge_budget_used{windw="day"}', "", ["bridge_budget_used has no label 'windw'"]),
        ('bridge_budget_used{window="days"}', "",
         ["bridge_budget_used{window} has no value 'days'"]),
        ('bridge_sync_total{direction=~"coredination|servicem9"}', "",
         ["bridge_sync_total{direction} has no value 'servicem9'"]),
        ("sum by (directon) (bridge_sync_total)", "", ["no metric here has label 'directon'"]),
        ("rat(bridge_sync_total[5m])", "", ["unknown function rat()"]),
        ("bridge_dead_letters", "{{api}}", ["legend label 'api' is on none of the series"]),
    ],
)  # fmt: skip
def test_the_checker_catches_a_typo(expr, legend, expected):
    assert problems(expr, SAMPLE, legend) == expected


def test_the_queries_are_found_in_panels_rows_and_variables():
    dashboard = {
        "panels": [
            {"title": "a", "targets": [{"refId": "A", "expr": "bridge_dead_letters"}]},
            {"title": "row", "type": "row", "panels": [
                {"title": "b", "targets": [{"refId": "A", "expr": "up"}, {"refId": "B"}]}]},
        ],
        "templating": {"list": [
            {"name": "api", "type": "query",
             "query": {"query": "label_values(bridge_budget_used, api)"}},
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
        ]},
    }  # fmt: skip
    assert [q.expr for q in dashboard_queries(dashboard)] == [
        "bridge_dead_letters",
        "up",
        "bridge_budget_used",
    ]


# --- every alert says what to do, and is tested both ways ----------------------------------------
def test_every_alert_has_a_severity_a_summary_what_to_do_and_a_runbook_section():
    runbook = anchors(RUNBOOK.read_text())
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        name, notes = rule["alert"], rule.get("annotations", {})
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert notes.get("summary") and len(notes.get("description", "")) > 40, name
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/operations.md", f"{name}: the runbook is docs/operations.md"
        assert anchor in runbook, f"{name}: docs/operations.md has no heading #{anchor}"


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_keeps_it_quiet():
    checks = [
        c for t in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for c in t["alert_rule_test"]
    ]
    for name in (r["alert"] for r in alert_rules()):
        mine = [c for c in checks if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no test where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no test where it stays quiet"


def test_the_runbook_and_the_readme_list_every_alert():
    runbook, readme = RUNBOOK.read_text(), (ROOT / "README.md").read_text()
    for name in (r["alert"] for r in alert_rules()):
        assert f"`{name}`" in runbook, f"{name} is not in docs/operations.md"
        assert f"`{name}`" in readme, f"{name} is not in the README"


# --- promtool -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        why = "promtool is not installed: `make tools` installs Debian's prometheus package"
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return path


def run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_rules_and_the_scrape_config(promtool, tmp_path):
    # The scrape config names the token file as the container sees it: checked here beside a
    # stand-in token, with every file it refers to copied along.
    config = (PROMETHEUS / "prometheus.yml").read_text()
    assert "/etc/prometheus/metrics_token" in config
    (tmp_path / "metrics_token").write_text("stand-in\n")
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    checked = tmp_path / "prometheus.yml"
    checked.write_text(config.replace("/etc/prometheus/metrics_token",
                                      str(tmp_path / "metrics_token")))  # fmt: skip
    for args in (("check", "rules", ALERTS), ("check", "config", checked)):
        done = run(promtool, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"SUCCESS: {len(alert_rules())} rules found"
        in run(promtool, "check", "rules", ALERTS).stdout
    )


def test_promtool_unit_tests_of_the_alerts_pass(promtool):
    done = run(promtool, "test", "rules", ALERT_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_unit_tests_catch_a_changed_threshold(promtool, tmp_path):
    """The tests bite: with one threshold raised, promtool names that alert."""
    rules = ALERTS.read_text()
    assert "bridge_dead_letters > 0" in rules
    (tmp_path / "alerts.yml").write_text(
        rules.replace("bridge_dead_letters > 0", "bridge_dead_letters > 5")
    )
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    done = run(promtool, "test", "rules", tmp_path / "alerts.test.yml")
    assert done.returncode != 0
    assert "alertname: BridgeDeadLetters" in done.stdout + done.stderr


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    """Each query as a recording rule, so promtool's parser reads it (Grafana's interval
    variables replaced by a duration)."""
    queries = dashboard_queries()
    assert queries
    interval = re.compile(r"\$__(?:rate_)?interval|\$__range")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": interval.sub("5m", q.expr)}
        for i, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(promtool, "check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
