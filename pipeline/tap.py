"""``logloom tap``: watch entries and each plugin's decision flow through running workers.

Like ``vector tap``, it attaches to the workers that run, not to a copy: the tap client
publishes a tap request on the control channel every ``REQUEST_EVERY_S``; a worker that hears
one records, for each batch of the stages asked for, every entry's decision per plugin with its
time, and sends the record to ``logloom:tap`` (a capped stream) with the batch's own writes — no
extra round trip, and nothing at all when no tap is attached (a request lapses after
``REQUEST_TTL_S``, so a tap that dies switches itself off). Production is not disturbed: the
records are written beside the acknowledgements, never instead of them.

Shadow test: ``--candidate PATH`` runs a candidate version of a plugin, in the tap process, on
the entries the records carry and shows where it decides differently from the plugin running in
production; with ``--from ID`` on the tap history already recorded (past traffic), so a new
version is judged on real entries before it is deployed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis

from pipeline.keys import Keys

REQUEST_EVERY_S = 1.0
REQUEST_TTL_S = 5.0
TAP_MAX_LEN = 10_000
"""Batch records kept in ``logloom:tap``: the history ``--from`` can replay."""
ENTRIES_PER_RECORD = 100
"""Entries recorded per batch at most: a tap shows traffic, it does not copy all of it."""
MESSAGE_CHARS = 2000
OUTCOMES = {"keep": None, "drop": "dropped", "delivered": "delivered"}


@dataclass
class TapSwitch:
    """A worker's side: which stages a tap currently asks for; set by the control listener,
    read by the stages (a dict lookup and a clock read per batch)."""

    worker: str = ""
    wanted_until: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, stage: str) -> None:
        with self.lock:
            self.wanted_until[stage] = time.monotonic() + REQUEST_TTL_S

    def on(self, stage: str) -> bool:
        now = time.monotonic()
        until = self.wanted_until
        return until.get(stage, 0.0) > now or until.get("*", 0.0) > now

    def recorder(
        self, stage: str, ids: Sequence[bytes], entries: Sequence[Any]
    ) -> BatchRecorder | None:
        """A recorder for this batch while a tap asks for ``stage``, else None (the cost of a
        tap nobody attached: this check)."""
        return BatchRecorder(stage, self.worker, ids, entries) if self.on(stage) else None


def request_message(stage: str) -> bytes:
    """The control message that asks workers to tap ``stage`` (``*``: every stage)."""
    return orjson.dumps({"action": "tap", "plugin": "", "stage": stage})


class BatchRecorder:
    """Collects one batch's decisions in a stage while a tap is on; :meth:`command` is the XADD
    that goes out with the batch's writes."""

    def __init__(self, stage: str, worker: str, ids: Sequence[bytes], entries: Sequence[Any]):
        self.stage = stage
        self.worker = worker
        count = min(len(entries), ENTRIES_PER_RECORD)
        self.ids = [entry_id.decode() for entry_id in ids[:count]]
        self.entries = list(entries[:count])
        self.decisions: list[list[list[Any]]] = [[] for _ in range(count)]
        self.outcomes = ["forwarded"] * count
        self.size = len(entries)

    def plugin_call(
        self, plugin: str, indexes: Sequence[int], labels: Sequence[str], seconds: float
    ) -> None:
        """One plugin's answers for the entries at ``indexes`` (of the batch), in one call."""
        micros = round(seconds * 1e6 / max(1, len(indexes)), 1)
        for index, label in zip(indexes, labels, strict=True):
            if index < len(self.decisions):
                self.decisions[index].append([plugin, label, micros])
                if label in OUTCOMES:
                    self.outcomes[index] = OUTCOMES[label] or self.outcomes[index]
                else:  # an error: a filter dead-letters the entry, a sink tries it again
                    self.outcomes[index] = "dead-lettered" if self.stage == "filter" else "failed"

    def command(self, keys: Keys) -> tuple[Any, ...]:
        record = {
            "stage": self.stage,
            "worker": self.worker,
            "batch": self.size,
            "at": round(time.time(), 3),
            "entries": [
                {"id": entry_id, "entry": _shown(entry), "decisions": decisions, "outcome": outcome}
                for entry_id, entry, decisions, outcome in zip(
                    self.ids, self.entries, self.decisions, self.outcomes, strict=True
                )
            ],
        }
        return ("XADD", keys.tap, "MAXLEN", "~", TAP_MAX_LEN, "*", "record", orjson.dumps(record))


def _shown(entry: Any) -> dict[str, Any]:
    message = entry.get("message")
    if isinstance(message, str) and len(message) > MESSAGE_CHARS:
        return {**entry, "message": message[:MESSAGE_CHARS] + "…"}
    return dict(entry)


def label(result: Any) -> str:
    """How a filter's answer reads in a tap line: keep, drop, or the error."""
    if result is True:
        return "keep"
    if result is False:
        return "drop"
    error = getattr(result, "error", None)
    return f"error: {error if error is not None else repr(result)[:80]}"


