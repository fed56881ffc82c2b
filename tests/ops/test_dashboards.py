"""The Grafana dashboard and Prometheus config: valid, and every query names a metric we export."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from infra.settings import ROOT
from tests.support.metrics import scrape_headers
from workers.observability import batch_metrics, task_metrics

DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "conveyor.json"
PROMETHEUS = ROOT / "ops" / "prometheus" / "prometheus.yml"
# Flower exports these itself (flower/events.py); the dashboard may use them.
FLOWER_METRICS = {"flower_worker_online", "flower_worker_number_of_currently_executing_tasks"}
REQUIRED_PANELS = (
    "request rate",
    "latency",
    "error rate",
    "queue depth",
    "task throughput",
    "task failures",
    "task runtime",
    "queue wait",
    "db pool",
    "cache hit rate",
)


def exported_sample_names(client) -> set[str]:
    """Every sample name the API's /metrics and the workers' registry expose."""
    task_metrics()  # the worker's metrics exist once a task has run; create them
    batch_metrics()
    scraped = client.get("/metrics", headers=scrape_headers()).get_data(as_text=True)
    texts = [scraped, generate_latest(REGISTRY).decode()]
    names: set[str] = set()
    for text in texts:
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            # Families with no samples yet still define their sample names.
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
            names.update(family.name + s for s in suffixes.get(family.type, ()))
            names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_has_the_required_panels(dashboard):
    titles = [panel["title"].lower() for panel in dashboard["panels"]]
    for wanted in REQUIRED_PANELS:
        assert any(wanted in title for title in titles), wanted
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]


def test_every_panel_query_uses_exported_metrics(dashboard, client):
    exported = exported_sample_names(client) | FLOWER_METRICS
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            metrics = set(re.findall(r"\b((?:conveyor|flower)_[a-z_]+)\b", expr))
            assert metrics, f"{panel['title']}: no metric in {expr}"
            unknown = metrics - exported
            assert not unknown, f"{panel['title']}: {sorted(unknown)} are not exported"


def test_prometheus_scrapes_web_workers_and_flower():
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"web", "worker", "flower"} <= jobs.keys()
    worker_names = jobs["worker"]["dns_sd_configs"][0]["names"]
    assert {"worker", "worker_ai"} <= set(worker_names)
    # The API's /metrics and Flower's ask for the scrape token; compose mounts it as a secret.
    for name in ("web", "flower"):
        assert jobs[name]["authorization"] == {
            "type": "Bearer",
            "credentials_file": "/run/secrets/metrics_token",
        }
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["prometheus"]["secrets"] == ["metrics_token"]
    assert compose["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}


def test_compose_monitoring_profile_provisions_the_dashboard():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    mounts = " ".join(services["grafana"]["volumes"])
    assert "./ops/grafana/dashboards" in mounts and "./ops/grafana/provisioning" in mounts
    assert "./ops/prometheus/prometheus.yml" in " ".join(services["prometheus"]["volumes"])
    for name in ("worker", "worker_ai"):
        assert services[name]["environment"]["WORKER_METRICS_PORT"] == "9808"
        assert "scripts.worker_health" in services[name]["healthcheck"]["test"][-1]
