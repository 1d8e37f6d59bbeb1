"""Reading a JetStream stream from a point in time to its end, for tools that look back.

The operator tools need to walk history (which Stripe events the STRIPE stream already holds,
what the dead-letter stream contains, which events to replay) without disturbing the
services' durable consumers. Each walk uses its own ephemeral pull consumer with no acks,
kept in memory and deleted afterwards, and stops at the stream's last sequence as it was when
the walk began: a stream that keeps growing cannot make a walk endless.

A message lost between server and client (a fetch that timed out) would leave a silent gap.
The consumer sequence is contiguous, so a jump reveals it; the walk then starts a fresh
consumer just after the last stream sequence it saw, as an ordered consumer does.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.bus import Bus

log = logging.getLogger(__name__)

#: Ephemeral consumers vanish on their own this long after a crashed tool stops pulling.
_INACTIVE_SECONDS = 120.0


@dataclass(frozen=True)
class StreamWindow:
    """What a walk will cover: `pending` messages up to stream sequence `last_sequence`."""

    pending: int
    last_sequence: int


class StreamReader:
    """Walks `stream` (optionally only `subjects`, from `start_time`) in batches of messages."""

    def __init__(
        self,
        bus: Bus,
        stream: str,
        *,
        subjects: Sequence[str] = (),
        start_time: datetime | None = None,
        headers_only: bool = False,
        batch: int = 512,
        fetch_timeout: float = 2.0,
        start_sequence: int | None = None,
        last_sequence: int | None = None,
    ) -> None:
        """`start_sequence` and `last_sequence` bound the walk to a range of stream sequences
        (replay's workers each walk their own part of one window); `start_sequence` overrides
        `start_time`."""
        self.bus = bus
        self.stream = stream
        self.subjects = tuple(subjects)
        self.start_time = start_time
        self.headers_only = headers_only
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.start_sequence = start_sequence
        self.last_sequence = last_sequence
        self._window: StreamWindow | None = None

    async def window(self) -> StreamWindow:
        """How many messages the walk will read (for a progress bar), measured once."""
        if self._window is None:
            info = await self.bus.js.stream_info(self.stream)
            last = int(info.state.last_seq or 0)
            if self.last_sequence is not None:
                last = min(last, self.last_sequence)
            if not info.state.messages:
                self._window = StreamWindow(0, last)
            else:
                name = await self._create_consumer(start_sequence=self.start_sequence)
                try:
                    consumer = await self.bus.js.consumer_info(self.stream, name)
                    self._window = StreamWindow(int(consumer.num_pending or 0), last)
                finally:
                    await self._delete_consumer(name)
        return self._window

    async def batches(self) -> AsyncGenerator[list[Msg], None]:
        """Yield lists of messages in stream order, ending at the window's last sequence."""
        window = await self.window()
        if window.pending == 0:
            return
        resume_after: int | None = None
        while True:
            name = await self._create_consumer(
                start_sequence=self.start_sequence if resume_after is None else resume_after + 1
            )
            psub = await self.bus.js.pull_subscribe_bind(consumer=name, stream=self.stream)
            try:
                info = await self.bus.js.consumer_info(self.stream, name)
                if not info.num_pending:
                    return
                expected_consumer_seq = 1
                gap = False
                while not gap:
                    try:
                        msgs = await psub.fetch(self.batch, timeout=self.fetch_timeout)
                    except TimeoutError:
                        info = await self.bus.js.consumer_info(self.stream, name)
                        if not info.num_pending:
                            return
                        continue
                    out: list[Msg] = []
                    finished = False
                    for msg in msgs:
                        meta = msg.metadata
                        if meta.sequence.consumer != expected_consumer_seq:
                            log.warning(
                                "gap while reading %s (consumer sequence %d, expected %d): restarting after %s",
                                self.stream,
                                meta.sequence.consumer,
                                expected_consumer_seq,
                                resume_after,
                            )
                            gap = True
                            break
                        expected_consumer_seq += 1
                        if meta.sequence.stream > window.last_sequence:
                            finished = True
                            break
                        out.append(msg)
                        resume_after = meta.sequence.stream
                        if meta.sequence.stream == window.last_sequence or meta.num_pending == 0:
                            finished = True
                            break
                    if out:
                        yield out
                    if finished:
                        return
            finally:
                with contextlib.suppress(nats.errors.Error, ValueError):
                    await psub.unsubscribe()
                await self._delete_consumer(name)

    async def first_sequence(self) -> int | None:
        """The stream sequence of the walk's first message (None when it has none): where a
        window that starts at a time, or at the stream's first message, really begins."""
        name = await self._create_consumer(start_sequence=self.start_sequence)
        try:
            psub = await self.bus.js.pull_subscribe_bind(consumer=name, stream=self.stream)
            try:
                msgs = await psub.fetch(1, timeout=self.fetch_timeout)
            except TimeoutError:
                return None
            finally:
                with contextlib.suppress(nats.errors.Error, ValueError):
                    await psub.unsubscribe()
            return int(msgs[0].metadata.sequence.stream) if msgs else None
        finally:
            await self._delete_consumer(name)

    async def _create_consumer(self, *, start_sequence: int | None) -> str:
        name = f"syncmesh-ops-{uuid.uuid4().hex[:12]}"
        start: dict[str, object] = {}
        if start_sequence is not None:
            policy, start["opt_start_seq"] = DeliverPolicy.BY_START_SEQUENCE, start_sequence
        elif self.start_time is not None:
            policy, start["opt_start_time"] = DeliverPolicy.BY_START_TIME, self.start_time
        else:
            policy = DeliverPolicy.ALL
        filters: dict[str, object] = {}
        if len(self.subjects) == 1:
            filters["filter_subject"] = self.subjects[0]
        elif self.subjects:
            filters["filter_subjects"] = list(self.subjects)
        config = ConsumerConfig(
            name=name,
            description="syncmesh operator tool (ephemeral)",
            deliver_policy=policy,
            ack_policy=AckPolicy.NONE,
            headers_only=self.headers_only or None,
            inactive_threshold=_INACTIVE_SECONDS,
            mem_storage=True,
            num_replicas=1,
            **start,  # type: ignore[arg-type]
            **filters,  # type: ignore[arg-type]
        )
        info = await self.bus.js.add_consumer(self.stream, config)
        return str(info.name)

    async def _delete_consumer(self, name: str) -> None:
        try:
            await self.bus.js.delete_consumer(self.stream, name)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.debug("ephemeral consumer %s not deleted (%s); it expires by itself", name, exc)


async def message_ids(
    bus: Bus,
    stream: str,
    *,
    start_time: datetime | None = None,
    subjects: Sequence[str] = (),
    prefix: str = "",
) -> set[str]:
    """Every `Nats-Msg-Id` in `stream` (from `start_time`), optionally only those with `prefix`.

    Reads headers only, so it costs a few dozen bytes per message whatever the payload size.
    """
    seen: set[str] = set()
    reader = StreamReader(bus, stream, subjects=subjects, start_time=start_time, headers_only=True)
    async for batch in reader.batches():
        for msg in batch:
            msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
            if msg_id and msg_id.startswith(prefix):
                seen.add(msg_id)
    return seen
