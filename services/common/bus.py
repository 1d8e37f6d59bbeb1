"""The NATS JetStream bus: one connection, the mesh's streams, and durable publishing.

Streams (provisioned idempotently by every process at start-up, so any one can come first):

    STRIPE           stripe.<event type>        Stripe events as received; the system of record
                                                for replay, kept `stream_max_age_days` (400).
    SYNCMESH_EVENTS  syncmesh.<service>.<event>  domain events the services publish for other teams.
    SYNCMESH_DLQ     dlq.<service>              messages a service gave up on, with the reason.

A publish counts only when JetStream has acked it: that ack is what lets the gateway answer
Stripe 2xx. The connection is opened in the background and re-opened forever, so a process
started before NATS simply reports not-ready until NATS appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig

from services.common.errors import PublishError, SettingsError
from services.common.logs import redact
from services.common.settings import Settings

log = logging.getLogger(__name__)

STRIPE_STREAM = "STRIPE"
EVENTS_STREAM = "SYNCMESH_EVENTS"
DLQ_STREAM = "SYNCMESH_DLQ"
DAY = 86400
#: JetStream's "duplicate message id is in process": another copy is being stored right now.
DUPLICATE_IN_PROCESS = 10158


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_days: int
    description: str


def stream_specs(settings: Settings) -> list[StreamSpec]:
    return [
        StreamSpec(STRIPE_STREAM, ("stripe.>",), settings.stream_max_age_days, "Stripe events as received"),
        StreamSpec(EVENTS_STREAM, ("syncmesh.>",), settings.stream_max_age_days, "Domain events of the mesh"),
        StreamSpec(DLQ_STREAM, ("dlq.>",), settings.stream_max_age_days, "Dead letters, by service"),
    ]


def inbox_prefix(user: str | None) -> str:
    """Where replies to `user` arrive: `_INBOX_<user>`, a prefix no other identity may subscribe
    to. Pull consumers receive their messages and publishers their acks as replies, so on the
    shared `_INBOX.>` any identity could read another's deliveries (SECURITY.md). Anonymous and
    URL-credential connections keep NATS's default `_INBOX`."""
    return f"_INBOX_{user}" if user else "_INBOX"


def connect_options(settings: Settings) -> dict[str, Any]:
    """The identity and TLS arguments of `nats.connect` for these settings.

    Raises SettingsError for what no retry can fix (a TLS file that does not load, an NKEY seed
    without the `nkeys` package), never echoing a password."""
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(settings.nats_user)}
    if settings.nats_user and settings.nats_password:
        options |= {"user": settings.nats_user, "password": settings.nats_password}
    if settings.nats_nkey_seed_file:
        if importlib.util.find_spec("nkeys") is None:
            raise SettingsError(
                "SYNCMESH_NATS_NKEY_SEED_FILE needs the nkeys package (pip install nkeys): "
                "or use SYNCMESH_NATS_USER with SYNCMESH_NATS_PASSWORD_FILE"
            )
        options["nkeys_seed"] = settings.nats_nkey_seed_file
    tls_url = any(u.strip().startswith("tls://") for u in (settings.nats_url or "").split(","))
    if settings.nats_tls_ca_file or settings.nats_tls_cert_file or tls_url:
        try:
            context = ssl.create_default_context(cafile=settings.nats_tls_ca_file)
            if settings.nats_tls_cert_file and settings.nats_tls_key_file:
                context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"the NATS TLS files do not load: {exc}") from None
        options["tls"] = context
    return options


def _same_stream(current: StreamConfig, wanted: StreamConfig) -> bool:
    """Whether a stream already has what the mesh asks of it. Only a change is sent as an
    update: the services' identities may create a missing stream but not change one
    (SECURITY.md), so an unchanged stream must cost them no update."""
    return (
        sorted(current.subjects or []) == sorted(wanted.subjects or [])
        and current.storage == wanted.storage
        and current.num_replicas == wanted.num_replicas
        and current.description == wanted.description
        and round(current.max_age or 0) == round(wanted.max_age or 0)
        and round(current.duplicate_window or 0) == round(wanted.duplicate_window or 0)
    )


