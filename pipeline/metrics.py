"""Telemetry: every stage and plugin emits these names with these labels, defined only here.

Two kinds of figures. Counters and histograms are counted by the worker doing the work (under
``logloom up`` in Prometheus multiprocess mode, so the supervisor serves one sum for all
workers). Queue figures — stream length, group lag and pending, DLQ sizes — are read from Redis
when scraped, by :class:`QueueCollector`, so they are right however many workers run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from rq.queue import Queue

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


class QueueCollector(Collector):
    """Stream, consumer-group and DLQ figures read from Redis at scrape time."""

    def __init__(self, client: redis.Redis, keys: Keys, extra_streams: list[str] | None = None):
        self.client = client
        self.keys = keys
        self.extra_streams = extra_streams or []

    def streams(self) -> list[str]:
        found = [self.keys.ingest, self.keys.filtered, self.keys.ai_replay, *self.extra_streams]
        for key in self.client.scan_iter(match=f"{self.keys.prefix}:sink:*:replay", count=500):
            found.append(key.decode())
        return list(dict.fromkeys(found))

    def collect(self) -> Iterator[Metric]:
        length = GaugeMetricFamily(
            "logloom_stream_length", "Entries in a stream", labels=["stream"]
        )
        lag = GaugeMetricFamily(
            "logloom_group_lag", "Entries a group has not read yet", labels=["stream", "group"]
        )
        pending = GaugeMetricFamily(
            "logloom_group_pending",
            "Entries read by a group but not acknowledged",
            labels=["stream", "group"],
        )
        oldest = GaugeMetricFamily(
            "logloom_group_oldest_pending_seconds",
            "Age of the oldest unacknowledged entry of a group",
            labels=["stream", "group"],
        )
        consumers = GaugeMetricFamily(
            "logloom_group_consumers", "Consumers in a group", labels=["stream", "group"]
        )
        dlq = GaugeMetricFamily("logloom_dlq_size", "Dead letters waiting", labels=["stage"])
        jobs = GaugeMetricFamily(
            "logloom_rq_jobs", "ai jobs in RQ, by state", labels=["queue", "state"]
        )
        try:
            for stream in self.streams():
                length.add_metric([stream], streams.stream_length(self.client, stream))
                for group in streams.group_stats(self.client, stream):
                    labels = [stream, group.group]
                    if group.lag is not None:
                        lag.add_metric(labels, group.lag)
                    pending.add_metric(labels, group.pending)
                    oldest.add_metric(labels, group.oldest_pending_s)
                    consumers.add_metric(labels, group.consumers)
            for key in self.keys.all_dlqs():
                dlq.add_metric([key.rsplit(":", 1)[1]], self.client.xlen(key))
            queue = Queue(self.keys.ai_queue, connection=self.client)
            jobs.add_metric([queue.name, "queued"], queue.count)
            for state, registry in (
                ("started", queue.started_job_registry),
                ("scheduled", queue.scheduled_job_registry),
                ("failed", queue.failed_job_registry),
            ):
                jobs.add_metric([queue.name, state], registry.count)
        except redis.RedisError as exc:
            log.warning("Queue metrics unavailable: Redis error: %s", exc)
            return
        yield from (length, lag, pending, oldest, consumers, dlq, jobs)


def serve(port: int, host: str, registry: CollectorRegistry | None = None) -> int:
    """Serve /metrics on ``host:port`` (0 picks a free port); returns the port actually bound."""
    if registry is None:
        server, _thread = start_http_server(port, addr=host)
    else:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])


def supervisor_registry(
    client: redis.Redis, keys: Keys, multiprocess_dir: str | None
) -> CollectorRegistry:
    """What ``logloom up`` serves: the sum over all its workers, plus the queue figures."""
    registry = CollectorRegistry()
    if multiprocess_dir:
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector(client, keys))
    return registry
