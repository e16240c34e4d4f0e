"""One sink's stage: its own consumer group on the filtered stream, a buffer, batched flushes.

Every sink reads through its own group (``sink:<name>``) in its own thread, so a slow or failing
sink never holds back another. Entries are flushed when ``sink.batch_size`` are buffered or the
oldest has waited ``sink.flush_interval_ms``. The stage, not the plugin, owns retries: a failed
flush is retried with exponential backoff for the entries that failed, and after
``sink.retry.max_attempts`` they go to the sink DLQ. A sink that says its destination is down
(a Python sink raising ``ConnectionError``/``TimeoutError``; see :class:`~pipeline.plugin.Failure`)
spends no attempts: its entries wait, pending in order, and are retried with backoff until it is
back; so does a sink whose circuit breaker is open. An entry is acknowledged only once the sink
has it or the DLQ does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from pipeline import dlq, outputs
from pipeline.config import Config
from pipeline.entry import Entry, decode_batch, original_json, with_stream_id
from pipeline.health import GuardedPlugin
from pipeline.keys import Keys
from pipeline.metrics import (
    BATCH_SIZE,
    DEAD_LETTERS,
    ENTRIES_IN,
    ENTRIES_OUT,
    PLUGIN_ERRORS,
    SINK_RETRIES,
)
from pipeline.plugin import Failure
from pipeline.streams import Command, Message, forward_and_ack
from pipeline.tap import TapSwitch

log = logging.getLogger("logloom.sink")


@dataclass(slots=True)
class Buffered:
    stream: str
    id: bytes
    entry: Entry
    payload: bytes


def delivery_error(result: object) -> str | None:
    """None if a sink's answer means delivered (0), else the reason it was not."""
    if type(result) is int and result == 0:
        return None
    if isinstance(result, Failure):
        return result.error
    return outputs.check(result, "sink") or "not a sink's answer"


