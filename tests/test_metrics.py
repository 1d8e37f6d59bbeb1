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
def demo_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A demo run left up; the metrics URL of each part, from .syncmesh/mesh.json."""
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
        yield json.loads((folder / ".syncmesh" / "mesh.json").read_text())["metrics"]
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)


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
