"""``python -m benchmarks.scaleout``: 1, 2 and 4 filter workers on one Redis and on a 3-shard
Redis Cluster, and where the curve bends.

Each run loads the entries before the clock (on the cluster, ``redis.partitions: 3``, spread
round robin, each partition's slot on a master of its own), creates the filter group at the end
of each stream, starts ``logloom worker --stage filter`` ×N (the bundled severity filter, defaults
otherwise) and waits until every worker's loop is blocked in its read. The clock starts when
the group is moved back to the first entry (XGROUP SETID, then one XADD per stream to wake the
blocked readers) and stops once every group has read and acknowledged everything. CPU seconds
of each redis-server and worker come from /proc over the same interval: how many cores Redis
and the workers kept busy, and Redis's CPU per entry, which says where one Redis saturates.
Exits 1 if an output stream is not exactly the non-DEBUG entries or anything was dead-lettered.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from benchmarks.cluster import Cluster
from benchmarks.e2e import cpu_seconds
from benchmarks.figures import BenchmarkError, redis_server, run_and_report, wait_until
from benchmarks.live import Workers, start_workers, stop_workers
from benchmarks.machine import machine_facts, print_facts
from pipeline.config import Config, parse_config
from pipeline.keys import FILTER_GROUP
from workers.demo import realistic_entries

SEED = 7
LOAD_BATCH = 1000
TIMEOUT_S = 300.0
READY_TIMEOUT_S = 60.0
WAKE = orjson.dumps({"level": "INFO", "module": "BENCH", "message": "go"})


@dataclass
class Layout:
    """Where the entries live: one Redis or a cluster, as the workers' config names it."""

    name: str
    url: str
    nodes: dict[int, redis.Redis]  # by port: one client per redis-server, to load and sample
    owner: Callable[[str], int] | None = None  # a cluster's: the port serving a key

    @property
    def partitions(self) -> int:
        return 1 if self.owner is None else 3

    def config(self) -> dict[str, Any]:
        redis_section: dict[str, Any] = {"url": self.url, "embedded": "never"}
        if self.owner is not None:
            redis_section |= {"cluster": True, "partitions": self.partitions}
        return {
            "redis": redis_section,
            "plugins": {"enabled": ["log_filter_severity"]},
            # Trimming would delete the loaded entries before the clock: the group starts at
            # each stream's end, so to the workers they are read and acknowledged already.
            "stages": {"trim_interval_s": 3600},
        }

    def node_for(self, key: str) -> redis.Redis:
        """The client of the redis-server serving ``key``."""
        if self.owner is None:
            return next(iter(self.nodes.values()))
        return self.nodes[self.owner(key)]


