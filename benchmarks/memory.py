"""``python -m benchmarks.memory``: worker RSS while a sink is 10× too slow.

Starts a private redis-server, a filter worker and a sink worker (``logloom worker --stage
filter|sink``) whose sink (``benchmarks/plugins/bench_latency_sink.py``, ``sink_jsonl`` plus a
sleep per entry) can take only a tenth of what the filter forwards, offers ``--rate`` entries/s
for ``--seconds`` and samples each worker's RSS every second from ``/proc``. A worker with
bounded buffers leaves the backlog in Redis (the sink group's lag grows, the worker does not):
the figure is RSS before, after and at most, and its growth after the first ``--warm-up``
seconds. Exits 1 if a worker's RSS grew more than FLAT_LIMIT_MIB after warm-up, or one died.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from benchmarks.figures import group_info, redis_server, run_and_report
from benchmarks.live import SINK, RssSampler, make_bodies, offer, pipeline_config, running_workers
from benchmarks.machine import machine_facts, print_facts

FLAT_LIMIT_MIB = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("--rate", type=float, default=5_000, help="entries/s offered")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long (default 120)")
    parser.add_argument(
        "--slowdown", type=float, default=10.0, help="how many times too slow the sink is"
    )
    parser.add_argument(
        "--warm-up", type=float, default=10.0, help="seconds before growth is counted"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    if min(args.rate, args.seconds, args.slowdown) <= 0 or not 0 <= args.warm_up < args.seconds:
        parser.error("--rate, --seconds, --slowdown must be positive, --warm-up below --seconds")
    return args


def mib(kib: float) -> float:
    return kib / 1024


def run(args: argparse.Namespace) -> dict[str, Any]:
    bodies = make_bodies()
    kept_rate = args.rate * sum(bodies.kept) / len(bodies.kept)
    seconds_per_entry = args.slowdown / kept_rate
    with tempfile.TemporaryDirectory(prefix="logloom-memory-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as (host, port):
            client = redis.Redis(host=host, port=port)
            facts = machine_facts(client)
            print_facts(facts)
            raw = pipeline_config(f"redis://{host}:{port}/0", workdir, {}, seconds_per_entry)
            with running_workers(client, raw, workdir) as workers:
                print(
                    f"offering {args.rate:,.0f} entries/s for {args.seconds:g} s; the filter "
                    f"forwards ~{kept_rate:,.0f}/s, the sink takes {1 / seconds_per_entry:,.0f}/s "
                    f"({args.slowdown:g}× too slow) ...",
                    flush=True,
                )
                sampler = RssSampler(workers, client)
                sampler.sample()
                sampler.start()
                offered = offer(client, workers.config.keys.ingest, bodies, args.rate,
                                args.seconds, workers=workers)  # fmt: skip
                sampler.halt.set()
                sampler.join()
                sampler.sample()
                keys = workers.config.keys
                lag = group_info(client, keys.filtered, keys.sink_group(SINK))["lag"]
                delivered = len((workdir / "times").read_bytes().splitlines())
            client.close()
    warm = min(len(sampler.samples["redis"]) - 1, int(args.warm_up))
    worker_samples = {stage: kib for stage, kib in sampler.samples.items() if stage != "redis"}
    growth_mib = {stage: mib(max(kib[warm:]) - kib[warm]) for stage, kib in worker_samples.items()}
    workers_rss = {
        stage: {
            "before_mib": mib(samples[0]),
            "after_warm_up_mib": mib(samples[warm]),
            "after_mib": mib(samples[-1]),
            "max_mib": mib(max(samples)),
            "growth_after_warm_up_mib": growth_mib[stage],
            "samples_kib": samples,
        }
        for stage, samples in worker_samples.items()
    }
    redis_memory = sampler.samples["redis"]
    return {
        "machine": facts,
        "offered_rate": args.rate,
        "achieved_rate": offered.rate,
        "sink_capacity_per_s": 1 / seconds_per_entry,
        "seconds": offered.seconds,
        "sent": offered.sent,
        "delivered_by_sink": delivered,
        "sink_group_lag": lag,  # unread by the sink, in Redis (None: Redis cannot tell)
        "kept_not_written": offered.kept - delivered,
        "redis_used_memory_mib": {
            "before": redis_memory[0] / 2**20,
            "after": redis_memory[-1] / 2**20,
        },
        "workers": workers_rss,
        "flat": all(growth <= FLAT_LIMIT_MIB for growth in growth_mib.values()),
    }


def print_results(results: dict[str, Any], warm_up_s: float) -> None:
    print()
    print(
        f"offered {results['offered_rate']:,.0f} entries/s, achieved "
        f"{results['achieved_rate']:,.0f} ({results['sent']:,} in {results['seconds']:.0f} s); "
        f"the sink wrote {results['delivered_by_sink']:,}, "
        f"{results['kept_not_written']:,} not yet (its group's lag in Redis: "
        f"{results['sink_group_lag']})"
    )
    used = results["redis_used_memory_mib"]
    print(f"Redis used_memory: {used['before']:.1f} MiB before, {used['after']:.1f} MiB after")
    print()
    header = (
        f"{'worker RSS (MiB)':18} {'before':>7} {f'at {warm_up_s:g} s':>8} {'after':>7} "
        f"{'max':>7} {'growth after warm-up':>21}"
    )
    print(header)
    print("-" * len(header))
    for stage, rss in results["workers"].items():
        print(
            f"{stage + ' worker':18} {rss['before_mib']:7.1f} {rss['after_warm_up_mib']:8.1f} "
            f"{rss['after_mib']:7.1f} {rss['max_mib']:7.1f} "
            f"{rss['growth_after_warm_up_mib']:21.1f}"
        )
    verdict = "flat" if results["flat"] else "NOT flat"
    print(f"\n{verdict} (limit: {FLAT_LIMIT_MIB:g} MiB of growth after warm-up per worker)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flat: list[bool] = []

    def report(results: dict[str, Any]) -> None:
        print_results(results, args.warm_up)
        flat.append(results["flat"])

    return run_and_report(args, run, report) or (0 if all(flat) else 1)


if __name__ == "__main__":
    sys.exit(main())