class AckInbox(asyncio.Queue[Msg]):
    """This connection's JetStream publish acks: one wildcard subscription, a future per message.

    nats-py's `js.publish` is a request: a reply subject made of a fresh NUID and random hex,
    `asyncio.wait_for` (a task, a timer), the ack queued for its reply subscription's own task,
    which sets the future, and the ack's JSON turned into a PubAck field by field. Measured, that
    was most of what a publish cost the gateway beyond the socket writes (bench/results/
    HISTORY.md, 2026-12-07 20:00-20:52). Here the reply subject is `<inbox>.<counter>`, and the reader
    hands each ack straight to its waiting future: this queue stands in for the subscription's
    message queue, and `put_nowait`, which nats-py's reader calls, resolves the future instead
    of queueing. The queue itself stays empty, so nats-py's drain, unsubscribe and reconnect
    (which re-subscribes every subscription) work on it unchanged. The ack is still awaited:
    nothing about durability changes, only the bookkeeping around it.
    """

    def __init__(self, subject_prefix: str) -> None:
        super().__init__()
        self.prefix = subject_prefix
        self._skip = len(subject_prefix)
        self._tokens = itertools.count()
        self.waiting: dict[str, asyncio.Future[Msg]] = {}

    @classmethod
    async def open(cls, nc: NATS) -> AckInbox | None:
        """Subscribe to `<a new inbox>.*` under the connection's own inbox prefix (an identity may
        read replies only there, SECURITY.md) and route what arrives to the waiting futures.

        None where this nats-py keeps its subscriptions or its outgoing buffer otherwise than
        2.16 does (`fits`): publishes then go through `js.publish`, slower but the same."""
        if not cls.fits(nc):
            return None
        inbox = nc.new_inbox()
        # No byte or message limit: nothing is ever queued, so nothing may count as a slow consumer.
        sub = await nc.subscribe(f"{inbox}.*", pending_msgs_limit=0, pending_bytes_limit=0)
        if not isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue):
            await sub.unsubscribe()
            return None
        acks = cls(f"{inbox}.")
        sub._pending_queue = acks
        return acks

    @staticmethod
    def fits(nc: NATS) -> bool:
        """Whether nc has the private fields the direct path uses (`Bus._send`), as nats-py 2.16 has."""
        return (
            isinstance(getattr(nc, "_pending", None), list)
            and isinstance(getattr(nc, "_pending_data_size", None), int)
            and isinstance(getattr(nc, "stats", None), dict)
            and hasattr(nc, "_transport")
        )

    def expect(self) -> tuple[str, str, asyncio.Future[Msg]]:
        """A token and reply subject for one publish, and the future its ack will resolve."""
        token = str(next(self._tokens))
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self.waiting[token] = future
        return token, self.prefix + token, future

    def forget(self, token: str) -> None:
        self.waiting.pop(token, None)

    def put_nowait(self, item: Msg) -> None:
        future = self.waiting.pop(item.subject[self._skip :], None)
        if future is not None and not future.done():
            future.set_result(item)


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _expire_all(futures: list[asyncio.Future[Msg]]) -> None:
    for future in futures:
        _expire(future)


def _is_ack(msg: Msg) -> bool:
    """Whether JetStream's answer says the message is stored (a duplicate is: the first copy is)."""
    try:
        pub_ack(msg)
    except (ValueError, KeyError, nats.js.errors.Error):
        return False
    return True


def pub_ack(msg: Msg) -> PubAck:
    """JetStream's answer to a publish, as nats-py's `js.publish` reads it; raises as it does."""
    if not msg.data and msg.headers and msg.headers.get("Status") == "503":
        raise nats.js.errors.NoStreamResponseError
    answer = orjson.loads(msg.data)
    if "error" in answer:
        raise nats.js.errors.APIError.from_error(answer["error"])
    return PubAck(
        stream=answer["stream"], seq=answer["seq"], domain=answer.get("domain"), duplicate=answer.get("duplicate")
    )