class SinkStage:
    def __init__(
        self,
        config: Config,
        plugin: GuardedPlugin,
        stop: threading.Event,
        tap: TapSwitch | None = None,
        keys: Keys | None = None,
        direct: bool = False,
    ) -> None:
        """``keys``: the partition this stage reads (see :meth:`Keys.partitions`); ``direct``:
        the sink of a direct stage, which reads the ingest stream instead of the filtered one."""
        keys = keys or config.keys
        self.plugin = plugin
        self.stop = stop
        self.keys = keys
        if direct:  # fed by pipeline.stages.direct from the ingest stream, through its group
            self.name, self.group = f"direct:{plugin.name}", keys.direct_group(plugin.name)
            source = keys.ingest
        else:
            self.name, self.group = f"sink:{plugin.name}", keys.sink_group(plugin.name)
            source = keys.filtered
        # The loop reads the next batch while this one is buffered and flushed; when the sink
        # is disabled it gives back what it has read, and while a flush holds a batch it keeps
        # everything pending for it claimed (runner.StageLoop).
        self.overlaps_reads = True
        self.streams: tuple[str, ...] = (source, keys.sink_replay(plugin.name))
        self.max_entry_bytes = config.ingest.max_entry_bytes
        self.batch_size = config.sink.batch_size
        self.interval_s = config.sink.flush_interval_ms / 1000
        self.retry = config.sink.retry
        self.buffer: list[Buffered] = []
        self.outbox: list[Command] = []
        self.deadline: float | None = None
        self.outage_since: float | None = None  # the destination said it is down, since when
        self.tap = tap
        # Entry.id, the key sinks deduplicate by, must be unique among everything any worker of
        # this sink reads: partitions' streams number their entries independently.
        partition = "" if keys.partition is None else f"p{keys.partition}/"
        self.id_prefixes = {
            self.streams[0]: f"{partition}ingest/" if direct else partition,
            self.streams[1]: f"{partition}replay/",
        }
        # Set by the stage loop, for a batch held through a long outage: ``touch`` claims
        # entries for this consumer again (XCLAIM JUSTID) so they do not look abandoned to the
        # other workers; ``send_outbox`` sends the acks and dead letters queued meanwhile.
        self.touch: Callable[[str, list[bytes]], None] | None = None
        self.send_outbox: Callable[[], None] | None = None
        self.touch_every_s = config.stages.claim_idle_ms / 3000
        self._touched = time.monotonic()

    def handle(self, stream: str, messages: list[Message]) -> None:
        """Decode and buffer; flush when a batch is full."""
        decoded, malformed = decode_batch(messages, self.max_entry_bytes)
        ENTRIES_IN.labels(self.name).inc(len(messages))
        for message_id, fields, error in malformed:
            self.reject(
                stream, [(message_id, dict(fields))], f"undecodable entry on {stream}: {error}"
            )
        self.take(stream, decoded)

    def take(self, stream: str, decoded: list[tuple[bytes, Entry, bytes]]) -> None:
        """Buffer entries read from ``stream`` as ``(stream ID, entry, its JSON)``; flush when a
        batch is full. Each is acknowledged on ``stream`` once delivered or dead-lettered."""
        prefix = self.id_prefixes[stream]
        self.buffer += [
            Buffered(stream, message_id, with_stream_id(entry, message_id, prefix), payload)
            for message_id, entry, payload in decoded
        ]
        if self.buffer and self.deadline is None:
            self.deadline = time.monotonic() + self.interval_s
        while len(self.buffer) >= self.batch_size:
            self.flush()

    def wait_ms(self, block_ms: int) -> int:
        if self.deadline is None:
            return block_ms
        remaining = int((self.deadline - time.monotonic()) * 1000)
        return max(1, min(block_ms, remaining))

    def paused(self) -> bool:
        """A sink disabled at run time reads nothing more; its entries wait in its group."""
        return not self.plugin.enabled and not self.buffer

    def tick(self) -> None:
        self.plugin.apply_pending()
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.flush()

    def drain(self) -> None:
        while self.buffer:
            self.flush()

    def close(self) -> None:
        self.drain()

    def reset(self) -> None:
        """Forget the buffer after a Redis error: its entries are still in our pending list, and
        the loop reads that again (they may be delivered twice; never lost)."""
        self.buffer = []
        self.deadline = None

    def flush(self) -> None:
        """Deliver up to one batch from the buffer, retrying what fails; see the module doc."""
        batch, self.buffer = self.buffer[: self.batch_size], self.buffer[self.batch_size :]
        self.deadline = time.monotonic() + self.interval_s if self.buffer else None
        BATCH_SIZE.labels(self.name).observe(len(batch))
        delay_s = self.retry.backoff_initial_ms / 1000
        attempt = 0
        held = False  # the destination said it is down: later calls are retries of this batch
        while attempt < self.retry.max_attempts:
            if self._wait_out_open_circuit():
                return
            attempt += 1
            started = time.perf_counter()
            retry = attempt > 1 or held  # a retry counts toward the breaker only half-open
            results = self.plugin.call_batch([one.entry for one in batch], retry=retry)
            self._record(batch, results, time.perf_counter() - started)
            failed: list[tuple[Buffered, str]] = []
            delivered = []
            unavailable: list[Buffered] = []  # failures the destination's outage explains
            for one, result in zip(batch, results, strict=True):
                error = delivery_error(result)
                if error is None:
                    delivered.append(one)
                    continue
                failed.append((one, error))
                if isinstance(result, Failure) and result.unavailable:
                    unavailable.append(one)
            self._acknowledge(delivered)
            if not failed:
                self._outage_over()
                return
            PLUGIN_ERRORS.labels(self.plugin.name, self.plugin.info.type).inc(len(failed))
            cause = failed[0][1]
            if len(unavailable) == len(failed):
                attempt -= 1  # the entries wait for the destination, in order, and no DLQ
                held = True
                self._outage(cause, len(failed))
            elif self.plugin.state == "open":
                attempt -= 1  # the breaker holds the batch: no attempt spent while it is open
            elif attempt == self.retry.max_attempts:
                # Only the entries blamed for it go; those the outage explains keep waiting.
                waiting = set(map(id, unavailable))
                self._dead_letter([f for f in failed if id(f[0]) not in waiting], attempt)
                if not unavailable:
                    return
                failed = [f for f in failed if id(f[0]) in waiting]
                attempt -= 1
                held = True
                self._outage(failed[0][1], len(failed))
            if held:
                self._while_held([one for one, _ in failed])
            if attempt == 1 and not held and self.plugin.state != "open":
                log.warning(
                    "Sink '%s': flush of %d entries failed: %s; retrying up to %d times",
                    self.plugin.name,
                    len(failed),
                    cause,
                    self.retry.max_attempts - 1,
                )
            if self.stop.wait(delay_s):
                log.warning(
                    "Sink '%s': stopping with %d entries undelivered; they stay pending "
                    "for the next worker",
                    self.plugin.name,
                    len(failed),
                )
                return
            SINK_RETRIES.labels(self.plugin.name).inc()
            delay_s = min(delay_s * 2, self.retry.backoff_max_ms / 1000)
            batch = [one for one, _ in failed]

    def _while_held(self, batch: list[Buffered]) -> None:
        """While a batch waits for its destination: send what is queued (the acks of what got
        through, the dead letters of entries blamed for their own failure), and reset the idle
        time of what this worker holds (the batch and the rest of its buffer) before another
        worker's reclaim would take it for a dead worker's."""
        try:
            if self.outbox and self.send_outbox is not None:
                self.send_outbox()
            now = time.monotonic()
            if self.touch is None or now - self._touched < self.touch_every_s:
                return
            self._touched = now
            held = batch + self.buffer
            for stream in self.streams:  # each: the loop's read on its way may hold entries of any
                self.touch(stream, [one.id for one in held if one.stream == stream])
        except redis.RedisError as exc:  # Redis down too: the stage loop deals with that later
            log.debug("Sink '%s': while holding a batch: %s", self.name, exc)

    def _record(self, batch: list[Buffered], results: list[object], seconds: float) -> None:
        """A tap record of this flush attempt, if a tap asks for this sink (pipeline.tap)."""
        if self.tap is None or not self.tap.on(self.name):
            return
        recorder = self.tap.recorder(
            self.name, [one.id for one in batch], [one.entry for one in batch]
        )
        if recorder is not None:
            labels = [
                "delivered" if (error := delivery_error(r)) is None else f"error: {error}"
                for r in results
            ]
            recorder.plugin_call(self.plugin.name, range(len(batch)), labels, seconds)
            self.outbox.append(recorder.command(self.keys))

    def _outage(self, cause: str, held: int) -> None:
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            log.warning(
                "Sink '%s': destination unavailable: %s; holding %d entries (pending in group "
                "%s) and retrying until it is back",
                self.plugin.name,
                cause,
                held,
                self.group,
            )

    def _outage_over(self) -> None:
        if self.outage_since is not None:
            log.info(
                "Sink '%s': destination back after %.1f s",
                self.plugin.name,
                time.monotonic() - self.outage_since,
            )
            self.outage_since = None

    def _wait_out_open_circuit(self) -> bool:
        """While the plugin's circuit is open, wait instead of spending attempts: a sink that is
        down keeps its entries (pending, in order) rather than filling the DLQ. True if the
        worker is stopping meanwhile (the entries stay pending for the next worker)."""
        open_until = self.plugin.open_until
        while open_until is not None and (wait_s := open_until - time.monotonic()) > 0:
            if self.stop.wait(wait_s):
                return True
            open_until = self.plugin.open_until
        return False

    def _acknowledge(self, delivered: list[Buffered]) -> None:
        """Queue the XACKs of what the sink has; they go with the next read."""
        if not delivered:
            return
        for stream in self.streams:
            ids = [one.id for one in delivered if one.stream == stream]
            if ids:
                self.outbox.append(("XACK", stream, self.group, *ids))
        ENTRIES_OUT.labels(self.name).inc(len(delivered))

    def _dead_letter(self, failed: list[tuple[Buffered, str]], attempts: int) -> None:
        for stream in self.streams:
            rows = [(one.id, one.payload, error) for one, error in failed if one.stream == stream]
            self._queue_letters(stream, rows, attempts)
        DEAD_LETTERS.labels("sink", self.plugin.name).inc(len(failed))
        log.error(
            "Sink '%s': %d entries sent to %s after %d attempts: %s",
            self.plugin.name, len(failed), self.keys.dlq("sink"), attempts, failed[0][1],
        )  # fmt: skip

    def reject(self, stream: str, messages: list[Message], error: str) -> None:
        rows = [(message_id, original_json(fields), error) for message_id, fields in messages]
        self._queue_letters(stream, rows, 0)
        DEAD_LETTERS.labels("sink", self.plugin.name).inc(len(messages))
        log.error(
            "Sink '%s': %d entries sent to %s: %s",
            self.plugin.name, len(messages), self.keys.dlq("sink"), error,
        )  # fmt: skip

    def _queue_letters(
        self, stream: str, rows: list[tuple[bytes, bytes, str]], attempts: int
    ) -> None:
        """Queue dead letters for ``(id, entry json, error)`` rows of ``stream`` and their ack."""
        if not rows:
            return
        letters = [
            (self.keys.dlq("sink"), dlq.letter(
                payload, error=error, plugin=self.plugin.name, stage="sink", attempts=attempts,
                source_stream=stream, source_id=entry_id,
                replay_to=self.keys.sink_replay(self.plugin.name)))
            for entry_id, payload, error in rows
        ]  # fmt: skip
        ids = [entry_id for entry_id, _, _ in rows]
        self.outbox.append(forward_and_ack(stream, self.group, ids, stream, [], letters))
