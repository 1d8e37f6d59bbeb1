"""The gateway's HTTP server span: the root of each webhook's trace, made by one middleware.

The OpenTelemetry aiohttp-server instrumentation did this before, at a cost measured at about a
tenth of the gateway's CPU per webhook (bench/results/HISTORY.md, 2026-12-07 20:00-20:52): it builds
its attributes from the parsed URL and every header, records two histograms and an up-down
counter through the metrics API on each request, and looks its configuration up as it goes.
The gateway needs one SERVER span per request, continuing a `traceparent` the sender may have
sent, named and described the way the semantic conventions have it, with the status code at the
end and an error status on a 5xx or an exception; that is all this does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import context, propagate, trace
from opentelemetry.trace import Status, StatusCode

_tracer = trace.get_tracer(__name__)

#: The headers the default propagators start from (tracestate means nothing without traceparent).
_PROPAGATED = ("traceparent", "baggage")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def http_span(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run `handler` inside a SERVER span named `<method> <route>`."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    method = request.method
    headers = request.headers
    # start_span and attach rather than start_as_current_span: the same span made current, without
    # its three layers of generator context managers (a third of a span's cost, measured).
    span = _tracer.start_span(
        f"{method} {route}",
        # Most senders (Stripe) send no trace context: then there is nothing to extract.
        context=propagate.extract(headers) if any(name in headers for name in _PROPAGATED) else None,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": route, "url.path": request.path},
    )
    token = context.attach(trace.set_span_in_context(span))
    try:
        response = await handler(request)
        _status(span, response.status)
        return response
    except web.HTTPException as exc:
        _status(span, exc.status)
        raise
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.record_exception(exc)
        raise
    finally:
        context.detach(token)
        span.end()


def _status(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
