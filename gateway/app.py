"""The webhook gateway: verify, publish durably, and only then say 200.

Stripe stops retrying an event once it gets a 2xx, so 200 is a promise that the event is safe:
it is sent only after JetStream has acked the publish (stored, and with `sync_interval: always`
on disk). Every failure before that point answers so that nothing is half-done:

    400  missing/invalid/oversized signature header, timestamp too old or too far ahead, not
         UTF-8, not JSON, not an event, wrong mode; a body cut short by the client
    408  body not received within SYNCMESH_WEBHOOK_READ_TIMEOUT_SECONDS
    413  body larger than SYNCMESH_MAX_BODY_BYTES
    503  NATS unreachable or no ack in time: Stripe retries, and the retry is deduplicated
    503  shed (with Retry-After): SYNCMESH_GATEWAY_MAX_IN_FLIGHT webhooks are already being
         handled, so this one would only queue; answered at once, nothing published
    200  published (or already in the stream: the same event twice is one message)

The gateway needs NATS only; no webhook waits on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from syncmesh.events.v1 import envelope_pb2

from gateway.deployable import GATEWAY
from gateway.http_span import http_span
from gateway.metrics import GatewayMetrics
from gateway.sweeper import Sweeper
from gateway.verify import verify_event
from services.common.bus import Bus
from services.common.errors import MalformedEventError, PublishError, SettingsError, SignatureError, WrongModeError
from services.common.logs import current_event_id
from services.common.metrics import MetricsServer, serve_metrics
from services.common.publish import publish_event
from services.common.settings import Settings
from services.common.tracing import setup_tracing

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

BUS: web.AppKey[Bus] = web.AppKey("bus", Bus)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)


class InFlight:
    """Webhooks this process is working on (reading, verifying, publishing, awaiting the ack),
    against the shedding limit.

    Past saturation a queue only grows: every request waits longer, times out at the sender,
    and comes back as a retry on top of new ones, so the answered rate collapses instead of
    levelling off (bench/README.md). Refusing the excess at once with 503 + Retry-After keeps
    the rate the process sustains; the 2xx still comes only after the ack, and Stripe redelivers
    what was shed. Counted from the request's first middleware (`shedding`) to its answer, not
    only while a publish awaits its ack: on two cores the gateway saturates its CPU long before
    JetStream, and the queue is then handlers waiting for the event loop (measured: counting
    publishes only, the gateway shed at 2,000/s offered but answered the sheds 11.7 s late, p99).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0


IN_FLIGHT: web.AppKey[InFlight] = web.AppKey("in_flight", InFlight)
WEBHOOK_PATH = "/webhooks/stripe"
#: The two answers of a published webhook, serialised once.
ACCEPTED = json.dumps({"received": True, "duplicate": False}).encode()
DUPLICATE = json.dumps({"received": True, "duplicate": True}).encode()
#: Seconds a shed sender is asked to wait; Stripe uses its own schedule, other senders honour it.
SHED_RETRY_AFTER = "1"
SHED_BODY = json.dumps({"error": "gateway saturated, retry later"}).encode()
#: Connections the kernel may hold accepted for the gateway before its loop takes them (aiohttp's
#: default is 128; Linux caps it at net.core.somaxconn, 4096 by default). Past saturation a sender
#: opens connections faster than a busy loop accepts them; past the backlog the kernel drops the
#: handshake and the client retries it only after a second (then 3 s, 7 s...), so a webhook that
#: would have been shed in milliseconds waits seconds or times out before the gateway sees it
#: (measured: bench/results/HISTORY.md, 2026-12-07 23:00-00:20).
LISTEN_BACKLOG = 2048


def _refuse(metrics: GatewayMetrics, outcome: str, status: int, reason: str) -> web.Response:
    metrics.requests.labels(outcome).inc()
    return web.json_response({"error": reason}, status=status)


