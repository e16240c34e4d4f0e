"""The dashboard's view of the pipeline: one snapshot per interval, shared by every open page.

Redis is read once per ``dashboard.refresh_ms`` however many pages are open: the figures of
``logloom status --json`` (:func:`pipeline.status.collect`), plus what only a live view needs —
entries added per stream, for rates; the newest failed RQ jobs; new ai results. Rates are the
change over the last :data:`RATE_WINDOW_S` seconds of samples (the first sample has none),
which smooths the steps of batched work (a sink acknowledges a whole flush at once):

- a stream's **in** rate: entries added per second (``entries-added`` of ``XINFO STREAM``; on
  Redis 6.2, which lacks it, the entries after the previous sample's last ID, counted with
  ``XRANGE`` up to :data:`COUNT_CAP`);
- a group's **out** rate: entries it acknowledged per second — what was added, less what its
  backlog (lag + pending) grew by;
- a stream's **out** rate: its slowest group's, the pace at which entries are done with.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

import redis
from rq.job import Job
from rq.queue import Queue

from pipeline import ai, status
from pipeline.keys import Keys
from pipeline.log import one_line
from pipeline.streams import id_tuple, text

COUNT_CAP = 10_000
RATE_WINDOW_S = 5.0
AI_RESULTS_KEPT = 200
AI_RESULTS_FIRST = 50
FAILED_JOBS_SHOWN = 5


@dataclass(frozen=True)
class Counts:
    """What rates are computed from: one sample's counters."""

    at: float
    added: dict[str, int | None]  # entries ever added, per stream (None: unknown)
    last_ids: dict[str, str | None]
    backlogs: dict[tuple[str, str], int | None]  # lag + pending, per (stream, group)


