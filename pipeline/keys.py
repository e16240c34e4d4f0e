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
=============================  ======  ==================================================

Consumer groups: ``filter`` on the ingest stream; ``sink:<name>`` on the filtered stream and on
that sink's replay stream; ``ai`` on the filtered stream and the ai replay stream.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "logloom"
DLQ_STAGES = ("ingest", "filter", "sink", "ai")
FILTER_GROUP = "filter"
AI_GROUP = "ai"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix; build one from the config and pass it around."""

    prefix: str = DEFAULT_PREFIX

    @property
    def ingest(self) -> str:
        return f"{self.prefix}:ingest"

    @property
    def filtered(self) -> str:
        return f"{self.prefix}:filtered"

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
        return f"{self.prefix}:dlq:{stage}"

    def sink_replay(self, sink: str) -> str:
        return f"{self.prefix}:sink:{sink}:replay"

    @staticmethod
    def sink_group(sink: str) -> str:
        return f"sink:{sink}"

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

    def all_dlqs(self) -> list[str]:
        return [self.dlq(stage) for stage in DLQ_STAGES]