def shedding(in_flight: InFlight, metrics: GatewayMetrics) -> Any:
    """The outermost middleware: past the limit a webhook is answered 503 before anything else
    is done for it, not even its HTTP span.

    Past saturation the sheds outnumber the webhooks handled, and every microsecond a shed costs
    is taken from the admitted ones on the same core: at twice the sustained rate, a shed costing
    a fifth of an admitted webhook leaves a quarter of the rate unanswered (bench/README.md). So
    the shed answer is built from constants, and no span is made for it (the `shed` outcome in
    /metrics counts them; a trace of a request refused unread would hold nothing). Only webhooks
    are counted and shed: health and /metrics answer whatever the load.
    """
    shed_count = metrics.requests.labels("shed")
    shed_headers = {"Retry-After": SHED_RETRY_AFTER}

    @web.middleware
    async def shed(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.match_info.handler is not receive_webhook:
            return await handler(request)  # type: ignore[no-any-return]
        if in_flight.count >= in_flight.limit:
            shed_count.inc()
            return web.Response(body=SHED_BODY, status=503, content_type="application/json", headers=shed_headers)
        in_flight.count += 1
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            in_flight.count -= 1

    return shed


async def receive_webhook(request: web.Request) -> web.Response:
    """A webhook admitted by `shedding` (which counts it in flight until its answer)."""
    return await _receive(request, request.app[METRICS])


async def _receive(request: web.Request, metrics: GatewayMetrics) -> web.Response:
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return _refuse(metrics, "too_large", 413, f"body larger than {settings.max_body_bytes} bytes")
    try:
        # A public endpoint bounds how long a body may take: a client trickling one byte every
        # few seconds would otherwise hold a connection (and its memory) for as long as it likes.
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the read as a task of its own.
        async with asyncio.timeout(settings.webhook_read_timeout_seconds):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _refuse(metrics, "too_large", 413, f"body larger than {settings.max_body_bytes} bytes")
    except TimeoutError:
        return _refuse(metrics, "timeout", 408, f"body not received within {settings.webhook_read_timeout_seconds:g}s")
    except (ConnectionError, HttpProcessingError):
        # The client went away mid-body: nothing to answer, nothing to log beyond the count.
        return _refuse(metrics, "aborted", 400, "request body incomplete")
    try:
        event = verify_event(
            body,
            request.headers.get("Stripe-Signature"),
            secrets=settings.webhook_secrets,
            tolerance=settings.webhook_tolerance_seconds,
            mode=settings.mode,
        )
    except SignatureError as exc:
        return _refuse(metrics, "bad_signature", 400, str(exc))
    except MalformedEventError as exc:
        return _refuse(metrics, "malformed", 400, str(exc))
    except WrongModeError as exc:
        return _refuse(metrics, "wrong_mode", 400, str(exc))

    token = current_event_id.set(event.id)
    started = time.perf_counter()
    try:
        duplicate = await publish_event(request.app[BUS], event, source=envelope_pb2.EVENT_SOURCE_WEBHOOK)
    except PublishError as exc:
        log.warning("event not accepted, Stripe will retry: %s", exc)
        return _refuse(metrics, "unavailable", 503, "event bus unavailable, retry later")
    finally:
        current_event_id.reset(token)
    metrics.publish_seconds.observe(time.perf_counter() - started)
    if duplicate:
        metrics.duplicate.inc()
        return web.Response(body=DUPLICATE, content_type="application/json")
    metrics.accepted.inc()
    return web.Response(body=ACCEPTED, content_type="application/json")


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[BUS].is_ready():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready", "reason": "NATS not connected or stream missing"}, status=503)


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class ClientErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, with a stranger's malformed HTTP counted instead of dumped.

    aiohttp answers a request it cannot parse (a header line over 8 KB, a broken request line)
    with a 400 itself, then logs it at ERROR with a full traceback: on a public endpoint anyone
    can fill the log, and the on-call engineer's alerts, that way. Such a request is the
    client's error, so it becomes one line at INFO and the `bad_http` outcome in /metrics; any
    other exception aiohttp reports is still logged whole.
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__(logging.getLogger("gateway.http"), {})
        self.metrics = metrics

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            self.metrics.requests.labels("bad_http").inc()
            self.logger.info("refused malformed HTTP (%s): %s", exc.code, str(exc.message)[:200])
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


def create_app(settings: Settings, bus: Bus) -> web.Application:
    # client_max_size makes aiohttp itself refuse larger bodies, also when chunked.
    setup_tracing("syncmesh-gateway")
    metrics = GatewayMetrics()
    in_flight = InFlight(settings.gateway_max_in_flight)
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[shedding(in_flight, metrics), http_span]
    )
    app[SETTINGS] = settings
    app[BUS] = bus
    app[METRICS] = metrics
    app[IN_FLIGHT] = in_flight
    metrics.in_flight.set_function(lambda: in_flight.count)
    app.router.add_post(WEBHOOK_PATH, receive_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


class Gateway:
    """The gateway process: NATS connection + HTTP server, started and stopped as one."""

    def __init__(self, settings: Settings, *, port: int | None = None, host: str = "0.0.0.0") -> None:
        self.settings = GATEWAY.require(settings)
        self.port = GATEWAY.port(settings) if port is None else port
        self.host = host
        self.bus = Bus(settings, name="syncmesh-gateway")
        self.app = create_app(self.settings, self.bus)
        self._runner: web.AppRunner | None = None
        # Catches what webhooks missed (endpoint down longer than Stripe retried, a 4xx by mistake)
        # from Stripe's Events API; off unless a Stripe key is configured.
        self.sweeper = Sweeper.from_settings(self.settings, self.bus)
        self._sweep_task: asyncio.Task[None] | None = None
        self.metrics_server: MetricsServer | None = None

    async def start(self) -> None:
        await self.bus.start(wait=2.0)
        if self.sweeper is not None:
            self._sweep_task = asyncio.create_task(self.sweeper.run(), name="gateway-sweeper")
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            shutdown_timeout=self.settings.shutdown_grace_seconds,
            logger=ClientErrorLog(self.app[METRICS]),
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=LISTEN_BACKLOG)
        await site.start()
        if self.port == 0 and self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        log.info("gateway listening on %s:%d", self.host, self.port)
        # /metrics on a port of its own too (SYNCMESH_GATEWAY_METRICS_PORT, or SYNCMESH_METRICS_PORT in a
        # container), so scraping does not
        # share the public webhook listener; the webhook port keeps /metrics for compatibility.
        metrics_port = GATEWAY.metrics_port(self.settings)
        if metrics_port is not None:
            try:
                self.metrics_server = serve_metrics(self.app[METRICS].registry, metrics_port, self.host)
            except OSError as exc:
                raise SettingsError(
                    f"cannot serve the gateway's metrics on port {metrics_port} "
                    f"({GATEWAY.metrics_port_setting(self.settings)}): {exc.strerror}"
                ) from None
            log.info("gateway metrics on %s:%d/metrics", self.host, self.metrics_server.port)

    async def stop(self) -> None:
        if self.sweeper is not None:
            await self.sweeper.stop()  # abandons a sweep in flight; the next start sweeps again
        if self._sweep_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweep_task
        if self._runner is not None:
            await self._runner.cleanup()  # stops accepting, lets in-flight requests finish
        await self.bus.close()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
            self.metrics_server = None


def serve(settings: Settings, *, port: int | None = None) -> None:
    """Run the gateway until SIGTERM or SIGINT: `syncmesh gateway` and `python -m gateway`.

    The gateway is aiohttp + nats-py only, both at home on uvloop, which cuts the CPU each
    webhook costs; gRPC services stay on asyncio, whose loop grpc.aio is built and tested for.
    Its garbage collector is tuned as a service's is (`tune_gc`): a webhook's objects die by
    reference counting, and the imported modules are frozen out of every collection.
    """
    import uvloop

    from services.common.logs import setup_logging
    from services.common.service import run_until_signalled, tune_gc

    setup_logging(settings.log_level)
    tune_gc()
    gateway = Gateway(settings, port=port)
    uvloop.run(run_until_signalled(gateway.start, gateway.stop))
