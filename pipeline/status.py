"""``logloom status``: streams, groups, lag, pending, consumers, DLQ sizes and plugin health."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from rq.queue import Queue
from rq.worker import Worker

from pipeline import control, dlq, streams
from pipeline.keys import Keys


def collect(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Everything the status table shows, as plain data (also printed by ``status --json``)."""
    stream_names = [name for part in keys.partitions() for name in (part.ingest, part.filtered)]
    stream_names.append(keys.ai_replay)
    stream_names += sorted(
        key.decode() for key in client.scan_iter(match=keys.sink_replays_pattern(), count=500)
    )
    rows = []
    for stream in stream_names:
        groups = streams.group_stats(client, stream)
        rows.append(
            {
                "stream": stream,
                "length": streams.stream_length(client, stream),
                "groups": [
                    {
                        "group": g.group,
                        "consumers": g.consumers,
                        "pending": g.pending,
                        "lag": g.lag,
                        "lag_capped": g.lag_capped,
                        "oldest_pending_s": round(g.oldest_pending_s, 1),
                        "consumer_details": consumer_details(client, stream, g.group),
                    }
                    for g in groups
                ],
            }
        )
    dead = [
        {
            "stage": s.stage,
            "stream": s.key,
            "size": s.size,
            "newest_error": s.newest_error,
            "plugin": s.newest_plugin,
        }
        for s in dlq.summaries(client, keys)
    ]
    return {
        "streams": rows,
        "dlq": dead,
        "rq": rq_queue(client, keys),
        "plugins": plugin_health(client, keys),
    }


def consumer_details(client: redis.Redis, stream: str, group: str) -> list[dict[str, Any]]:
    """Each consumer of a group: its pending entries and how long since it last read (a worker
    idle far past ``stages.block_ms`` is stuck or gone)."""
    try:
        consumers = client.xinfo_consumers(stream, group)
    except redis.ResponseError:  # the group went away since XINFO GROUPS
        return []
    return [
        {
            "name": streams.text(one["name"]),
            "pending": int(one["pending"]),
            "idle_s": round(int(one["idle"]) / 1000, 1),
        }
        for one in consumers
    ]


