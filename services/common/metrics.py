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
the gauges (NATS's consumer info, the outbox's backlog) are sampled when a scrape asks for them:
the scrape's thread has the event loop run `MetricsSampler.refresh` and waits for it, so a mesh
nobody scrapes asks NATS and PostgreSQL nothing (sampled every 2 s, they were a fifth of an idle
service's work), and a scrape reads values of that moment.

The HTTP server's thread blocks in `select` until a request comes, where prometheus_client's
wakes every half second to look for a shutdown request: stopping it pokes its socket instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler

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
        """Stop serving: `shutdown` is seen once `select` returns, so the socket is poked until it is."""
        stopper = threading.Thread(target=self.server.shutdown, daemon=True)
        stopper.start()
        while stopper.is_alive():
            self._poke()
            stopper.join(0.05)
        self.server.server_close()
        self.thread.join(5)

    def _poke(self) -> None:
        host = str(self.server.server_address[0])
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        with contextlib.suppress(OSError), socket.create_connection((host, self.port), timeout=0.5):
            pass


#: How long a scrape waits for the gauges' sample before it serves the values it has.
REFRESH_TIMEOUT_SECONDS = 2.0


def serve_metrics(
    registry: CollectorRegistry,
    port: int,
    host: str = "0.0.0.0",
    *,
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> MetricsServer:
    """Serve `registry` on `port` (0: any free port; see `.port`) at `/metrics`; with `refresh`,
    each scrape first has the running event loop await it (the gauges' sample)."""
    app = make_wsgi_app(registry)
    if refresh is not None:
        app = _refreshing(app, refresh, asyncio.get_running_loop())

    class Server(ThreadingWSGIServer):
        """prometheus_client's server, with the address family of `host`."""

    Server.address_family, addr = _get_best_family(host, port)  # type: ignore[no-untyped-call]
    server = make_server(addr, port, app, Server, handler_class=_SilentHandler)
    # poll_interval None: no wake-up until a request (or `stop`'s poke) comes.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": None}, daemon=True)
    thread.start()
    return MetricsServer(server, thread)


def _refreshing(app: Any, refresh: Callable[[], Awaitable[None]], loop: asyncio.AbstractEventLoop) -> Any:
    """`app`, after `refresh()` has run on `loop` (or failed, or taken too long: the gauges then
    keep their last values, as a failed sample does)."""

    async def run() -> None:
        await refresh()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            asyncio.run_coroutine_threadsafe(run(), loop).result(REFRESH_TIMEOUT_SECONDS)
        except Exception as exc:  # a closed loop, a timeout: serve what there is
            log.debug("metrics refresh failed: %s", exc)
        return app(environ, start_response)  # type: ignore[no-any-return]

    return wrapped


#: One sample: the gauges' values now (NATS and PostgreSQL queries), set on the metrics.
Sample = Callable[[ServiceMetrics], Awaitable[None]]


class MetricsSampler:
    """Runs each `Sample` when a scrape asks (`refresh`); a failed sample (NATS or the database
    away) leaves the gauges at their last value and is tried again at the next scrape."""

    def __init__(self, metrics: ServiceMetrics, samples: list[Sample]) -> None:
        self.metrics = metrics
        self.samples = samples
        #: Scrapes that arrive together share one sample rather than querying once each.
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        if self._lock.locked():
            async with self._lock:  # the sample under way is fresh enough
                return
        async with self._lock:
            for sample in self.samples:
                try:
                    await sample(self.metrics)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("metrics sample failed: %s", exc)


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
