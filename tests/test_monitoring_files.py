"""The monitoring files an operator deploys: Prometheus' scrape config and alert rules, and the
Grafana dashboard, agree with docker-compose.yml and ask only for metrics the processes expose."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import api.metrics  # noqa: F401  (registers the API's metrics)
from domain.settings import Settings
from workers.exporter import SignalsCollector

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "helpdesk-dashboard.json"
NAME = re.compile(r"\b(helpdesk_[a-z_]+|dramatiq_[a-z_]+)\b")
# PromQL words that look like metric names but are not.
NOT_METRICS = {"le"}


def sample_names(families: Any) -> set[str]:
    names: set[str] = set()
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum")}
        else:
            names.add(family.name)
    return names


WORKER_NAMES_SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    os.environ["dramatiq_prom_db"] = tempfile.mkdtemp()
    from dramatiq.middleware.prometheus import Prometheus
    middleware = Prometheus()
    middleware.after_process_boot(None)
    from workers.metrics import count_deliveries
    count_deliveries([])
    import prometheus_client
    names = set()
    for value in [*vars(middleware).values(), prometheus_client.REGISTRY]:
        if hasattr(value, "collect"):
            for family in value.collect():
                kind = family.type
                if kind == "counter":
                    names.add(family.name + "_total")
                elif kind == "histogram":
                    names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
                else:
                    names.add(family.name)
    print("\\n".join(sorted(names)))
    """
)


@pytest.fixture(scope="module")
def exposed_names() -> set[str]:
    """Every sample name the API, the worker pools and the exporter can expose."""
    names = sample_names(REGISTRY.collect())
    out = subprocess.run(
        [sys.executable, "-c", WORKER_NAMES_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    ).stdout
    names |= set(out.split())
    return names


@pytest.fixture
def exporter_names(settings: Settings, exposed_names: set[str]) -> set[str]:
    return exposed_names | sample_names(SignalsCollector(settings).collect())


def referenced(expression: str) -> set[str]:
    return set(NAME.findall(expression)) - NOT_METRICS


def test_alert_rules_use_exposed_metrics_and_say_what_to_do(exporter_names: set[str]) -> None:
    document = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {
        "HelpdeskOutboxLagGrowing",
        "HelpdeskDeliveriesFailed",
        "HelpdeskSlaBreached",
    }
    for rule in rules:
        names = referenced(rule["expr"])
        assert names, f"{rule['alert']}: its expression names no metric"
        assert names <= exporter_names, f"{rule['alert']}: unknown {names - exporter_names}"
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warning"}, rule["alert"]


def test_the_dashboard_charts_exposed_metrics(exporter_names: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    charted = set().union(*(referenced(e) for e in expressions))
    assert charted <= exporter_names, charted - exporter_names
    # The signals to scale and alert on are all on it.
    for name in (
        "helpdesk_queue_messages",
        "helpdesk_outbox_oldest_unpublished_age_seconds",
        "helpdesk_deliveries_failed",
        "helpdesk_http_requests_total",
        "dramatiq_messages_total",
    ):
        assert name in charted, name


def test_prometheus_scrapes_every_process_kind_on_its_port() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    services: dict[str, Any] = COMPOSE["services"]
    prometheus = services["prometheus"]
    mounted = {volume.split(":")[0] for volume in prometheus["volumes"]}
    assert {"./deploy/prometheus/prometheus.yml", "./deploy/prometheus/alerts.yml"} <= mounted
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]

    targets: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets |= {name: int(sd["port"]) for name in sd["names"]}
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.partition(":")
                targets[host] = int(port)

    assert targets["api"] == int(services["api"]["environment"]["PORT"])
    pools = {
        name
        for name, service in services.items()
        if isinstance(service.get("command"), list) and service["command"][0] == "dramatiq"
    }
    assert pools == {"events", "notifications", "webhooks", "sla", "maintenance"}
    for pool in pools:
        assert targets[pool] == int(services[pool]["environment"]["dramatiq_prom_port"]), pool
    exporter = services["exporter"]["command"]
    assert targets["exporter"] == int(exporter[exporter.index("--port") + 1])
    assert set(targets) <= set(services)


def test_development_mail_goes_to_mailpit() -> None:
    services: dict[str, Any] = COMPOSE["services"]
    assert "mailpit" in services
    environment = services["api"]["environment"]
    assert environment["SMTP_HOST"].endswith(":-mailpit}")
    assert environment["SMTP_PORT"].endswith(":-1025}")
    assert any(port.endswith(":8025") for port in services["mailpit"]["ports"])