def rq_queue(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """The ai jobs: waiting, running, scheduled for a retry, failed (kept with tracebacks), and
    the RQ workers serving the queue."""
    queue = Queue(keys.ai_queue, connection=client)
    return {
        "queue": queue.name,
        "queued": queue.count,
        "started": queue.started_job_registry.count,
        "scheduled": queue.scheduled_job_registry.count,
        "failed": queue.failed_job_registry.count,
        "workers": Worker.count(connection=client, queue=queue),
    }


def plugin_health(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Each plugin summed over the live workers that run it (from their reports); latency is
    the worst worker's p50 and p99 over its last calls, the last error the newest reported."""
    totals: dict[str, dict[str, Any]] = {}
    for report in control.worker_reports(client, keys):
        plugins = report.get("plugins") if isinstance(report, dict) else None
        for one in plugins if isinstance(plugins, list) else []:
            if not isinstance(one, dict) or not isinstance(one.get("name"), str):
                continue  # a report from a worker of another version: skip what is not known
            total = totals.setdefault(
                one["name"],
                {
                    "plugin": one["name"],
                    "type": one.get("type"),
                    "runtime": one.get("runtime", "?"),
                    "workers": 0,
                    "states": [],
                    "p50_ms": None,
                    "p99_ms": None,
                    "last_error": "",
                },
            )
            total["workers"] += 1
            total["states"].append(str(one.get("state", "?")))
            for counter in ("calls", "entries", "failures", "restarts"):
                value = one.get(counter, 0)
                total[counter] = total.get(counter, 0) + (value if type(value) is int else 0)
            for quantile in ("p50_ms", "p99_ms"):
                if isinstance(one.get(quantile), (int, float)):
                    total[quantile] = max(total[quantile] or 0.0, one[quantile])
            total["last_error"] = one.get("last_error") or total["last_error"]
            _add_stats(total.setdefault("stats", {}), one.get("stats") or {})
    return sorted(totals.values(), key=lambda total: str(total["plugin"]))


def _add_stats(total: dict[str, Any], figures: dict[str, Any]) -> None:
    """A plugin's own figures over its workers: numbers summed, texts listed once each. Only
    numbers are summed: a figure that is not a number in some report (a plugin changed its type)
    shows the latest such value."""
    for key, value in figures.items():
        before = total.get(key)
        if _number(value):
            if before is None or _number(before):
                total[key] = (before or 0) + value
        elif isinstance(value, str) and isinstance(before, str):
            seen = [one for one in before.split(",") if one]
            total[key] = ",".join(sorted({*seen, value}))
        else:
            total[key] = value


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def render(data: dict[str, Any]) -> str:
    """The tables of ``logloom status``; with rates (``status --watch`` samples them: entries
    in per second per stream, out per second per group) when the data has them."""
    rates = any("in_per_s" in stream for stream in data["streams"])
    stream_rows: list[list[object]] = []
    for stream in data["streams"]:
        in_rate = [_rate(stream.get("in_per_s"))] if rates else []
        if not stream["groups"]:
            stream_rows.append([stream["stream"], stream["length"], *in_rate, "-", "-", "-", "-",
                                "-", *(["-"] if rates else [])])  # fmt: skip
        for g in stream["groups"]:
            lag = "?" if g["lag"] is None else f"{g['lag']}{'+' if g['lag_capped'] else ''}"
            stream_rows.append(
                [
                    stream["stream"],
                    stream["length"],
                    *in_rate,
                    g["group"],
                    g["consumers"],
                    g["pending"],
                    lag,
                    f"{g['oldest_pending_s']}s",
                    *([_rate(g.get("out_per_s"))] if rates else []),
                ]
            )
    stream_headers = [
        "STREAM", "LENGTH", *(["IN/S"] if rates else []), "GROUP", "CONSUMERS", "PENDING", "LAG",
        "OLDEST PENDING", *(["OUT/S"] if rates else []),
    ]  # fmt: skip
    dlq_rows = [
        [d["stream"], d["size"], d["plugin"] or "-", (d["newest_error"] or "-")[:80]]
        for d in data["dlq"]
    ]
    # The URL as `status` was given it, password redacted (``redis`` is set by the CLI).
    heading = f"Redis: {data['redis']}\n\n" if data.get("redis") else ""
    return (
        heading
        + table(stream_headers, stream_rows)
        + "\n\n"
        + table(["DLQ", "SIZE", "NEWEST PLUGIN", "NEWEST ERROR"], dlq_rows)
        + "\n\n"
        + table(
            ["RQ QUEUE", "QUEUED", "STARTED", "SCHEDULED", "FAILED"],
            [[data["rq"][key] for key in ("queue", "queued", "started", "scheduled", "failed")]],
        )
        + "\n\n"
        + table(
            ["PLUGIN", "RUNTIME", "WORKERS", "STATES", "ENTRIES", "FAILURES", "RESTARTS"],
            [
                [
                    p["plugin"],
                    p["runtime"],
                    p["workers"],
                    ",".join(sorted(set(p["states"]))),
                    p["entries"],
                    p["failures"],
                    p["restarts"],
                ]
                for p in data["plugins"]
            ],
        )
        + _stats_table(data["plugins"])
    )


def _stats_table(plugins: list[dict[str, Any]]) -> str:
    """Plugins' own figures (a spool's size, ...), when any plugin reports some."""
    rows = [
        [p["plugin"], " ".join(f"{key}={value}" for key, value in sorted(p["stats"].items()))]
        for p in plugins
        if p.get("stats")
    ]
    return "\n\n" + table(["PLUGIN", "ITS OWN FIGURES"], rows) if rows else ""
