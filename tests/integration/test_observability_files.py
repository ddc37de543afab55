"""deploy/prometheus/alerts.yml and deploy/grafana/pgvalve-dashboard.json are checked against a
live pgvalve: promtool validates the rules, the dashboard's queries (as recording rules) and a
real /metrics scrape, and every metric they use must be one pgvalve exports."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import yaml

from pgcluster import wait_until

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "pgvalve-dashboard.json"


def promtool(*args, stdin=None):
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def metric_names(expr: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"pgvalve_[a-z_]+", expr)}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return exprs


def scrape(pv) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_alert_rules_pass_promtool():
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    names = [rule["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in g["rules"]]
    for wanted in ("PgvalveHighErrorRate", "PgvalveSlowQueriesP95", "PgvalvePoolWait",
                   "PgvalveHostDown", "PgvalveReplicaLag", "PgvalveNoPrimary"):
        assert wanted in names


def test_dashboard_queries_are_valid_promql(tmp_path):
    # Grafana's variables replaced by what they expand to; each query becomes a recording rule
    # so that promtool parses it.
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        expr = expr.replace("$__rate_interval", "1m").replace("$database", ".*")
        rules.append({"record": f"pgvalve:dashboard_query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_live_scrape_passes_promtool_and_has_every_metric_used(pgvalve, cluster):
    replica = cluster.replicas[0]
    shard = {"name": "s0", "primary": f"127.0.0.1:{cluster.primary.port}",
             "replicas": [f"127.0.0.1:{replica.port}"]}
    pv = pgvalve(databases={"telemetry": {"shards": [shard]}},
                 health={"interval_ms": 100, "failures_before_down": 2})
    with pv.connect() as c:
        c.execute("select 1")
        try:
            c.execute("select 1/0")
        except Exception:  # noqa: BLE001 - an error for errors_total
            pass
    wait_until(lambda: "pgvalve_replica_lag_seconds{" in scrape(pv), 10,
               message="the replica's lag in /metrics")
    text = scrape(pv)
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0, r.stdout + r.stderr
    exported = metric_names(text)
    used = set()
    for g in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in g["rules"]:
            used |= metric_names(rule["expr"])
    for expr in dashboard_exprs():
        used |= metric_names(expr)
    assert used <= exported, f"used but not exported: {sorted(used - exported)}"