#: What hpub_command writes as is; anything else goes through nats-py's publish, which checks it.
_PLAIN_SUBJECT = re.compile(r"[A-Za-z0-9_$-]+(?:\.[A-Za-z0-9_$-]+)*")
_PLAIN_HEADER_KEY = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def hpub_command(subject: str, reply: str, headers: dict[str, str], payload: bytes) -> bytes | None:
    """The protocol's HPUB for a message, or None when a subject or header is not plain enough to
    write without nats-py's checks (a wildcard, a space, a line break in a value, an odd key)."""
    if not _PLAIN_SUBJECT.fullmatch(subject):
        return None
    lines = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    if lines.count("\r") != len(headers) or lines.count("\n") != len(headers):
        return None
    if not all(_PLAIN_HEADER_KEY.fullmatch(key) for key in headers):
        return None
    block = f"NATS/1.0\r\n{lines}\r\n".encode()
    size = len(block)
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        reply.encode(),
        size,
        size + len(payload),
        block,
        payload,
    )


async def _cancel(task: asyncio.Task[None], *, within: float = 5.0) -> None:
    """Cancel `task` and wait for it to end.

    nats-py swallows a cancellation that lands while it flushes, and a connect that NATS keeps
    refusing (a wrong password) retries inside nats-py, flushing each time: one cancel may be
    lost (seen as a close that hung), so it is repeated until it takes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.done():
        log.warning("the NATS connect task did not stop within %.0fs", within)
    elif not task.cancelled():
        task.exception()  # retrieved, so an error in it is not reported again at exit


class Bus:
    """A NATS connection that keeps trying, plus the JetStream operations the mesh needs."""

    def __init__(self, settings: Settings, *, name: str) -> None:
        if not settings.nats_url:
            raise ValueError("Bus needs settings.nats_url")
        self.settings = settings
        self.name = name
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._streams_ready = False
        self._closing = False
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._options = connect_options(settings)
        self._refused = False
        self._connecting: NATS | None = None
        self._acks: AckInbox | None = None
        self._write_soon = False

    # -- connection -------------------------------------------------------------------------

    async def start(self, *, wait: float | None = None) -> None:
        """Begin connecting in the background; optionally wait up to `wait` seconds for it."""
        if self._task is None:
            self._task = asyncio.create_task(self._connect_forever(), name=f"nats-connect-{self.name}")
        if wait:
            try:
                await asyncio.wait_for(self._connected.wait(), wait)
            except TimeoutError:
                log.warning("NATS not reachable yet; continuing and retrying in the background")

    async def _connect_forever(self) -> None:
        delay = 0.2
        assert self.settings.nats_url
        while self._nc is None:
            try:
                nc = self._connecting = NATS()
                options: dict[str, Any] = {
                    "servers": self.settings.nats_url.split(","),
                    "name": self.name,
                    "connect_timeout": self.settings.nats_connect_timeout_seconds,
                    "allow_reconnect": True,
                    "max_reconnect_attempts": -1,
                    "reconnect_time_wait": self.settings.nats_reconnect_wait_seconds,
                    "ping_interval": 5,
                    "max_outstanding_pings": 2,
                    "error_cb": self._on_error,
                    "disconnected_cb": self._on_disconnected,
                    "reconnected_cb": self._on_reconnected,
                }
                await nc.connect(**options, **self._options)
                acks = await AckInbox.open(nc)
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                # nats-py leaves the socket of a refused attempt (a bad identity) open: close it,
                # or a retry loop that runs for hours leaks one descriptor per attempt.
                with contextlib.suppress(Exception):
                    await nc.close()
                log.warning("NATS connect failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._acks = acks
            self._nc = nc
            self._js = nc.jetstream(timeout=self.settings.publish_timeout_seconds)
            self._refused = False
            self._connected.set()
            log.info("connected to NATS")
        # A cluster that has just started answers no JetStream request until it has elected its
        # meta leader (about 5 s): expected, so quiet and quick retries first, a warning later.
        waiting_since = asyncio.get_running_loop().time()
        while not self._streams_ready:
            try:
                await self.ensure_streams()
            except (nats.errors.Error, TimeoutError, nats.js.errors.Error) as exc:
                waited = asyncio.get_running_loop().time() - waiting_since
                level = logging.WARNING if waited > 15 else logging.INFO
                reason = str(exc) or type(exc).__name__
                log.log(level, "JetStream streams not ready after %.0fs (%s); retrying", waited, reason)
                await asyncio.sleep(0.25)

    async def _on_error(self, exc: Exception) -> None:
        """A refused identity or a permission violation is an operator's to fix: said once, as a
        warning naming the user (never the password); other errors stay at debug."""
        text = redact(str(exc))
        if "authorization" in text.lower() or "authentication" in text.lower():
            if not self._refused:
                self._refused = True
                who = f"user {self.settings.nats_user!r}" if self.settings.nats_user else "no credentials"
                log.warning(
                    "NATS refused this identity (%s): check SYNCMESH_NATS_USER and SYNCMESH_NATS_PASSWORD_FILE", who
                )
            return
        if "permissions violation" in text.lower():
            log.warning("NATS refused an operation to %s: %s", self.settings.nats_user or "this identity", text)
            return
        log.debug("NATS error: %s", text)

    async def _on_disconnected(self) -> None:
        if self._closing:  # our own drain/close: a deliberate stop, not an outage
            log.debug("disconnected from NATS (closing)")
            return
        log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS")

    async def wait_ready(self, timeout: float) -> None:
        """Wait until connected and the streams exist."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.is_ready():
            if loop.time() > deadline:
                raise TimeoutError("NATS JetStream not ready")
            await asyncio.sleep(0.05)

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise PublishError("not connected to NATS")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise PublishError("not connected to NATS")
        return self._js

    @property
    def identity_refused(self) -> bool:
        """NATS turned this identity away (no, or wrong, credentials) since the last connection."""
        return self._refused

    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def is_ready(self) -> bool:
        return self.is_connected() and self._streams_ready

    async def close(self) -> None:
        """Drain (finish in-flight work, flush publishes) and close."""
        self._closing = True
        if self._task is not None:
            await _cancel(self._task)
        if self._connecting is not None and self._connecting is not self._nc:
            with contextlib.suppress(Exception):  # a connect still being refused: its socket too
                await self._connecting.close()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.drain(), 2)
            except (TimeoutError, nats.errors.Error):
                await self._nc.close()

    # -- streams ----------------------------------------------------------------------------

    async def ensure_streams(self) -> None:
        """Create the streams, or bring their config up to date; safe to run from every process."""
        for spec in stream_specs(self.settings):
            config = StreamConfig(
                name=spec.name,
                description=spec.description,
                subjects=list(spec.subjects),
                storage=StorageType.FILE,
                num_replicas=self.settings.stream_replicas,
                max_age=float(spec.max_age_days * DAY),
                duplicate_window=float(self.settings.stream_duplicate_window_seconds),
            )
            try:
                info = await self.js.stream_info(spec.name)
                if _same_stream(info.config, config):
                    continue
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(config)
                    log.info("created stream %s", spec.name)
                    continue
                except nats.js.errors.BadRequestError:
                    pass  # another process created it first; fall through to the update
            await self.js.update_stream(config)
        self._streams_ready = True

    # -- publishing -------------------------------------------------------------------------

    async def publish_batch(self, messages: list[tuple[str, bytes, str, dict[str, str]]]) -> list[bool]:
        """Publish (subject, payload, msg_id, headers) messages pipelined; which ones JetStream acked.

        Sent in order on the one connection, so the stream stores them in order; their acks are
        awaited together rather than one fsync after another. Through the AckInbox, as `publish`
        (the outbox relay's batch of one, every event at a trickle, cost a task, a timer and a
        JSON decode per message through `js.publish_async`).
        """
        if not messages:
            return []
        if not self.is_connected():
            return [False] * len(messages)
        acks = self._acks
        if acks is None:  # a nats-py whose internals the direct path does not know (AckInbox.fits)
            return await self._publish_batch_async(messages)
        nc = self.nc
        loop = asyncio.get_running_loop()
        sent: list[tuple[str, asyncio.Future[Msg]]] = []
        try:
            for subject, payload, msg_id, headers in messages:
                token, reply, future = acks.expect()
                all_headers = {"Nats-Msg-Id": msg_id, **headers}
                command = hpub_command(subject, reply, all_headers, payload)
                try:
                    if command is None or len(payload) > nc.max_payload or not nc.is_connected:
                        await nc.publish(subject, payload, reply=reply, headers=all_headers)
                    else:
                        self._send(nc, command, loop)
                except BaseException:
                    acks.forget(token)
                    raise
                sent.append((token, future))
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("pipelined publish stopped after %d of %d: %s", len(sent), len(messages), exc)
        timer = loop.call_later(self.settings.publish_timeout_seconds, _expire_all, [f for _, f in sent])
        try:
            answers = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        finally:
            timer.cancel()
            for token, _ in sent:
                acks.forget(token)
        acked = [not isinstance(a, BaseException) and _is_ack(a) for a in answers]
        return acked + [False] * (len(messages) - len(acked))

    async def _publish_batch_async(self, messages: list[tuple[str, bytes, str, dict[str, str]]]) -> list[bool]:
        """`publish_batch` through nats-py's own `js.publish_async`."""
        timeout = self.settings.publish_timeout_seconds
        futures = []
        try:
            for subject, payload, msg_id, headers in messages:
                futures.append(
                    await self.js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id, **headers})
                )
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("pipelined publish stopped after %d of %d: %s", len(futures), len(messages), exc)
        results = await asyncio.gather(*(asyncio.wait_for(f, timeout) for f in futures), return_exceptions=True)
        acked = [not isinstance(r, BaseException) for r in results]
        return acked + [False] * (len(messages) - len(acked))

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> PubAck:
        """Publish and wait for JetStream's ack; PublishError when it cannot be confirmed.

        On a clustered stream, a second copy of a message whose first copy the stream's leader is
        still replicating is refused with "duplicate message id is in process" (10158). The event
        is not lost and the sender (Stripe, retrying the same event) deserves its 2xx once the
        first copy is stored, so the publish is repeated, within the same timeout, until JetStream
        answers for the id: a duplicate ack when the first copy made it, a fresh ack if it did not.
        """
        if not self.is_connected():
            raise PublishError("NATS is not connected")
        all_headers = {"Nats-Msg-Id": msg_id, **(headers or {})}
        budget = timeout or self.settings.publish_timeout_seconds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        pause = 0.005
        while True:
            try:
                return await self._publish_once(subject, payload, all_headers, max(0.01, deadline - loop.time()))
            except nats.js.errors.APIError as exc:
                if exc.err_code != DUPLICATE_IN_PROCESS or loop.time() + pause >= deadline:
                    raise PublishError(f"JetStream did not ack the publish to {subject}: {type(exc).__name__}") from exc
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.1)
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                raise PublishError(f"JetStream did not ack the publish to {subject}: {type(exc).__name__}") from exc

    async def _publish_once(self, subject: str, payload: bytes, headers: dict[str, str], timeout: float) -> PubAck:
        """One publish and its ack (what `js.publish` does, through this connection's AckInbox)."""
        nc, acks = self.nc, self._acks
        if acks is None:  # a nats-py whose internals the direct path does not know (AckInbox.fits)
            return await self.js.publish(subject, payload, timeout=timeout, headers=headers)
        token, reply, future = acks.expect()
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, _expire, future)
        try:
            command = hpub_command(subject, reply, headers, payload)
            if command is None or len(payload) > nc.max_payload or not nc.is_connected:
                await nc.publish(subject, payload, reply=reply, headers=headers)  # nats-py checks and says why
            else:
                self._send(nc, command, loop)
            return pub_ack(await future)
        finally:
            timer.cancel()
            acks.forget(token)

    def _send(self, nc: NATS, command: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Queue a PUB on nats-py's outgoing buffer and write the buffer once this turn of the
        loop is over, as nats-py's flusher task would, without waking a task and a queue per
        message: every publish of one turn still goes out in one write, in order."""
        nc._pending.append(command)
        nc._pending_data_size += len(command)
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(command)
        if not self._write_soon:
            self._write_soon = True
            loop.call_soon(self._write_pending, nc)

    def _write_pending(self, nc: NATS) -> None:
        self._write_soon = False
        transport = nc._transport
        # Disconnected meanwhile: nats-py writes its buffer itself once it has reconnected.
        if nc._pending and nc.is_connected and transport is not None:
            try:
                transport.writelines(nc._pending)
            except OSError as exc:  # the reader sees the broken connection too; the acks time out
                log.debug("NATS write failed: %s", exc)
            nc._pending = []
            nc._pending_data_size = 0