@dataclass(frozen=True)
class Run:
    seconds: float
    redis_cpu: float  # CPU seconds of every redis-server, summed
    workers_cpu: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workers", default="1,2,4", help="filter worker counts, comma-separated (1,2,4)"
    )
    parser.add_argument("--no-cluster", action="store_true", help="one Redis only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    args.counts = [int(part) for part in args.workers.split(",")]
    return args


# --- one run ------------------------------------------------------------------------------


def load(layout: Layout, config: Config, payloads: list[bytes]) -> list[str]:
    """The entries, round robin over the partitions' ingest streams, and the filter group at
    each stream's end (the workers see nothing until :func:`release`); the streams."""
    streams = [part.ingest for part in config.keys.partitions()]
    for node in layout.nodes.values():
        node.flushall()
    for index, stream in enumerate(streams):
        node = layout.node_for(stream)
        share = payloads[index :: len(streams)]
        for start in range(0, len(share), LOAD_BATCH):
            pipe = node.pipeline(transaction=False)
            for payload in share[start : start + LOAD_BATCH]:
                pipe.xadd(stream, {b"entry": payload})
            pipe.execute()
        node.xgroup_create(stream, FILTER_GROUP, id="$", mkstream=True)
    if layout.owner is not None and len({layout.owner(stream) for stream in streams}) < 3:
        raise BenchmarkError(f"the partitions do not fall on three masters: {streams}")
    return streams


def release(layout: Layout, streams: list[str]) -> None:
    """Move the group back to the first entry, and wake the readers blocked on each stream."""
    for stream in streams:
        node = layout.node_for(stream)
        node.xgroup_setid(stream, FILTER_GROUP, "0")
        node.xadd(stream, {b"entry": WAKE})


def all_acknowledged(layout: Layout, streams: list[str]) -> bool:
    """Every stream read to its end and nothing pending (XINFO GROUPS lag: Redis 7.0+)."""
    for stream in streams:
        for group in layout.node_for(stream).xinfo_groups(stream):
            if group.get("lag") != 0 or group["pending"] != 0:
                return False
    return True


@contextmanager
def filter_workers(
    layout: Layout, raw: dict[str, Any], count: int, workdir: Path
) -> Iterator[Workers]:
    """``count`` filter workers, each blocked in its first read; stopped at the end."""
    workers = start_workers(raw, workdir, [f"filter-{index}" for index in range(1, count + 1)])

    def all_reading() -> bool:
        blocked = sum(
            1
            for node in layout.nodes.values()
            for client in node.client_list()
            if client.get("cmd") == "xreadgroup" and "b" in client.get("flags", "")
        )
        return blocked >= count * layout.partitions

    try:
        wait_until(all_reading, READY_TIMEOUT_S, "the workers to block in a read", workers.problem)
        yield workers
        workers.check_alive()
    finally:
        stop_workers(workers)


def one_run(layout: Layout, workers: int, payloads: list[bytes], kept: int, workdir: Path) -> Run:
    raw = layout.config()
    config = parse_config(raw)
    streams = load(layout, config, payloads)
    redis_pids = [int(node.info("server")["process_id"]) for node in layout.nodes.values()]
    with filter_workers(layout, raw, workers, workdir) as running:
        pids = redis_pids + [process.pid for process in running.processes.values()]
        before = [cpu_seconds(pid) for pid in pids]
        started = time.perf_counter()
        release(layout, streams)
        wait_until(
            lambda: all_acknowledged(layout, streams), TIMEOUT_S, "the last ack", running.problem
        )
        elapsed = time.perf_counter() - started
        used = [cpu_seconds(pid) - was for pid, was in zip(pids, before, strict=True)]
    forwarded = sum(int(layout.node_for(part.filtered).xlen(part.filtered))
                    for part in config.keys.partitions())  # fmt: skip
    expected = kept + len(streams)  # the wake-up entries are INFO
    if forwarded != expected:
        raise BenchmarkError(
            f"{layout.name}, {workers} workers: {forwarded} forwarded, expected {expected}"
        )
    dead = sum(
        int(layout.node_for(part.dlq(stage)).xlen(part.dlq(stage)))
        for part in config.keys.partitions()
        for stage in ("ingest", "filter")
    )
    if dead:
        raise BenchmarkError(f"{layout.name}, {workers} workers: {dead} entries dead-lettered")
    return Run(elapsed, sum(used[: len(redis_pids)]), sum(used[len(redis_pids) :]))


# --- the whole benchmark ------------------------------------------------------------------


@contextmanager
def layouts(workdir: Path, with_cluster: bool) -> Iterator[list[Layout]]:
    with redis_server(workdir) as (host, port):
        single = Layout("one Redis", f"redis://{host}:{port}/0", {port: redis.Redis(host, port)})
        if not with_cluster:
            yield [single]
            return
        (workdir / "cluster").mkdir()
        partitions = parse_config({"redis": {"partitions": 3}}).keys.partitions()
        cluster = Cluster(workdir / "cluster", homes=[part.ingest for part in partitions])
        try:
            nodes = dict(zip(cluster.ports, cluster.nodes, strict=True))
            yield [single, Layout("3-shard cluster", cluster.url, nodes, cluster.owner)]
        finally:
            cluster.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    entries = list(realistic_entries(args.entries, seed=SEED))
    payloads = [orjson.dumps(entry) for entry in entries]
    kept = sum(1 for entry in entries if entry["level"] != "DEBUG")
    results: dict[str, Any] = {"entries": args.entries, "figures": []}
    with (
        tempfile.TemporaryDirectory(prefix="logloom-scaleout-") as tmp,
        layouts(Path(tmp), not args.no_cluster) as found,
    ):
        facts = machine_facts(next(iter(found[0].nodes.values())))
        results["machine"] = facts
        print_facts(facts)
        runs: dict[tuple[str, int], list[Run]] = {}
        for attempt in range(1, args.repeat + 1):
            for layout in found:
                for workers in args.counts:
                    measured = one_run(layout, workers, payloads, kept, Path(tmp))
                    runs.setdefault((layout.name, workers), []).append(measured)
                    rate = args.entries / measured.seconds
                    print(
                        f"  run {attempt}/{args.repeat}  {layout.name:16} {workers} workers  "
                        f"{measured.seconds:6.3f} s  {rate:10,.0f} entries/s",
                        flush=True,
                    )
    for (name, workers), taken in runs.items():
        seconds = statistics.median(run.seconds for run in taken)
        results["figures"].append(
            {
                "layout": name,
                "workers": workers,
                "entries_per_s": args.entries / seconds,
                "runs_entries_per_s": [args.entries / run.seconds for run in taken],
                "redis_cores": statistics.median(run.redis_cpu / run.seconds for run in taken),
                "workers_cores": statistics.median(run.workers_cpu / run.seconds for run in taken),
                "redis_us_per_entry": statistics.median(
                    run.redis_cpu / args.entries * 1e6 for run in taken
                ),
            }
        )
    return results


def print_results(results: dict[str, Any]) -> None:
    print()
    print(
        f"{'layout':16} {'workers':>7} {'entries/s':>10} {'per worker':>10} {'vs 1':>5} "
        f"{'Redis cores':>11} {'worker cores':>12} {'Redis µs/entry':>14}"
    )
    print("-" * 94)
    ones = {
        figure["layout"]: figure["entries_per_s"]
        for figure in results["figures"]
        if figure["workers"] == 1
    }
    for figure in results["figures"]:
        rate, workers = figure["entries_per_s"], figure["workers"]
        single = ones.get(figure["layout"])
        versus = f"{rate / single:5.2f}" if single else "    -"
        print(
            f"{figure['layout']:16} {workers:>7} {rate:>10,.0f} {rate / workers:>10,.0f} "
            f"{versus} {figure['redis_cores']:>11.2f} {figure['workers_cores']:>12.2f} "
            f"{figure['redis_us_per_entry']:>14.1f}"
        )
    print()
    for figure in results["figures"]:
        if figure["workers"] == 1:
            ceiling = (
                1e6 / figure["redis_us_per_entry"] * (3 if "cluster" in figure["layout"] else 1)
            )
            print(
                f"{figure['layout']}: Redis spends {figure['redis_us_per_entry']:.1f} µs of CPU "
                f"an entry; with a core for each redis-server, it saturates near "
                f"{ceiling:,.0f} entries/s"
            )


def main(argv: list[str] | None = None) -> int:
    return run_and_report(parse_args(argv), run, print_results)


if __name__ == "__main__":
    sys.exit(main())
