"""Every part of the mesh serves Prometheus metrics on a port of its own, and after a demo run
they show its events: applied by type, batches, the consumer's position, the outbox, the pool."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.deployable import GATEWAY
from services import registry


def _scrape(url: str) -> dict[str, float]:
    """`name{labels}` -> value, for every sample of the exposition."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


@pytest.fixture(scope="module")
def demo_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A demo run left up; what it recorded in .syncmesh/mesh.json (metrics URLs, NATS URL)."""
    folder = tmp_path_factory.mktemp("metrics-demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCMESH_")}
    ports = {v: "0" for v in (GATEWAY.port_variable, *(d.port_variable for d in registry.definitions()))}
    out = folder / "up.out"
    with open(out, "w") as stdout:
        up = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "up", "--demo"],
            cwd=folder,
            env={**env, **ports},
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    try:
        deadline = time.monotonic() + 150
        while "Look one up" not in out.read_text():
            assert up.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2.5)  # one round of the gauges' sampling (every 2 s)
        yield json.loads((folder / ".syncmesh" / "mesh.json").read_text())
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)


@pytest.fixture(scope="module")
def demo_metrics(demo_mesh: dict[str, Any]) -> dict[str, str]:
    """The metrics URL of each part."""
    urls: dict[str, str] = demo_mesh["metrics"]
    return urls


def _matches(pattern: str, subject: str) -> bool:
    """A NATS subject filter (`*` one token, `>` the rest) against a subject."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


def _stream_counts(env: dict[str, str]) -> dict[str, int]:
    """Messages per subject in stream STRIPE: what the gateway accepted from the demo, read as
    the operator identity `up` records for the tools."""
    import asyncio

    import nats

    from services.common.bus import connect_options
    from services.common.settings import load_settings

    settings = load_settings(env, local_mesh=False)

    async def read() -> dict[str, int]:
        nc = await nats.connect(settings.nats_url, **connect_options(settings))
        try:
            info = await nc.jetstream().stream_info("STRIPE", subjects_filter=">")
            return dict(info.state.subjects or {})
        finally:
            await nc.close()

    return asyncio.run(read())


SETTLED = ("applied", "skipped", "duplicate")


@pytest.mark.parametrize("service", registry.names())
def test_each_service_shows_every_demo_event_it_consumed_by_type(demo_mesh: dict[str, Any], service: str) -> None:
    """The issue's done-when: per event type, what the service's metrics say it settled is
    exactly what the demo put on its subjects, and most of it applied (none failed for good)."""
    definition = registry.by_name(service)
    stream = _stream_counts(demo_mesh["env"])
    expected = {
        subject.removeprefix("stripe."): n
        for subject, n in stream.items()
        if any(_matches(f, subject) for f in definition.subjects)
    }
    assert expected, f"the demo put nothing on {service}'s subjects {definition.subjects}: {stream}"
    label = f'service="{service}"'
    deadline = time.monotonic() + 30
    while True:
        samples = _scrape(demo_mesh["metrics"][service])
        seen: dict[str, dict[str, float]] = {}
        for key, value in samples.items():
            match = re.match(r"syncmesh_events_total\{(.*)\}$", key)
            if match and label in key:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
                seen.setdefault(labels["type"], {})[labels["outcome"]] = value
        settled = {t: int(sum(o.get(k, 0) for k in SETTLED)) for t, o in seen.items()}
        if settled == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert settled == expected, f"{service}: settled by type {settled}, the demo sent {expected}"
    assert sum(o.get("applied", 0) for o in seen.values()) > 0, seen
    for event_type, outcomes in seen.items():
        assert not outcomes.get("dead_lettered") and not outcomes.get("undecodable"), (event_type, outcomes)


@pytest.mark.parametrize("service", registry.names())
def test_each_service_counts_the_demo_s_events(demo_metrics: dict[str, str], service: str) -> None:
    samples = _scrape(demo_metrics[service])
    label = f'service="{service}"'
    applied = {k: v for k, v in samples.items() if k.startswith("syncmesh_events_total{") and label in k}
    assert any('outcome="applied"' in k and v > 0 for k, v in applied.items()), applied
    assert samples[f"syncmesh_consumer_batch_size_count{{{label}}}"] > 0
    assert samples[f"syncmesh_consumer_apply_seconds_count{{{label}}}"] > 0
    assert samples[f"syncmesh_consumer_pending{{{label}}}"] == 0  # it kept up
    assert f"syncmesh_consumer_redelivered{{{label}}}" in samples
    assert f"syncmesh_outbox_backlog{{{label}}}" in samples
    assert samples[f"syncmesh_db_pool_size{{{label}}}"] >= 1
    assert f"syncmesh_db_pool_in_use{{{label}}}" in samples


