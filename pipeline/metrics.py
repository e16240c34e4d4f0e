"""Telemetry: every stage and plugin emits these names with these labels, defined only here.

Two kinds of figures. Counters and histograms are counted by the worker doing the work (under
``logloom up`` in Prometheus multiprocess mode, so the supervisor serves one sum for all
workers). Queue figures — stream length, group lag and pending, DLQ sizes — are read from Redis
when scraped, by :class:`QueueCollector`, so they are right however many workers run, and
the hot path never pays a Redis round trip for telemetry. Who serves what: a standalone worker
its own counters (``--metrics-port``); ``logloom up`` the sum of its workers and the queue
figures; ``logloom metrics`` the queue figures, plus the sum of every worker on the machine that
shares its ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from rq.queue import Queue
from rq.worker import Worker

from pipeline import streams
from pipeline.keys import Keys

log = logging.getLogger("logloom.metrics")

ENTRIES_IN = Counter("logloom_entries_in_total", "Entries a stage read", ["stage"])
ENTRIES_OUT = Counter(
    "logloom_entries_out_total", "Entries a stage passed on (forwarded or delivered)", ["stage"]
)
ENTRIES_DROPPED = Counter(
    "logloom_entries_dropped_total", "Entries a filter chose to drop", ["stage", "plugin"]
)
DEAD_LETTERS = Counter("logloom_dead_letters_total", "Entries sent to a DLQ", ["stage", "plugin"])
PLUGIN_ERRORS = Counter(
    "logloom_plugin_errors_total", "Entries a plugin call failed for", ["plugin", "type"]
)
PLUGIN_CALL_SECONDS = Histogram(
    "logloom_plugin_call_seconds",
    "Duration of one plugin call over a batch",
    ["plugin", "type"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)
BATCH_SIZE = Histogram(
    "logloom_batch_size",
    "Entries per batch a stage handled",
    ["stage"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 5000),
)
SINK_RETRIES = Counter(
    "logloom_sink_retries_total", "Flush attempts a sink needed beyond the first", ["plugin"]
)
PLUGIN_RESTARTS = Counter(
    "logloom_plugin_restarts_total",
    "Times a plugin's host process or service connection was opened again",
    ["plugin", "runtime"],
)
CIRCUIT_OPEN = Counter(
    "logloom_plugin_circuit_opened_total", "Times a plugin's circuit breaker opened", ["plugin"]
)
RECLAIMED = Counter(
    "logloom_entries_reclaimed_total", "Entries taken over from a dead worker", ["stage"]
)
LANG_MISSING = Counter(
    "logloom_lang_missing_total",
    "Entries whose lang_key no lang plugin resolved for a locale, fallbacks included",
    ["locale"],
)


class CircuitState(IntEnum):
    """The values of ``logloom_plugin_circuit_state``, ordered so the worst is the largest."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


