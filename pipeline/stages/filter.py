"""The filter stage: ingest stream → codec → ordered filter chain → lang resolution → filtered
stream.

Per batch, one transaction carries the survivors' XADDs, the dead letters and the XACK of the
whole batch, so a worker killed at any point leaves each entry either fully handled or still
pending (to be reclaimed): nothing lost, nothing half-done.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

from redis.typing import EncodableT, FieldT

from pipeline import dlq, outputs
from pipeline.config import Config
from pipeline.entry import Entry, decode_batch, original_json
from pipeline.health import GuardedPlugin
from pipeline.keys import FILTER_GROUP, Keys
from pipeline.lang import LangResolver
from pipeline.metrics import (
    BATCH_SIZE,
    DEAD_LETTERS,
    ENTRIES_DROPPED,
    ENTRIES_IN,
    ENTRIES_OUT,
    PLUGIN_ERRORS,
)
from pipeline.plugin import Failure, Plugin
from pipeline.streams import Command, Message, forward_and_ack
from pipeline.tap import BatchRecorder, TapSwitch, label

log = logging.getLogger("logloom.filter")
MALFORMED_LOG_INTERVAL_S = 10.0


class FilterStage:
    name = "filter"
    group = FILTER_GROUP
    overlaps_reads = True  # as every stage but the ai stage (runner.StageLoop)

    def __init__(
        self,
        config: Config,
        filters: Sequence[GuardedPlugin],
        langs: Sequence[GuardedPlugin] = (),
        tap: TapSwitch | None = None,
        keys: Keys | None = None,
    ) -> None:
        """``keys``: the partition this stage reads (see :meth:`Keys.partitions`)."""
        self.keys = keys or config.keys
        self.streams: tuple[str, ...] = (self.keys.ingest,)
        self.filters = list(filters)
        self.langs = list(langs)
        # Resolution of lang_key (pipeline.lang) runs on the survivors, after the chain: filters
        # judge the entry as its producer sent it, and dropped entries cost nothing.
        self.resolver = LangResolver(config.lang, self.langs) if self.langs else None
        self.outbox: list[Command] = []
        self.tap = tap
        self.max_entry_bytes = config.ingest.max_entry_bytes
        self._warned: set[tuple[str, str]] = set()
        self._last_malformed_log = -MALFORMED_LOG_INTERVAL_S

    def handle(self, stream: str, messages: list[Message]) -> None:
        """Judge the batch, and queue the one command that forwards, dead-letters and acks."""
        kept, _, letters = self.judge(stream, messages)
        self.outbox.append(
            forward_and_ack(
                stream,
                self.group,
                [message_id for message_id, _ in messages],
                self.keys.filtered,
                [payload for _, _, payload in kept],
                letters,
            )
        )

    def judge(self, stream: str, messages: list[Message]) -> tuple[
        list[tuple[bytes, Entry, bytes]], list[bytes], list[tuple[str, dict[FieldT, EncodableT]]]
    ]:  # fmt: skip
        """Decode, run the chain, resolve lang keys: the survivors as ``(stream ID, entry, JSON
        to pass on)``, the IDs of the rest (dropped or dead-lettered), and the dead letters to
        write. Acknowledging the batch is the caller's (a direct stage acknowledges survivors
        once its sink has them)."""
        letters: list[tuple[str, dict[FieldT, EncodableT]]] = []
        ids: list[bytes] = []
        entries: list[Entry] = []
        payloads: list[bytes] = []
        rejected: list[str] = []
        decoded, malformed = decode_batch(messages, self.max_entry_bytes)
        settled = []  # not kept
        for message_id, fields, error in malformed:
            letter = self._letter(original_json(fields), error, "", "ingest", stream, message_id)
            letters.append((self.keys.dlq("ingest"), letter))
            rejected.append(error)
            settled.append(message_id)
        for message_id, entry, payload in decoded:
            ids.append(message_id)
            entries.append(entry)
            payloads.append(payload)
        recorder = self.tap.recorder(self.name, ids, entries) if self.tap is not None else None
        keep = self._run_chain(stream, ids, entries, payloads, letters, recorder)
        if self.resolver is not None:
            self.resolver.resolve(entries, payloads, keep)
        kept = []
        for message_id, entry, payload, passed in zip(ids, entries, payloads, keep, strict=True):
            if passed:
                kept.append((message_id, entry, payload))
            else:
                settled.append(message_id)
        if recorder is not None:
            self.outbox.append(recorder.command(self.keys))
        ENTRIES_IN.labels(self.name).inc(len(messages))
        ENTRIES_OUT.labels(self.name).inc(len(kept))
        BATCH_SIZE.labels(self.name).observe(len(messages))
        if rejected:
            self._report_malformed(rejected)
        return kept, settled, letters

    def _report_malformed(self, reasons: list[str]) -> None:
        DEAD_LETTERS.labels("ingest", "").inc(len(reasons))
        now = time.monotonic()
        if now - self._last_malformed_log >= MALFORMED_LOG_INTERVAL_S:
            self._last_malformed_log = now
            log.warning(
                "Stage filter: %d malformed entries sent to %s (first: %s)",
                len(reasons),
                self.keys.dlq("ingest"),
                reasons[0],
            )

    def _run_chain(
        self,
        stream: str,
        ids: list[bytes],
        entries: list[Entry],
        payloads: list[bytes],
        letters: list[tuple[str, dict[FieldT, EncodableT]]],
        recorder: BatchRecorder | None = None,
    ) -> list[bool]:
        """Which entries every filter keeps; a failed call dead-letters that entry alone."""
        keep = [True] * len(entries)
        alive = list(range(len(entries)))
        for plugin in self.filters:
            if not alive:
                break
            if not plugin.enabled:  # disabled at run time: as if not in the chain
                continue
            started = time.perf_counter()
            results = plugin.call_batch([entries[i] for i in alive])
            if recorder is not None:
                labels = [label(result) for result in results]
                recorder.plugin_call(plugin.name, alive, labels, time.perf_counter() - started)
            survivors = []
            dropped = 0
            failures: Counter[str] = Counter()
            for index, result in zip(alive, results, strict=True):
                if result is True:
                    survivors.append(index)
                    continue
                keep[index] = False
                if result is False:
                    dropped += 1
                    continue
                error = (
                    result.error
                    if isinstance(result, Failure)
                    else outputs.check(result, "filter") or "not a filter's answer"
                )
                failures[error] += 1
                letters.append(
                    (
                        self.keys.dlq("filter"),
                        self._letter(
                            payloads[index], error, plugin.name, "filter", stream, ids[index]
                        ),
                    )
                )
            if dropped:
                ENTRIES_DROPPED.labels(self.name, plugin.name).inc(dropped)
            if failures:
                self._report(plugin, failures)
            alive = survivors
        return keep

    def _report(self, plugin: Plugin, failures: Counter[str]) -> None:
        total = sum(failures.values())
        PLUGIN_ERRORS.labels(plugin.name, plugin.info.type).inc(total)
        DEAD_LETTERS.labels("filter", plugin.name).inc(total)
        for error, count in failures.items():
            # One line per distinct cause, not per entry: a broken plugin must not flood the log.
            if (plugin.name, error) not in self._warned and len(self._warned) < 1000:
                self._warned.add((plugin.name, error))
                log.error(
                    "Plugin '%s' failed on %d entries: %s (sent to %s)",
                    plugin.name,
                    count,
                    error,
                    self.keys.dlq("filter"),
                )

    def _letter(
        self, payload: bytes, error: str, plugin: str, stage: str, stream: str, message_id: bytes
    ) -> dict[FieldT, EncodableT]:
        return dlq.letter(
            payload,
            error=error,
            plugin=plugin,
            stage=stage,
            attempts=1,
            source_stream=stream,
            source_id=message_id,
        )

    def reject(self, stream: str, messages: list[Message], error: str) -> None:
        letters = [
            (
                self.keys.dlq(self.name),
                self._letter(original_json(fields), error, "", self.name, stream, message_id),
            )
            for message_id, fields in messages
        ]
        ids = [message_id for message_id, _ in messages]
        self.outbox.append(
            forward_and_ack(stream, self.group, ids, self.keys.filtered, [], letters)
        )
        DEAD_LETTERS.labels(self.name, "").inc(len(messages))
        log.error(
            "Stage filter: %d entries sent to %s: %s",
            len(messages),
            self.keys.dlq(self.name),
            error,
        )

    def wait_ms(self, block_ms: int) -> int:
        return block_ms

    def tick(self) -> None:
        for plugin in (*self.filters, *self.langs):
            plugin.apply_pending()

    def paused(self) -> bool:
        return False

    def drain(self) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass
