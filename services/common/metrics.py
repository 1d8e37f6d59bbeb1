"""Prometheus metrics for a service: what its consumer did with each event, and how far behind it is.

The questions an on-call engineer asks at night, answered without a shell on the pod: is the
service keeping up (`syncmesh_consumer_pending`, `_redelivered`, `_ack_pending`), what is it
failing on (`syncmesh_events_total{outcome="failed"|"dead_lettered", type=...}`), how big and
how slow are its batches (`syncmesh_consumer_batch_size`, `syncmesh_consumer_apply_seconds`), is
its outbox draining (`syncmesh_outbox_backlog`) and is its database pool exhausted
(`syncmesh_db_pool_in_use` against `_size`).

A registry per service, never the process-global one: `syncmesh up` runs every service in one
process, each on a metrics port of its own (`SYNCMESH_<NAME>_METRICS_PORT`; unset: no metrics
server, 0: a port the OS picks). Counters are bumped by the consumer as it settles messages;
the gauges are sampled every few seconds by `MetricsSampler`, since a scrape (another thread)
cannot query NATS or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

#: Outcomes as the metrics name them (the consumer's `Outcome` values map onto these).
OUTCOMES = ("applied", "skipped", "duplicate", "failed", "waiting", "dead_lettered", "undecodable")


class ServiceMetrics:
    """One service's metrics, in a registry of its own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        labels = {"service": service}
        self.events = Counter(
            "syncmesh_events",
            "Stripe events handled by the consumer, by event type and outcome.",
            ["service", "type", "outcome"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "syncmesh_consumer_batch_size",
            "Messages per fetched batch.",
            ["service"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        ).labels(**labels)
        self.apply_seconds = Histogram(
            "syncmesh_consumer_apply_seconds",
            "Time to apply and commit one batch.",
            ["service"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        ).labels(**labels)

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(name, text, ["service"], registry=self.registry).labels(**labels)

        self.pending = gauge("syncmesh_consumer_pending", "Messages in the stream not yet delivered to the consumer.")
        self.ack_pending = gauge("syncmesh_consumer_ack_pending", "Messages delivered and not yet acknowledged.")
        self.redelivered = gauge("syncmesh_consumer_redelivered", "Messages delivered more than once, unacknowledged.")
        self.outbox_backlog = gauge("syncmesh_outbox_backlog", "Domain events committed but not yet published.")
        self.pool_in_use = gauge("syncmesh_db_pool_in_use", "Database connections checked out of the pool.")
        self.pool_size = gauge("syncmesh_db_pool_size", "Database connections open in the pool.")

    def event(self, event_type: str, outcome: str, count: int = 1) -> None:
        self.events.labels(self.service, event_type or "unknown", outcome).inc(count)


@dataclass
class MetricsServer:
    """The HTTP server of one registry (prometheus_client's, on a thread of its own)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> MetricsServer:
    """Serve `registry` on `port` (0: any free port; see `.port`) at `/metrics`."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)


#: One sample: the gauges' values now (NATS and PostgreSQL queries), set on the metrics.
Sample = Callable[[ServiceMetrics], Awaitable[None]]


class MetricsSampler:
    """Runs each `Sample` every `interval` seconds until cancelled; a failed sample (NATS or the
    database away) leaves the gauges at their last value and is tried again next time."""

    def __init__(self, metrics: ServiceMetrics, samples: list[Sample], interval: float = 2.0) -> None:
        self.metrics = metrics
        self.samples = samples
        self.interval = interval

    async def run(self) -> None:
        while True:
            for sample in self.samples:
                try:
                    await sample(self.metrics)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("metrics sample failed: %s", exc)
            await asyncio.sleep(self.interval)


def pool_sample(pool: Any) -> Sample:
    async def sample(metrics: ServiceMetrics) -> None:
        size = pool.get_size()
        metrics.pool_size.set(size)
        metrics.pool_in_use.set(size - pool.get_idle_size())

    return sample


def outbox_sample(pool: Any) -> Sample:
    async def sample(metrics: ServiceMetrics) -> None:
        backlog = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        metrics.outbox_backlog.set(int(backlog or 0))

    return sample


def consumer_sample(js_info: Callable[[], Awaitable[Any]]) -> Sample:
    """From JetStream's consumer info: pending, ack pending, redelivered."""

    async def sample(metrics: ServiceMetrics) -> None:
        info = await js_info()
        metrics.pending.set(info.num_pending or 0)
        metrics.ack_pending.set(info.num_ack_pending or 0)
        metrics.redelivered.set(info.num_redelivered or 0)

    return sample


__all__ = [
    "OUTCOMES",
    "MetricsSampler",
    "MetricsServer",
    "ServiceMetrics",
    "consumer_sample",
    "outbox_sample",
    "pool_sample",
    "serve_metrics",
]