def test_the_gateway_serves_its_metrics_on_a_port_of_its_own(demo_metrics: dict[str, str]) -> None:
    samples = _scrape(demo_metrics["gateway"])
    assert samples['syncmesh_gateway_requests_total{outcome="accepted"}'] > 0


@pytest.mark.unit
def test_one_metrics_port_setting_serves_whichever_part_a_container_runs() -> None:
    from services.common.settings import load_settings

    container = load_settings({"SYNCMESH_METRICS_PORT": "9090"}, local_mesh=False)
    for deployable in (GATEWAY, *(d.deployable for d in registry.definitions())):
        assert deployable.metrics_port(container) == 9090
        assert deployable.metrics_port_setting(container) == "SYNCMESH_METRICS_PORT"
        assert deployable.metrics_port(load_settings({}, local_mesh=False)) is None  # tests: no server
    own = load_settings({"SYNCMESH_METRICS_PORT": "9090", "SYNCMESH_BILLING_METRICS_PORT": "9191"}, local_mesh=False)
    billing = registry.by_name("billing").deployable
    assert billing.metrics_port(own) == 9191 and billing.metrics_port_setting(own) == "SYNCMESH_BILLING_METRICS_PORT"


async def test_a_service_and_the_gateway_outside_up_serve_metrics_on_the_containers_port(settings: Any) -> None:
    """As in a pod (`syncmesh serve`, `syncmesh gateway`): only SYNCMESH_METRICS_PORT is set."""
    import asyncio

    from gateway.app import Gateway
    from services.common.service import ServiceRuntime
    from tests.common import toy_service

    pod = settings.with_overrides(port_overrides={**settings.port_overrides, "SYNCMESH_METRICS_PORT": 0})
    gateway = Gateway(pod, port=0, host="127.0.0.1")
    runtime = ServiceRuntime(toy_service.DEFINITION, pod, port=0, host="127.0.0.1")
    await gateway.start()
    await runtime.start()
    try:
        assert gateway.metrics_server is not None and runtime.metrics_server is not None
        assert gateway.metrics_server.port not in (gateway.port, 0)
        assert runtime.metrics_server.port not in (runtime.port, 0)
        gw = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{gateway.metrics_server.port}/metrics")
        assert 'syncmesh_gateway_requests_total{outcome="accepted"}' in gw
        await runtime.wait_ready(20)
        await asyncio.sleep(0)
        svc = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{runtime.metrics_server.port}/metrics")
        assert any(k.startswith("syncmesh_db_pool_size{") for k in svc), sorted(svc)[:20]
    finally:
        await runtime.stop()
        await gateway.stop()


async def test_the_gauges_are_sampled_when_a_scrape_asks_and_never_in_between() -> None:
    """A mesh nobody scrapes asks NATS and PostgreSQL nothing for its gauges (issue 20: an idle
    mesh within 0.01 of a core; sampled every 2 s they were a fifth of an idle service's work),
    and each scrape reads the values of that moment. The server's thread waits for requests
    without polling, so stopping it must still end it."""
    import asyncio

    from services.common.metrics import MetricsSampler, ServiceMetrics, serve_metrics

    metrics = ServiceMetrics("toy")
    asked: list[int] = []

    async def sample(m: ServiceMetrics) -> None:
        asked.append(1)
        m.outbox_backlog.set(7 * len(asked))

    server = serve_metrics(metrics.registry, 0, "127.0.0.1", refresh=MetricsSampler(metrics, [sample]).refresh)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        await asyncio.sleep(0.05)  # the loop runs meanwhile: nothing samples on its own
        assert asked == []
        first = await asyncio.to_thread(_scrape, url)
        assert first['syncmesh_outbox_backlog{service="toy"}'] == 7
        second = await asyncio.to_thread(_scrape, url)
        assert second['syncmesh_outbox_backlog{service="toy"}'] == 14 and len(asked) == 2
    finally:
        await asyncio.to_thread(server.stop)
    assert not server.thread.is_alive()
