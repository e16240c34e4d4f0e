"""The ai stage: entries that passed the filters → batches → RQ jobs, one per ai plugin.

It reads the filtered stream through its own group (``ai``), so the sinks never wait on it.
Entries are buffered and handed over when ``ai.batch_size`` are buffered or the oldest has
waited ``ai.flush_interval_ms``: the jobs (holding the entries) are enqueued and the entries
acknowledged in one MULTI, so a batch is either wholly with RQ or still pending here. When RQ
falls behind (``ai.max_queued_jobs`` waiting) the stage stops reading: memory stays bounded and
nothing is dropped. What it has read it still hands over (the queue overshoots by at most one
read), so no entry sits unacknowledged long enough for another worker to claim it again. Jobs
are retried by RQ (``ai.retries``, backoff ``ai.retry_intervals_s``); the entries of jobs it
gives up on are moved to ``logloom:dlq:ai`` by this stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from rq.job import Retry

from pipeline import ai, dlq
from pipeline.config import Config
from pipeline.entry import original_json
from pipeline.keys import AI_GROUP
from pipeline.metrics import BATCH_SIZE, DEAD_LETTERS, ENTRIES_IN, ENTRIES_OUT
from pipeline.streams import Command, Message

log = logging.getLogger("logloom.ai")
QUEUE_CHECK_INTERVAL_S = 0.5


class AiStage:
    name = "ai"
    group = AI_GROUP
    overlaps_reads = False  # pauses while RQ falls behind

    def __init__(self, config: Config, rq_client: redis.Redis, plugins: Sequence[str]) -> None:
        self.config = config
        self.keys = config.keys
        self.settings = config.ai
        self.plugins = list(plugins)
        self.rq_client = rq_client
        self.queue = ai.queue_for(rq_client, config)
        # Every partition's filtered stream, in one read: the ai stage runs on a plain Redis.
        filtered = [part.filtered for part in self.keys.partitions()]
        self.streams: tuple[str, ...] = (*filtered, self.keys.ai_replay)
        self.outbox: list[Command] = []
        self.buffer: list[tuple[str, bytes, bytes]] = []  # (stream, id, entry JSON)
        self.deadline: float | None = None
        self._queue_full = False
        self._next_queue_check = 0.0
        self._next_sweep = 0.0

    def handle(self, stream: str, messages: list[Message]) -> None:
        for message_id, fields in messages:
            self.buffer.append((stream, message_id, original_json(fields)))
        ENTRIES_IN.labels(self.name).inc(len(messages))
        if self.deadline is None and self.buffer:
            self.deadline = time.monotonic() + self.settings.flush_interval_ms / 1000
        while len(self.buffer) >= self.settings.batch_size:
            self.flush()

    def flush(self) -> None:
        """Enqueue one batch as one job per ai plugin, and acknowledge it, in one MULTI."""
        batch = self.buffer[: self.settings.batch_size]
        entries = [payload for _, _, payload in batch]
        ids = [message_id.decode() for _, message_id, _ in batch]
        # Partitioned, a job names each entry's stream, for its dead letters.
        sources = {} if self.keys.partition_count == 1 else {"sources": [s for s, _, _ in batch]}
        pipe = self.rq_client.pipeline(transaction=True)
        for plugin in self.plugins:
            self.queue.enqueue_call(
                ai.analyze_batch,
                args=(plugin, entries, ids, self.keys.prefix, self.config.source),
                kwargs=sources,
                timeout=self.settings.job_timeout_s,
                retry=Retry(max=self.settings.retries, interval=self.settings.retry_intervals_s)
                if self.settings.retries
                else None,
                description=f"{plugin}: {len(batch)} entries",
                pipeline=pipe,
            )
        for stream in {stream for stream, _, _ in batch}:
            pipe.xack(stream, self.group, *[i for s, i, _ in batch if s == stream])
        pipe.execute()
        del self.buffer[: len(batch)]
        self.deadline = (
            time.monotonic() + self.settings.flush_interval_ms / 1000 if self.buffer else None
        )
        BATCH_SIZE.labels(self.name).observe(len(batch))
        ENTRIES_OUT.labels(self.name).inc(len(batch))
        self._next_queue_check = 0.0  # look at the queue again before the next batch

    def paused(self) -> bool:
        """True while RQ has ``ai.max_queued_jobs`` waiting: read no more until it catches up."""
        now = time.monotonic()
        if now >= self._next_queue_check:
            self._next_queue_check = now + QUEUE_CHECK_INTERVAL_S
            full = self.queue.count >= self.settings.max_queued_jobs
            if full and not self._queue_full:
                log.warning(
                    "AI stage: %d jobs waiting in %s; reading slower until workers catch up",
                    self.queue.count, self.queue.name,
                )  # fmt: skip
            self._queue_full = full
        return self._queue_full

    def wait_ms(self, block_ms: int) -> int:
        if self.deadline is None:
            return block_ms
        return max(1, min(block_ms, int((self.deadline - time.monotonic()) * 1000)))

    def tick(self) -> None:
        now = time.monotonic()
        if self.buffer and self.deadline is not None and now >= self.deadline:
            self.flush()
        if now >= self._next_sweep:
            self._next_sweep = now + self.settings.failed_sweep_interval_s
            moved = ai.dead_letter_failed_jobs(
                self.rq_client, self.queue, self.keys, self.settings.retries + 1
            )
            if moved:
                DEAD_LETTERS.labels("ai", "").inc(moved)

    def reject(self, stream: str, messages: list[Message], error: str) -> None:
        for message_id, fields in messages:
            letter = dlq.letter(
                original_json(fields),
                error=error,
                plugin="",
                stage="ai",
                attempts=1,
                source_stream=stream,
                source_id=message_id,
                replay_to=self.keys.ai_replay,
            )
            self.outbox.append(("XADD", self.keys.dlq("ai"), "*", *_flatten(letter)))
        self.outbox.append(("XACK", stream, self.group, *[i for i, _ in messages]))
        DEAD_LETTERS.labels("ai", "").inc(len(messages))

    def drain(self) -> None:
        while self.buffer:
            self.flush()

    def close(self) -> None:
        self.drain()

    def reset(self) -> None:
        self.buffer.clear()
        self.deadline = None


def _flatten(fields: Mapping[Any, Any]) -> list[Any]:
    return [part for pair in fields.items() for part in pair]
