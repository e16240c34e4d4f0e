"""A direct stage: the filter chain and one sink in one worker, reading the ingest stream.

``logloom worker --stage direct`` runs one per partition for its one sink, through the sink's
group on the ingest stream (``direct:<sink>``). An entry then crosses Redis once (read, then
acknowledged once its sink has it or a DLQ does) instead of twice (read, forwarded to the
filtered stream, read again, acknowledged): about half the Redis work an entry costs, which on
a small machine is what bounds throughput (README "Performance").

What it gives up: entries never reach ``logloom:filtered``, so the ai stage and sink workers
do not see them; and a deployment runs one direct sink, as the only reader of the ingest
stream (the worker checks, :func:`workers.stage_worker.run_worker`). Everything else is the
two stages' own code: the chain, lang resolution and dead letters of
:class:`~pipeline.stages.filter.FilterStage`; buffering, retries, outages, acknowledgement and
the replay stream of :class:`~pipeline.stages.sink.SinkStage`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import orjson

from pipeline.config import Config
from pipeline.entry import with_json
from pipeline.health import GuardedPlugin
from pipeline.keys import Keys
from pipeline.metrics import ENTRIES_IN
from pipeline.stages.filter import FilterStage
from pipeline.stages.sink import SinkStage
from pipeline.streams import Command, Message, forward_and_ack
from pipeline.tap import TapSwitch


class DirectStage:
    """The filter chain, then one sink, on the ingest stream through the sink's direct group."""

    overlaps_reads = True  # as the sink's (SinkStage)

    def __init__(
        self,
        config: Config,
        filters: Sequence[GuardedPlugin],
        langs: Sequence[GuardedPlugin],
        sink: GuardedPlugin,
        stop: threading.Event,
        tap: TapSwitch | None = None,
        keys: Keys | None = None,
    ) -> None:
        self.keys = keys or config.keys
        self.sink = SinkStage(config, sink, stop, tap, self.keys, direct=True)
        self.chain = FilterStage(config, filters, langs, tap, self.keys)
        self.name, self.group, self.streams = self.sink.name, self.sink.group, self.sink.streams
        self.outbox: list[Command] = self.sink.outbox  # one outbox for both halves
        self.chain.outbox = self.outbox
        self.chain.group = self.group  # what the chain acknowledges (rejects), it does here

    # The loop hands a stage that holds entries these two (runner.HoldsEntries): the sink's.
    @property
    def touch(self) -> Callable[[str, list[bytes]], None] | None:
        return self.sink.touch

    @touch.setter
    def touch(self, value: Callable[[str, list[bytes]], None] | None) -> None:
        self.sink.touch = value

    @property
    def send_outbox(self) -> Callable[[], None] | None:
        return self.sink.send_outbox

    @send_outbox.setter
    def send_outbox(self, value: Callable[[], None] | None) -> None:
        self.sink.send_outbox = value

    def handle(self, stream: str, messages: list[Message]) -> None:
        """Judge the batch; acknowledge what was dropped or dead-lettered now, and hand the
        survivors to the sink, which acknowledges each once delivered."""
        if stream != self.keys.ingest:  # the sink's replay stream: entries filtered already
            self.sink.handle(stream, messages)
            return
        kept, settled, letters = self.chain.judge(stream, messages)
        ENTRIES_IN.labels(self.name).inc(len(kept))
        if letters:
            self.outbox.append(forward_and_ack(stream, self.group, settled, stream, [], letters))
        elif settled:  # only dropped: a plain XACK, cheaper for Redis than the script
            self.outbox.append(("XACK", stream, self.group, *settled))
        if self.chain.resolver is not None:
            # Lang resolution rewrites a survivor's JSON, not its entry: the sink gets the new one.
            kept = [
                (message_id, entry, payload)
                if payload is entry.to_json()
                else (message_id, with_json(orjson.loads(payload), payload), payload)
                for message_id, entry, payload in kept
            ]
        self.sink.take(stream, kept)

    def reject(self, stream: str, messages: list[Message], error: str) -> None:
        """Entries that killed every worker: from the ingest stream, the chain's DLQ (a filter
        may be what crashed; a replay goes through the chain again); else the sink's."""
        if stream == self.keys.ingest:
            self.chain.reject(stream, messages, error)
        else:
            self.sink.reject(stream, messages, error)

    def wait_ms(self, block_ms: int) -> int:
        return self.sink.wait_ms(block_ms)

    def tick(self) -> None:
        self.chain.tick()
        self.sink.tick()

    def paused(self) -> bool:
        return self.sink.paused()

    def drain(self) -> None:
        self.sink.drain()

    def close(self) -> None:
        self.sink.close()

    def reset(self) -> None:
        self.sink.reset()
