"""Metrics in Kubernetes: every pod serves them on a port of its own, Prometheus scrapes each
Deployment through a PodMonitor, the network policies let it (and only it) in, and the Grafana
dashboard asks for metrics the code exports.

The dashboard check reads the metric names from the code's own registries
(services/common/metrics.py, gateway/metrics.py), so renaming a metric without the dashboard
fails here rather than leaving an empty panel on the night it is needed.
"""

from __future__ import annotations

import json
import re

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from services.common.metrics import ServiceMetrics

from .k8s_support import (
    DEPLOYABLES,
    K8S,
    METRICS_PORT,
    OVERLAYS,
    by_name,
    container_env,
    deployment,
    main_container,
    of_kind,
    render,
    selector_matches,
)
from .test_k8s_manifests import _settings_for

DASHBOARD = K8S / "components" / "monitoring" / "dashboards" / "syncmesh.json"
#: What the dashboard must show (the issue's list): each metric family, by the name it is exported as.
MUST_SHOW = (
    "syncmesh_events",
    "syncmesh_consumer_pending",
    "syncmesh_consumer_redelivered",
    "syncmesh_consumer_batch_size",
    "syncmesh_consumer_apply_seconds",
    "syncmesh_outbox_backlog",
    "syncmesh_db_pool_in_use",
    "syncmesh_gateway_requests",
)
#: The outcomes the events panels must each break out, by type.
MUST_BREAK_OUT = ("applied", "skipped", "failed", "dead_lettered")
METRIC_NAME = re.compile(r"\b(syncmesh_[a-z0-9_]+)\b")
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}


def exported() -> dict[str, str]:
    """Every series name the code's registries can export -> the family it belongs to."""
    names: dict[str, str] = {}
    registries: list[CollectorRegistry] = [ServiceMetrics("any").registry, GatewayMetrics().registry]
    for registry in registries:
        for family in registry.collect():
            for suffix in _SUFFIXES[family.type]:
                names[family.name + suffix] = family.name
    return names


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for panel in dash["panels"] for t in panel.get("targets", [])]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_serves_metrics_on_a_declared_port_of_its_own(overlay: str) -> None:
    objs = render(f"overlays/{overlay}")
    for name, facts in DEPLOYABLES.items():
        container = main_container(deployment(objs, name))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("metrics") == METRICS_PORT, f"{name}: no container port `metrics` ({ports})"
        settings, env = _settings_for(objs, name)
        assert facts.metrics_port(settings) == METRICS_PORT, (
            f"{name}: the container's settings ({env.get('SYNCMESH_METRICS_PORT')!r}) do not serve metrics on "
            f"{METRICS_PORT}"
        )
        assert facts.port(settings) != METRICS_PORT, f"{name}: metrics share its serving port"


def test_prod_scrapes_every_deployment_through_a_pod_monitor() -> None:
    objs = render("overlays/prod")
    monitors = of_kind(objs, "PodMonitor")
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["namespace"] == "syncmesh"
        assert monitor["spec"]["podMetricsEndpoints"], f"{monitor['metadata']['name']}: no endpoint"
    for name in DEPLOYABLES:
        dep = deployment(objs, name)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        ports = {p["name"] for p in main_container(dep)["ports"]}
        scraping = [m for m in monitors if selector_matches(m["spec"]["selector"], labels)]
        assert scraping, f"{name}: no PodMonitor selects its pods"
        for monitor in scraping:
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert endpoint.get("port") == "metrics" and "metrics" in ports, (
                    f"{monitor['metadata']['name']} scrapes port {endpoint.get('port')!r} of {name}"
                )
                assert endpoint.get("path", "/metrics") == "/metrics"


def test_prometheus_reaches_the_metrics_port_and_nothing_else() -> None:
    objs = render("overlays/prod")
    policies = [p for p in of_kind(objs, "NetworkPolicy") if "Ingress" in p["spec"].get("policyTypes", [])]
    for name in DEPLOYABLES:
        labels = deployment(objs, name)["spec"]["template"]["metadata"]["labels"]
        from_monitoring: set[int] = set()
        for policy in policies:
            if not selector_matches(policy["spec"]["podSelector"], labels):
                continue
            for rule in policy["spec"].get("ingress") or []:
                if any(
                    (f.get("namespaceSelector") or {}).get("matchLabels", {}).get("syncmesh.io/monitoring") == "true"
                    for f in rule.get("from") or []
                ):
                    from_monitoring |= {p["port"] for p in rule["ports"]}
        assert from_monitoring == {METRICS_PORT}, f"{name}: the monitoring namespace reaches {from_monitoring}"


def test_the_dashboard_ships_in_prod_as_grafana_reads_it() -> None:
    config_maps = by_name(render("overlays/prod"), "ConfigMap")
    cm = config_maps["syncmesh-grafana-dashboard"]
    assert cm["metadata"]["labels"].get("grafana_dashboard") == "1"
    assert json.loads(cm["data"]["syncmesh.json"]) == json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_the_dashboards_queries_name_only_metrics_the_code_exports() -> None:
    names = exported()
    queries = dashboard_queries()
    assert queries, "the dashboard has no queries"
    for expr in queries:
        for metric in METRIC_NAME.findall(expr):
            assert metric in names, (
                f"the dashboard asks for {metric}, which the code does not export (renamed?): {expr}\n"
                f"exported: {', '.join(sorted(names))}"
            )


def test_the_dashboard_shows_what_on_call_needs() -> None:
    names = exported()
    shown = {names[m] for expr in dashboard_queries() for m in METRIC_NAME.findall(expr) if m in names}
    missing = [family for family in MUST_SHOW if family not in shown]
    assert not missing, f"the dashboard has no panel for {missing}"
    events = [e for e in dashboard_queries() if "syncmesh_events_total" in e]
    for outcome in MUST_BREAK_OUT:
        assert any(outcome in e and "type" in e for e in events), f"no panel of {outcome} events by type"


def test_a_renamed_metric_fails_the_dashboard_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: the same dashboard against a registry where one metric was renamed."""
    original = ServiceMetrics.__init__

    def renamed(self: ServiceMetrics, service: str) -> None:
        original(self, service)
        self.registry.unregister(self.registry._names_to_collectors["syncmesh_outbox_backlog"])

    monkeypatch.setattr(ServiceMetrics, "__init__", renamed)
    with pytest.raises(AssertionError, match="syncmesh_outbox_backlog"):
        test_the_dashboards_queries_name_only_metrics_the_code_exports()


def test_metrics_env_reaches_every_container() -> None:
    """The port is the ConfigMap's SYNCMESH_METRICS_PORT, not a per-Deployment copy that could drift."""
    objs = render("overlays/prod")
    for name in DEPLOYABLES:
        env = container_env(objs, main_container(deployment(objs, name)))
        assert env.get("SYNCMESH_METRICS_PORT") == str(METRICS_PORT), f"{name}: {env.get('SYNCMESH_METRICS_PORT')}"