CIRCUIT_STATE = Gauge(
    "logloom_plugin_circuit_state",
    "A plugin's circuit breaker: 0 closed, 1 half-open (a probe call), 2 open; the worst state "
    "among the live workers running it",
    ["plugin"],
    multiprocess_mode="livemax",
)
AI_RESULTS = Counter(
    "logloom_ai_results_total",
    "Results ai plugins wrote to the results stream (final: 1, partial: 0)",
    ["plugin", "final"],
)
AI_JOB_SECONDS = Histogram(
    "logloom_ai_job_seconds",
    "Duration of one finished RQ job: an ai plugin over one batch, its results written",
    ["plugin"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)

ACTIVE_CONSUMER_IDLE_MS = 60_000
"""A consumer that tried to read within this long counts as active. A live worker reads every
``stages.block_ms``; a sink retrying a flush or an ai stage held back by a full queue pauses
longer, but not this long with the default retry settings."""


class QueueCollector(Collector):
    """Stream, consumer-group, DLQ and RQ figures read from Redis at scrape time.

    Whatever the number of workers, one collector per Redis gives each figure once; it costs a
    few commands per stream and group per scrape, never anything per entry.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        extra_streams: list[str] | None = None,
        active_idle_ms: int = ACTIVE_CONSUMER_IDLE_MS,
    ):
        self.client = client
        self.keys = keys
        self.extra_streams = extra_streams or []
        self.active_idle_ms = active_idle_ms

    def streams(self) -> list[str]:
        found = [
            *(name for part in self.keys.partitions() for name in (part.ingest, part.filtered)),
            self.keys.ai_replay,
            self.keys.ai_results,
            *self.extra_streams,
        ]
        for key in self.client.scan_iter(match=self.keys.sink_replays_pattern(), count=500):
            found.append(key.decode())
        return list(dict.fromkeys(found))

    def collect(self) -> Iterator[Metric]:
        redis_up = GaugeMetricFamily(
            "logloom_redis_up", "1 if this scrape could read the queue figures from Redis"
        )
        families = _queue_families()
        try:
            self._fill(families)
        except redis.RedisError as exc:
            log.warning("Queue metrics unavailable: Redis error: %s", exc)
            redis_up.add_metric([], 0)
            yield redis_up
            return
        redis_up.add_metric([], 1)
        yield redis_up
        yield from families.values()

    def _fill(self, families: dict[str, GaugeMetricFamily]) -> None:
        for stream in self.streams():
            families["length"].add_metric([stream], streams.stream_length(self.client, stream))
            for group in streams.group_stats(self.client, stream):
                labels = [stream, group.group]
                if group.lag is not None:
                    families["lag"].add_metric(labels, group.lag)
                families["pending"].add_metric(labels, group.pending)
                families["oldest"].add_metric(labels, group.oldest_pending_s)
                families["consumers"].add_metric(labels, group.consumers)
                active = self._active_consumers(stream, group.group)
                families["active"].add_metric(labels, active)
        dlq_sizes: dict[str, int] = {}  # per stage, summed over its partitions
        for key in self.keys.all_dlqs():
            stage = key.rsplit(":", 1)[1]
            dlq_sizes[stage] = dlq_sizes.get(stage, 0) + int(self.client.xlen(key))
        for stage, size in dlq_sizes.items():
            families["dlq"].add_metric([stage], size)
        queue = Queue(self.keys.ai_queue, connection=self.client)
        families["jobs"].add_metric([queue.name, "queued"], queue.count)
        for state, registry in (
            ("started", queue.started_job_registry),
            ("scheduled", queue.scheduled_job_registry),
            ("failed", queue.failed_job_registry),
        ):
            families["jobs"].add_metric([queue.name, state], registry.count)
        families["rq_workers"].add_metric(
            [queue.name], Worker.count(connection=self.client, queue=queue)
        )

    def _active_consumers(self, stream: str, group: str) -> int:
        """Consumers that tried to read lately; a stopped worker's name stays in the group (with
        its pending entries) until a peer claims them and forgets it."""
        try:
            consumers = self.client.xinfo_consumers(stream, group)
        except redis.ResponseError:  # the group went away since XINFO GROUPS
            return 0
        return sum(1 for one in consumers if int(one["idle"]) < self.active_idle_ms)


def _queue_families() -> dict[str, GaugeMetricFamily]:
    group = ["stream", "group"]
    return {
        "length": GaugeMetricFamily(
            "logloom_stream_length", "Entries in a stream", labels=["stream"]
        ),
        "lag": GaugeMetricFamily(
            "logloom_group_lag", "Entries a group has not read yet", labels=group
        ),
        "pending": GaugeMetricFamily(
            "logloom_group_pending", "Entries read by a group but not acknowledged", labels=group
        ),
        "oldest": GaugeMetricFamily(
            "logloom_group_oldest_pending_seconds",
            "Age of the oldest unacknowledged entry of a group",
            labels=group,
        ),
        "consumers": GaugeMetricFamily(
            "logloom_group_consumers",
            "Consumers in a group, stopped ones included until forgotten",
            labels=group,
        ),
        "active": GaugeMetricFamily(
            "logloom_group_consumers_active",
            "Consumers of a group that tried to read within the last minute",
            labels=group,
        ),
        "dlq": GaugeMetricFamily("logloom_dlq_size", "Dead letters waiting", labels=["stage"]),
        "jobs": GaugeMetricFamily(
            "logloom_rq_jobs", "ai jobs in RQ, by state", labels=["queue", "state"]
        ),
        "rq_workers": GaugeMetricFamily(
            "logloom_rq_workers", "RQ workers serving the ai queue", labels=["queue"]
        ),
    }


def serve(port: int, host: str, registry: CollectorRegistry | None = None) -> int:
    """Serve /metrics on ``host:port`` (0 picks a free port); returns the port actually bound."""
    if registry is None:
        server, _thread = start_http_server(port, addr=host)
    else:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])


def serve_worker(port: int | None, host: str) -> None:
    """A standalone worker's own counters on ``host:port`` (None: off). Not under a
    ``PROMETHEUS_MULTIPROC_DIR``: there the counters go to files that ``logloom up`` or
    ``logloom metrics`` sum for every worker."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or port is None:
        return
    try:
        bound = serve(port, host)
    except OSError as exc:
        log.warning("Worker %d: metrics not served: port %d: %s", os.getpid(), port, exc.strerror)
        return
    log.info("Worker %d: metrics on http://%s:%d/metrics", os.getpid(), host, bound)


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


class DeadProcessSweeper(Collector):
    """Before each scrape, drops the live-only gauges (circuit state) of processes that are
    gone: workers sharing a multiprocess directory without ``logloom up``, which does this as
    each child exits, would otherwise go on reporting a dead worker's open circuit. A dead
    worker's counters stay, as they should: they are totals."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def collect(self) -> Iterator[Metric]:
        for file in self.path.glob("gauge_live*_*.db"):
            match = _LIVE_GAUGE_FILE.match(file.name)
            if match and not _process_alive(int(match.group(1))):
                mark_process_dead(int(match.group(1)), str(self.path))  # type: ignore[no-untyped-call]
        return iter(())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def supervisor_registry(
    client: redis.Redis,
    keys: Keys,
    multiprocess_dir: str | None,
    active_idle_ms: int = ACTIVE_CONSUMER_IDLE_MS,
) -> CollectorRegistry:
    """What ``logloom up`` and ``logloom metrics`` serve: the sum over the workers writing to
    ``multiprocess_dir``, plus the queue figures."""
    registry = CollectorRegistry()
    if multiprocess_dir:
        registry.register(DeadProcessSweeper(multiprocess_dir))
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector(client, keys, active_idle_ms=active_idle_ms))
    return registry
