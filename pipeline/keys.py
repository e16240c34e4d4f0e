"""Every Redis key and consumer-group name Logloom uses, in one place.

The layout (CONTRACT §2), for the default prefix ``logloom``:

=============================  ======  ==================================================
key                            kind    what
=============================  ======  ==================================================
logloom:ingest                 stream  producers XADD here (``entry`` JSON or flat fields)
logloom:filtered               stream  entries that passed every filter, ``entry`` JSON
logloom:dlq:<stage>            stream  dead letters of a stage (ingest, filter, sink, ai)
logloom:sink:<name>:replay     stream  dead letters of one sink replayed to that sink only
logloom:ai:results             stream  results of ai plugins, streamed as produced
logloom:ai:replay              stream  replayed ai dead letters; read by the ai stage only
rq:queue:logloom-ai            list    RQ's queue of ai jobs (RQ's own keys; name ``<prefix>-ai``)
logloom:control                pubsub  plugin disable/enable/reload orders, tap requests
logloom:tap                    stream  tap records: entries and each plugin's decision (capped)
logloom:plugins:disabled       set     plugins disabled at run time (workers started later too)
logloom:worker:<consumer>      string  a live worker's plugin states and counters (JSON, TTL)
logloom:aggregator:batch:*     string  ``logloom aggregator``: batch ``<node>:<id>`` written (TTL)
=============================  ======  ==================================================

Consumer groups: ``filter`` on the ingest stream; ``sink:<name>`` on the filtered stream and on
that sink's replay stream; ``ai`` on the filtered stream and the ai replay stream.

Partitions (``redis.partitions: N``, N > 1): the ingest and filtered streams, the ingest, filter
and sink DLQs and the sinks' replay streams exist once per partition, named with the hash tag
``{p<n>}`` (``logloom:{p0}:ingest``, ``logloom:{p0}:dlq:sink``, ...) so that the keys one script
or transaction touches share a Redis Cluster hash slot. Everything else stays global, the ai
stage's keys included (RQ needs a plain Redis: see README "From one Redis to a cluster"). With
one partition, the names are the ones above.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULT_PREFIX = "logloom"
DLQ_STAGES = ("ingest", "filter", "sink", "ai")
FILTER_GROUP = "filter"
AI_GROUP = "ai"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix; build one from the config and pass it around.

    With several partitions, this deployment-wide view names only the global keys; the
    per-partition ones come from :meth:`partitions` (asking the deployment view for one is a
    bug, and raises).
    """

    prefix: str = DEFAULT_PREFIX
    partition_count: int = 1
    partition: int | None = None  # set in the views partitions() returns, when count > 1

    def partitions(self) -> list[Keys]:
        """One view per partition, in order; with a single partition, this one."""
        if self.partition_count == 1:
            return [self]
        return [replace(self, partition=index) for index in range(self.partition_count)]

    @property
    def _partitioned(self) -> str:
        """The start of a per-partition key: the prefix, and the partition's hash tag."""
        if self.partition_count == 1:
            return self.prefix
        if self.partition is None:
            raise ValueError(
                f"{self.prefix} has {self.partition_count} partitions: a per-partition key "
                "needs one of Keys.partitions()"
            )
        return f"{self.prefix}:{{p{self.partition}}}"

    @property
    def ingest(self) -> str:
        return f"{self._partitioned}:ingest"

    @property
    def filtered(self) -> str:
        return f"{self._partitioned}:filtered"

    @property
    def ai_results(self) -> str:
        return f"{self.prefix}:ai:results"

    @property
    def ai_replay(self) -> str:
        return f"{self.prefix}:ai:replay"

    @property
    def ai_queue(self) -> str:
        """The RQ queue name (RQ keys it as ``rq:queue:<name>``)."""
        return f"{self.prefix}-ai"

    def dlq(self, stage: str) -> str:
        """A stage's DLQ: per partition, but the ai stage's (like its replay stream) global."""
        return f"{self.prefix if stage == 'ai' else self._partitioned}:dlq:{stage}"

    def dlqs(self, stage: str) -> list[str]:
        """Every DLQ stream of ``stage``: one per partition (the ai stage's: one)."""
        if stage == "ai":
            return [self.dlq(stage)]
        return [part.dlq(stage) for part in self.partitions()]

    def sink_replay(self, sink: str) -> str:
        return f"{self._partitioned}:sink:{sink}:replay"

    def sink_replays_pattern(self) -> str:
        """A SCAN pattern matching every sink's replay stream, of every partition."""
        if self.partition_count == 1:
            return f"{self.prefix}:sink:*:replay"
        return f"{self.prefix}:{{p*}}:sink:*:replay"

    @staticmethod
    def sink_group(sink: str) -> str:
        return f"sink:{sink}"

    @staticmethod
    def direct_group(sink: str) -> str:
        """The group on the ingest stream of a sink fed by direct workers (filter + sink)."""
        return f"direct:{sink}"

    @property
    def control(self) -> str:
        return f"{self.prefix}:control"

    @property
    def tap(self) -> str:
        return f"{self.prefix}:tap"

    @property
    def disabled_plugins(self) -> str:
        return f"{self.prefix}:plugins:disabled"

    def worker_report(self, consumer: str) -> str:
        return f"{self.prefix}:worker:{consumer}"

    def aggregator_batch(self, node: str, batch: str) -> str:
        """Set by ``logloom aggregator`` with a batch's XADDs, in the hash slot of the partition
        it writes to: a resent batch is not written twice (kept ``aggregator.dedup_window_s``)."""
        return f"{self._partitioned}:aggregator:batch:{node}:{batch}"

    def all_dlqs(self) -> list[str]:
        return [key for stage in DLQ_STAGES for key in self.dlqs(stage)]
