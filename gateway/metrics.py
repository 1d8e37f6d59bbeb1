"""Prometheus metrics for the gateway: requests by outcome (`shed` among them), JetStream publish
latency, and the webhooks in flight.

A registry per application (not the process-global one) so that tests and `syncmesh up`, which
run several apps in one process, never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    OUTCOMES = (
        "accepted",
        "duplicate",
        "bad_signature",
        "malformed",
        "wrong_mode",
        "too_large",
        "timeout",
        "aborted",
        "bad_http",
        "unavailable",
        # Answered 503 + Retry-After at once: SYNCMESH_GATEWAY_MAX_IN_FLIGHT webhooks were being handled.
        "shed",
    )

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "syncmesh_gateway_requests",
            "Webhook requests by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "syncmesh_gateway_publish_seconds",
            "Time from verified webhook to JetStream ack.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "syncmesh_gateway_webhooks_in_flight",
            "Webhooks being read, verified or published (shed past SYNCMESH_GATEWAY_MAX_IN_FLIGHT).",
            registry=self.registry,
        )
        for outcome in self.OUTCOMES:
            self.requests.labels(outcome)
        # The two outcomes of nearly every request, looked up once rather than per request.
        self.accepted = self.requests.labels("accepted")
        self.duplicate = self.requests.labels("duplicate")