class Sampler:
    """Takes snapshots (:meth:`sample`, blocking: run it in a thread) and keeps the last ones."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        redis_shown: str,
        interval_s: float,
        history_minutes: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.redis_shown = redis_shown
        self.interval_s = interval_s
        self.history: deque[dict[str, Any]] = deque(
            maxlen=max(2, int(history_minutes * 60 / interval_s))
        )
        self.ai_results: deque[dict[str, Any]] = deque(maxlen=AI_RESULTS_KEPT)
        self.latest: dict[str, Any] = {
            "time": None,
            "redis": redis_shown,
            "error": "not sampled yet",
        }
        self.seq = 0
        self._recent: deque[Counts] = deque(maxlen=int(RATE_WINDOW_S / interval_s) + 2)
        self._last_ai_id: str | None = None

    def sample(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Read Redis once (blocking: run it in a thread): the new snapshot and the ai results
        that came since the last one. Nothing shared changes until :meth:`publish`."""
        now = time.time()
        data = status.collect(self.client, self.keys)
        counts = self._counts(now, data)
        self._add_rates(data, counts)
        ai_rate = self._rate(counts, self.keys.ai_results)
        self._recent.append(counts)
        new_results = self._read_ai_results()
        snapshot = {
            "time": now,
            "redis": self.redis_shown,
            "error": None,
            **data,
            "rq_failed_jobs": failed_jobs(self.client, self.keys, FAILED_JOBS_SHOWN),
            "ai_results": {
                "stream": self.keys.ai_results,
                "length": int(self.client.xlen(self.keys.ai_results)),
                "in_per_s": ai_rate,
            },
        }
        return snapshot, new_results

    def publish(self, snapshot: dict[str, Any], new_results: list[dict[str, Any]]) -> None:
        """Make a snapshot the latest and add it to the history (on the event loop's thread)."""
        self.history.append(point(snapshot))
        self.ai_results.extend(new_results)
        self.latest = snapshot
        self.seq += 1

    def failed(self, error: str) -> None:
        """Keep the last figures, marked stale with ``error`` (Redis unreachable, say)."""
        self.latest = {**self.latest, "error": error, "checked": time.time()}
        self.seq += 1

    def ai_results_after(self, after: str | None) -> list[dict[str, Any]]:
        """The kept ai results newer than stream ID ``after`` (all of them for None)."""
        if after is None:
            return list(self.ai_results)
        floor = id_tuple(after)
        return [one for one in self.ai_results if id_tuple(one["id"]) > floor]

    def _counts(self, now: float, data: dict[str, Any]) -> Counts:
        names = [row["stream"] for row in data["streams"]]
        names += [row["stream"] for row in data["dlq"]] + [self.keys.ai_results]
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.xinfo_stream(name)
        replies = pipe.execute(raise_on_error=False)
        added: dict[str, int | None] = {}
        last_ids: dict[str, str | None] = {}
        for name, info in zip(names, replies, strict=True):
            if isinstance(info, redis.ResponseError):  # no such stream (yet, or any more)
                added[name], last_ids[name] = 0, None
                continue
            last_ids[name] = text(info["last-generated-id"])
            added[name] = (
                int(info["entries-added"])
                if "entries-added" in info
                else self._added_on_redis_62(name, last_ids[name])
            )
        backlogs = {
            (row["stream"], group["group"]): (
                None
                if group["lag"] is None or group["lag_capped"]
                else group["lag"] + group["pending"]
            )
            for row in data["streams"]
            for group in row["groups"]
        }
        return Counts(now, added, last_ids, backlogs)

    def _added_on_redis_62(self, stream: str, last_id: str | None) -> int | None:
        """A running count of entries added, from the IDs after the previous sample's last."""
        previous = self._recent[-1] if self._recent else None
        if previous is None or previous.added.get(stream) is None:
            return 0
        before = previous.last_ids.get(stream)
        if before == last_id:
            return previous.added[stream]
        newer = cast(
            list[Any],
            self.client.xrange(stream, min=f"({before}" if before else "-", count=COUNT_CAP),
        )
        return cast(int, previous.added[stream]) + len(newer)

    def _baseline(self, now: float) -> Counts | None:
        """The oldest kept sample within the rate window (the newest, after a gap)."""
        for counts in self._recent:
            if now - counts.at <= RATE_WINDOW_S + self.interval_s / 2:
                return counts
        return self._recent[-1] if self._recent else None

    def _rate(self, counts: Counts, stream: str) -> float | None:
        previous = self._baseline(counts.at)
        if previous is None or counts.at <= previous.at:
            return None
        now, before = counts.added.get(stream), previous.added.get(stream)
        if now is None or before is None or now < before:  # deleted and created again
            return None
        return round((now - before) / (counts.at - previous.at), 1)

    def _add_rates(self, data: dict[str, Any], counts: Counts) -> None:
        previous = self._baseline(counts.at)
        for row in data["streams"]:
            row["in_per_s"] = in_rate = self._rate(counts, row["stream"])
            for group in row["groups"]:
                key = (row["stream"], group["group"])
                backlog = counts.backlogs.get(key)
                before = previous.backlogs.get(key) if previous else None
                group["out_per_s"] = None
                if in_rate is not None and backlog is not None and before is not None:
                    grown = (backlog - before) / (counts.at - cast(Counts, previous).at)
                    group["out_per_s"] = round(max(0.0, in_rate - grown), 1)
            known = [g["out_per_s"] for g in row["groups"] if g["out_per_s"] is not None]
            row["out_per_s"] = min(known) if known else None
        for row in data["dlq"]:
            row["in_per_s"] = self._rate(counts, row["stream"])

    def _read_ai_results(self) -> list[dict[str, Any]]:
        stream = self.keys.ai_results
        if self._last_ai_id is None:
            newest = cast(
                list[ai.ResultItem], self.client.xrevrange(stream, count=AI_RESULTS_FIRST)
            )
            items = list(reversed(newest))
        else:
            items = cast(
                list[ai.ResultItem],
                self.client.xrange(stream, min=f"({self._last_ai_id}", count=AI_RESULTS_KEPT),
            )
        results = [ai.result_dict(item) for item in items]
        if results:
            self._last_ai_id = results[-1]["id"]
        elif self._last_ai_id is None:
            self._last_ai_id = "0-0"
        return results


def point(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The few figures of a snapshot the charts draw, kept for ``history_minutes``."""
    return {
        "t": round(snapshot["time"], 3),
        "streams": {
            row["stream"]: [row["in_per_s"], row["out_per_s"]] for row in snapshot["streams"]
        },
        "lag": {
            f"{row['stream']} {group['group']}": group["lag"]
            for row in snapshot["streams"]
            for group in row["groups"]
        },
        "dlq": _dlq_sizes(snapshot["dlq"]),
    }


def _dlq_sizes(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Dead letters per stage, summed over the partitions' DLQs."""
    sizes: dict[str, int] = {}
    for row in rows:
        sizes[row["stage"]] = sizes.get(row["stage"], 0) + row["size"]
    return sizes


def failed_jobs(client: redis.Redis, keys: Keys, count: int) -> list[dict[str, Any]]:
    """The newest failed ai jobs RQ keeps, with the last line of each one's traceback."""
    queue = Queue(keys.ai_queue, connection=client)
    ids = queue.failed_job_registry.get_job_ids(0, count - 1, desc=True, cleanup=False)
    shown = []
    for job in Job.fetch_many(ids, connection=client):
        if job is None:  # expired between the two reads
            continue
        result = job.latest_result()
        trace = ((result.exc_string if result else None) or "").strip().splitlines()
        shown.append(
            {
                "id": job.id,
                "description": one_line((job.description or "")[:200]),
                "ended_at": job.ended_at.isoformat() if job.ended_at else None,
                "error": one_line(trace[-1][:300]) if trace else "",
            }
        )
    return shown
