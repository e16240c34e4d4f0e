"""The loop every stage runs: read a batch from its consumer group, hand it over, repeat.

Around that loop: entries a dead worker left pending are reclaimed (XPENDING + XCLAIM) after
``stages.claim_idle_ms``, and one that has killed ``stages.max_deliveries`` workers goes to the
DLQ instead of killing more; acknowledged entries are trimmed; a lost or refusing Redis is
waited out with backoff and one log line, and lost groups (a Redis restart without persistence)
are created again. Stages queue their writes; the loop sends them with its next read.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import redis

from pipeline import streams
from pipeline.config import StagesConfig
from pipeline.errors import TransientRedisError
from pipeline.metrics import RECLAIMED
from pipeline.streams import Command, Message

log = logging.getLogger("logloom.stage")

# Failures the loop waits out; the entries not yet acknowledged are read again once Redis is back.
REDIS_DOWN_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    TransientRedisError,
    redis.exceptions.ClusterError,  # a cluster down or failing over, past redis-py's retries
    redis.exceptions.SlotNotCoveredError,
)
# Refusals that pass: out of memory, a failed disk write (MISCONF), a replica mid-failover.
REFUSALS_TO_WAIT_OUT = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)
PAUSED_POLL_S = 0.2
REFUSAL_PREFIXES = ("MISCONF", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN")


class Stage(Protocol):
    """What the loop needs of a stage (filter, one sink, ...)."""

    name: str
    group: str
    streams: tuple[str, ...]

    outbox: list[Command]
    """Writes that pass entries on and acknowledge them, queued by the stage; the loop sends
    them with its next read, in the same round trip."""

    overlaps_reads: bool
    """True for a stage that may be handed a batch while the loop's next read is on its way:
    the loop then handles each batch during the round trip that reads the next one."""

    def handle(self, stream: str, messages: list[Message]) -> None:
        """Process one batch read from ``stream``, queueing its writes in ``outbox``."""

    def reject(self, stream: str, messages: list[Message], error: str) -> None:
        """Queue dead letters for ``messages`` and their acknowledgement, unprocessed."""

    def wait_ms(self, block_ms: int) -> int:
        """How long the next read may block (a sink shortens it to meet its flush deadline)."""

    def tick(self) -> None:
        """Called after every read, batch or not: time-based work such as interval flushes,
        and plugin reloads requested at run time."""

    def paused(self) -> bool:
        """True while the stage wants no entries (its plugin is disabled at run time)."""

    def drain(self) -> None:
        """Pass on everything buffered now (a sink flushes); acknowledge what is passed on."""

    def close(self) -> None:
        """Finish: drain, on the way out. Called once."""

    def reset(self) -> None:
        """Drop what is buffered after a Redis error; the loop reads it again."""


@runtime_checkable
class HoldsEntries(Protocol):
    """A stage that may hold entries a long time without coming back to the loop (a sink
    whose destination is down): the loop hands it these two."""

    touch: Callable[[str, list[bytes]], None] | None
    send_outbox: Callable[[], None] | None


def consumer_name() -> str:
    """Unique per process start: a restarted container keeps its hostname and often its pid, and
    a worker never reclaims entries pending under its own name."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class StageLoop:
    """Drives one stage. A batch's writes travel with the next read: one round trip per batch.

    For a stage that ``overlaps_reads`` (filter, sink and direct stages; not the ai stage,
    which waits for RQ), the round trip also overlaps the work: the loop sends the last batch's
    writes and the next read, handles the batch in hand while Redis runs them, then takes the
    reply as its next batch in hand. Python and Redis work side by side, on two cores, instead
    of taking turns; up to two batches more are pending (the one in hand and the one on its
    way, besides what a sink buffers) as their entries await acknowledgement. A read blocks
    only when nothing is in hand, and it travels behind the writes, so writes never wait for
    it; at low load an entry costs one more (non-blocking) round trip than it would without
    the overlap. A stage that pauses gives back the batch in hand (:meth:`_give_back`); one
    that holds entries through an outage keeps those of the read on its way claimed too
    (:meth:`_claim_again`).

    If Redis fails mid-batch, the stage is reset and the loop re-reads this consumer's own
    pending entries (XREADGROUP from ``0``) before new ones: writes that went through acked
    their entries, so only the rest are processed again.
    """

    def __init__(
        self,
        client: redis.Redis,
        stage: Stage,
        settings: StagesConfig,
        batch_size: int,
        consumer: str | None = None,
    ) -> None:
        self.client = client
        self.stage = stage
        self.settings = settings
        self.batch_size = batch_size
        self.consumer = consumer or consumer_name()
        # Where re-reading our own pending entries has got to, per stream; None: read new ones.
        self._own_cursor: dict[str, str] | None = None
        self._in_hand: list[tuple[str, list[Message]]] = []  # read, not handled yet
        self._overlap = stage.overlaps_reads
        self._next_claim = 0.0
        self._next_trim = time.monotonic() + settings.trim_interval_s
        if isinstance(stage, HoldsEntries):
            stage.touch = self._claim_again
            stage.send_outbox = self._send_outbox

    def _claim_again(self, stream: str, ids: list[bytes]) -> None:
        """XCLAIM what this consumer holds of ``stream`` again, JUSTID: the idle time starts
        over and the delivery count stays, so a peer's reclaim leaves entries we still hold
        alone. Without overlapping reads, that is ``ids``.

        With reads overlapping, a stage that holds entries (in :meth:`Stage.handle`) may have
        a read on its way whose entries it does not know yet, though Redis counts them as
        ours: so every entry pending for this consumer is claimed again, those among them.
        """
        if self._overlap:
            ids = streams.own_pending(
                self.client, stream, self.stage.group, self.consumer, len(ids) + 2 * self.batch_size
            )
        if ids:
            self.client.xclaim(
                stream, self.stage.group, self.consumer, 0, list[Any](ids), justid=True
            )

    def ensure_groups(self) -> None:
        for stream in self.stage.streams:
            streams.ensure_group(self.client, stream, self.stage.group)

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set; then send the last writes, close the stage and return."""
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    self.step()
                    backoff = 0.5
                    continue
                except REDIS_DOWN_ERRORS as exc:
                    cause = f"Redis unavailable ({exc})"
                except redis.ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        self._lost_batch()
                        log.warning("Stage %s: consumer group gone (%s); creating it again",
                                    self.stage.name, exc)  # fmt: skip
                        self.ensure_groups()
                        continue
                    if not isinstance(exc, REFUSALS_TO_WAIT_OUT) and not str(exc).startswith(
                        REFUSAL_PREFIXES
                    ):
                        raise
                    cause = f"Redis refused ({type(exc).__name__}: {exc})"
                self._lost_batch()
                log.error("Stage %s: %s; retrying in %.1fs", self.stage.name, cause, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        finally:
            try:
                self.finish()
            except REDIS_DOWN_ERRORS as exc:
                log.error(
                    "Stage %s: could not finish on the way out, Redis unreachable (%s); "
                    "unacknowledged entries will be delivered again",
                    self.stage.name, exc,
                )  # fmt: skip

    def finish(self) -> None:
        """Handle the batch in hand, close the stage (sinks flush) and send its last writes."""
        in_hand, self._in_hand = self._in_hand, []
        self._handle(in_hand)
        self.stage.close()
        self._send_outbox()

    def _lost_batch(self) -> None:
        """Forget what is in hand and queued after a Redis error: it was not acknowledged, so
        re-reading this consumer's pending entries brings it back."""
        self.stage.outbox.clear()
        self.stage.reset()
        self._read_own_again()

    def _give_back(self) -> None:
        """A paused stage takes no entries, so the batch in hand is left pending, to read
        again (from this consumer's pending list) once it resumes; a peer may reclaim it
        meanwhile. A stage pauses with nothing buffered, so the re-read brings back only
        what was in hand."""
        if self._in_hand:
            self._read_own_again()

    def _read_own_again(self) -> None:
        """Drop the batch in hand; the next reads are of this consumer's pending entries."""
        self._in_hand = []
        self._own_cursor = dict.fromkeys(self.stage.streams, "0")

    def _pipeline_with_outbox(self) -> redis.client.Pipeline:
        """A pipeline holding the stage's queued writes, which leave the outbox."""
        pipe = self.client.pipeline(transaction=False)
        for command in self.stage.outbox:
            pipe.execute_command(*command, **streams.route(self.client, command))  # type: ignore[no-untyped-call]
        self.stage.outbox.clear()
        return pipe

    def _send_outbox(self) -> None:
        """Send the stage's queued writes now, in one round trip (reclaims, the last batch, a
        sink holding a batch). If Redis cannot be reached they are queued again, to go with the
        next attempt, unless the loop gives the batch up (:meth:`_lost_batch`)."""
        if self.stage.outbox:
            commands = list(self.stage.outbox)
            try:
                self._pipeline_with_outbox().execute()
            except REDIS_DOWN_ERRORS:
                self.stage.outbox[:0] = commands
                raise

    def step(self) -> None:
        if self.stage.paused():
            self._give_back()
            self._send_outbox()
            self.stage.tick()
            time.sleep(PAUSED_POLL_S)
            return
        now = time.monotonic()
        if now >= self._next_claim:
            self._send_outbox()
            self.ensure_groups()
            self.reclaim()
            self._next_claim = now + self.settings.claim_interval_s
        if now >= self._next_trim:
            for stream in self.stage.streams:
                streams.trim_acknowledged(self.client, stream)
            self._next_trim = now + self.settings.trim_interval_s
        own = self._own_cursor
        in_hand, self._in_hand = self._in_hand, []
        read = streams.read_command(
            self.stage.group,
            self.consumer,
            own or dict.fromkeys(self.stage.streams, ">"),
            self.batch_size,
            None if own or in_hand else self.stage.wait_ms(self.settings.block_ms),
        )
        overlap = self._overlap and own is None
        if overlap:
            key, outbox = self.stage.streams[0], self.stage.outbox
            writes, outbox[:] = streams.split_by_node(self.client, outbox, key)
            self._send_outbox()  # on a cluster, what the partition's node does not serve
            target = streams.node_client(self.client, key)
            replies = streams.exchange(target, [*writes, read], lambda: self._handle(in_hand))
        else:
            pipe = self._pipeline_with_outbox()
            streams.queue_read(pipe, read, streams.read_route(self.client, self.stage.streams[0]))
            replies = pipe.execute(raise_on_error=False)
        *written, reply = replies
        moved = [answer for answer in replies if isinstance(answer, redis.exceptions.AskError)]
        if moved:  # MOVED or ASK (its subclass): the slot has, or is getting, a new home
            streams.refresh_routes(self.client)
            raise TransientRedisError(f"the partition's hash slot moved ({moved[0]})")
        failed = [answer for answer in written if isinstance(answer, Exception)]
        if isinstance(reply, Exception):
            raise reply
        if failed:
            raise TransientRedisError(f"a batch's writes failed ({failed[0]})")
        batches = streams.parse_read(reply)
        if own is not None:
            self._advance_own_cursor(own, batches)
        if overlap:
            self._in_hand = batches
        else:
            self._handle(batches)
        self.stage.tick()

    def _handle(self, batches: list[tuple[str, list[Message]]]) -> None:
        for stream, messages in batches:
            if messages:
                self.stage.handle(stream, messages)

    def _advance_own_cursor(
        self, cursor: dict[str, str], batches: list[tuple[str, list[Message]]]
    ) -> None:
        """Move past what this re-read returned; back to new entries once it returns nothing.

        Entries deleted while pending come back without fields: they are acknowledged.
        """
        found = False
        for stream, messages in batches:
            if not messages:
                continue
            found = True
            cursor[stream] = streams.text(messages[-1][0])
            gone = [message_id for message_id, fields in messages if not fields]
            if gone:
                self.stage.outbox.append(("XACK", stream, self.stage.group, *gone))
                messages[:] = [message for message in messages if message[1]]
        self._own_cursor = cursor if found else None

    def reclaim(self) -> None:
        """Take over what dead workers left, without letting one bad entry take others down.

        XPENDING finds entries idle past ``stages.claim_idle_ms`` held by other consumers (our
        own may just be buffered in a sink) and XCLAIM takes them. Entries delivered once go
        back through the stage as a batch. One delivered more often may be what killed its
        workers: it is handled alone, so only its own delivery count grows, and past
        ``stages.max_deliveries`` it goes to the DLQ.
        """
        limit = self.settings.max_deliveries
        for stream in self.stage.streams:
            while True:
                idle = streams.idle_pending(
                    self.client,
                    stream,
                    self.stage.group,
                    self.settings.claim_idle_ms,
                    self.batch_size,
                    exclude=self.consumer,
                )
                if not idle:
                    break
                poison = [entry_id for entry_id, count in idle if count > limit]
                if poison and (claimed := self._claim(stream, poison)):
                    self.stage.reject(
                        stream,
                        claimed,
                        f"delivered more than {limit} times and never acknowledged "
                        "(it crashed or hung every worker that read it)",
                    )
                    self._send_outbox()
                for entry_id in (entry_id for entry_id, count in idle if 1 < count <= limit):
                    self._handle_reclaimed(stream, self._claim(stream, [entry_id]))
                fresh = [entry_id for entry_id, count in idle if count == 1]
                if fresh:
                    self._handle_reclaimed(stream, self._claim(stream, fresh))
                if len(idle) < self.batch_size:
                    break
            streams.forget_idle_consumers(
                self.client, stream, self.stage.group, 10 * self.settings.claim_idle_ms,
                exclude=self.consumer,
            )  # fmt: skip

    def _claim(self, stream: str, ids: list[bytes]) -> list[Message]:
        return streams.claim(
            self.client, stream, self.stage.group, self.consumer, self.settings.claim_idle_ms, ids
        )

    def _handle_reclaimed(self, stream: str, messages: list[Message]) -> None:
        if not messages:
            return
        RECLAIMED.labels(self.stage.name).inc(len(messages))
        log.info(
            "Stage %s: took over %d entries on %s left by a stopped worker",
            self.stage.name,
            len(messages),
            stream,
        )
        self.stage.handle(stream, messages)
        self.stage.drain()
        self._send_outbox()