def records(
    client: redis.Redis, keys: Keys, start: str, follow: bool, stop: threading.Event
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Tap records after ``start`` (``$``: only new ones), as they come while ``follow``."""
    last = start
    while not stop.is_set():
        if last == "$" or follow:
            reply = cast(list[Any], client.xread({keys.tap: last}, count=100, block=500))
            batch: list[Any] = reply[0][1] if reply else []
        else:
            after = f"({last}" if last != "0" else "-"
            batch = cast(list[Any], client.xrange(keys.tap, min=after, count=100))
            if not batch:
                return
        for record_id, fields in batch:
            last = record_id.decode() if isinstance(record_id, bytes) else str(record_id)
            yield last, orjson.loads(fields[b"record"])


def keep_requesting(client: redis.Redis, keys: Keys, stage: str, stop: threading.Event) -> int:
    """Publish the tap request until ``stop``; the number of workers that heard the first."""
    heard = int(client.publish(keys.control, request_message(stage)))

    def again() -> None:
        while not stop.wait(REQUEST_EVERY_S):
            try:
                client.publish(keys.control, request_message(stage))
            except redis.RedisError:
                continue

    threading.Thread(target=again, daemon=True, name="tap-request").start()
    return heard


def format_entry(stage: str, item: dict[str, Any], plugin: str | None) -> str | None:
    """One line per entry: id, level, module, message, each plugin's decision and time, and
    the outcome; None if ``plugin`` was asked for and did not see the entry."""
    decisions = item["decisions"]
    if plugin is not None:
        decisions = [d for d in decisions if d[0] == plugin]
        if not decisions:
            return None
    entry = item["entry"]
    message = str(entry.get("message") or entry.get("lang_key") or "")
    if len(message) > 60:
        message = message[:57] + "..."
    steps = " ".join(f"{name}={decision}({micros}µs)" for name, decision, micros in decisions)
    return (
        f"{stage:<8} {item['id']:<18} {entry.get('level', ''):<5} {entry.get('module', '')!s:<10} "
        f"{message!r} {steps} → {item['outcome']}"
    ).replace("\n", "\\n")


class Shadow:
    """A candidate version of a plugin judged on tapped entries beside production's decision."""

    def __init__(self, candidate: Any, compare_to: str) -> None:
        self.candidate = candidate
        self.compare_to = compare_to
        self.seen = 0
        self.differ = 0
        self.errors = 0
        self.micros: list[float] = []

    def judge(self, item_entries: Sequence[dict[str, Any]]) -> list[str]:
        """Lines for the entries where the candidate decides otherwise than production."""
        from pipeline.entry import Entry

        entries = [Entry(item["entry"]) for item in item_entries]
        started = time.perf_counter()
        results = self.candidate.call_batch(entries) if entries else []
        if entries:
            self.micros.append((time.perf_counter() - started) * 1e6 / len(entries))
        lines = []
        for item, result in zip(item_entries, results, strict=True):
            production = next((d[1] for d in item["decisions"] if d[0] == self.compare_to), None)
            if production is None:
                continue  # production's chain dropped it before this plugin
            self.seen += 1
            mine = label(result)
            self.errors += mine.startswith("error")
            if mine != production:
                self.differ += 1
                lines.append(f"differs  {item['id']:<18} production={production} candidate={mine}")
        return lines

    def summary(self) -> str:
        ordered = sorted(self.micros)
        p50 = ordered[len(ordered) // 2] if ordered else 0.0
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
        info = self.candidate.info
        return (
            f"candidate {info.name} {info.version}: {self.seen} entries compared with "
            f"production's {self.compare_to}, {self.differ} decided otherwise, {self.errors} "
            f"errors; {p50:.1f} µs/entry median batch, {p99:.1f} µs p99"
        )


def run(
    client: redis.Redis,
    keys: Keys,
    stage: str,
    plugin: str | None,
    start: str | None,
    candidate: Any | None,
    count: int | None,
    as_json: bool,
    stop: threading.Event,
) -> int:
    """``logloom tap``: print entries and decisions as they flow (or, with ``start``, from the
    tap history), or the shadow test of ``candidate``; stop after ``count`` entries."""
    shadow = Shadow(candidate, plugin or candidate.info.name) if candidate is not None else None
    if start is None:
        heard = keep_requesting(client, keys, stage, stop)
        if heard == 0:
            print("logloom tap: no worker is listening (is the pipeline running?)", flush=True)
    shown = 0
    try:
        for _record_id, record in records(client, keys, start or "$", start is None, stop):
            if record["stage"] != stage and stage != "*":
                continue
            if shadow is not None:
                for difference in shadow.judge(record["entries"]):
                    print(difference, flush=True)
                shown += len(record["entries"])
            else:
                for item in record["entries"]:
                    line: str | None = (
                        orjson.dumps({"stage": record["stage"], **item}).decode()
                        if as_json
                        else format_entry(record["stage"], item, plugin)
                    )
                    if line is not None:
                        print(line, flush=True)
                        shown += 1
            if count is not None and shown >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if shadow is not None:
            print(shadow.summary(), flush=True)
    return 0
