"""``python -m benchmarks.latency``: XADD-to-sink-write latency through real worker processes.

Starts a private redis-server, a filter worker and a sink worker (``logloom worker --stage
filter|sink``) with the default batch and flush settings unless told otherwise, offers entries
at ``--rate`` for ``--seconds``, each stamped with ``time.time_ns()`` as it is sent, and reads
back when the sink wrote each one (``benchmarks/plugins/bench_latency_sink.py``: the bundled
``sink_jsonl`` plus a clock). Prints p50/p90/p99/p99.9/max over every entry the filter kept, and
the offered against the achieved rate. Exits 1 if an entry is missing or a worker died.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.figures import BenchmarkError, redis_server, run_and_report
from benchmarks.live import Workers, make_bodies, offer, pipeline_config, running_workers
from benchmarks.machine import machine_facts, print_facts

AIM_P99_MS = 100.0
DRAIN_TIMEOUT_S = 30.0
# Load goes on this long after the measured window, so the window's last entries fill their
# batches as in steady state instead of waiting out sink.flush_interval_ms once the load stops.
COOL_DOWN_S = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__)
    parser.add_argument("--rate", type=float, default=10_000, help="entries/s offered")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument(
        "--tick-ms", type=float, default=2.0, help="the producer sends what is due this often"
    )
    knobs = parser.add_argument_group("knobs (default: the config's defaults)")
    knobs.add_argument("--sink-batch-size", type=int, metavar="N")
    knobs.add_argument("--sink-flush-interval-ms", type=int, metavar="MS")
    knobs.add_argument("--stages-batch-size", type=int, metavar="N")
    knobs.add_argument("--stages-block-ms", type=int, metavar="MS")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.tick_ms <= 0:
        parser.error("--rate, --seconds and --tick-ms must be positive")
    return args


def overrides(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    sink = {"batch_size": args.sink_batch_size, "flush_interval_ms": args.sink_flush_interval_ms}
    stages = {"batch_size": args.stages_batch_size, "block_ms": args.stages_block_ms}
    return {
        "sink": {key: value for key, value in sink.items() if value is not None},
        "stages": {key: value for key, value in stages.items() if value is not None},
    }


def knob_values(workers: Workers) -> dict[str, int]:
    config = workers.config
    return {
        "sink.batch_size": config.sink.batch_size,
        "sink.flush_interval_ms": config.sink.flush_interval_ms,
        "stages.batch_size": config.stages.batch_size,
        "stages.block_ms": config.stages.block_ms,
    }


def read_times(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    pairs = []
    for line in path.read_bytes().splitlines():
        sent, written = line.split()
        pairs.append((int(sent), int(written)))
    return pairs


def wait_delivered(path: Path, expected: int, workers: Workers) -> list[tuple[int, int]]:
    """The sink's (sent_ns, written_ns) pairs, once it has written ``expected`` entries."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        pairs = read_times(path)
        if len(pairs) >= expected:
            return pairs
        workers.check_alive()
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"the sink wrote {len(pairs)} of {expected} entries within "
                f"{DRAIN_TIMEOUT_S:.0f} s of the last XADD"
            )
        time.sleep(0.2)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    bodies = make_bodies()
    with tempfile.TemporaryDirectory(prefix="logloom-latency-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as (host, port):
            client = redis.Redis(host=host, port=port)
            facts = machine_facts(client)
            print_facts(facts)
            raw = pipeline_config(f"redis://{host}:{port}/0", workdir, overrides(args))
            with running_workers(client, raw, workdir) as workers:
                knobs = knob_values(workers)
                print(f"{'knobs:':17} " + ", ".join(f"{k} {v}" for k, v in knobs.items()))
                print(
                    f"offering {args.rate:,.0f} entries/s for {args.seconds:g} s "
                    f"(+ {COOL_DOWN_S:g} s not measured) ...",
                    flush=True,
                )
                window_end_ns = time.time_ns() + int(args.seconds * 1e9)
                offered = offer(
                    client, workers.config.keys.ingest, bodies, args.rate,
                    args.seconds + COOL_DOWN_S, args.tick_ms / 1000, workers,
                )  # fmt: skip
                pairs = wait_delivered(workdir / "times", offered.kept, workers)
            client.close()
    if len(pairs) != offered.kept:
        raise BenchmarkError(f"the sink wrote {len(pairs)} entries, expected {offered.kept}")
    measured = [(sent, written) for sent, written in pairs if sent <= window_end_ns]
    latencies_ms = sorted((written - sent) / 1e6 for sent, written in measured)
    return {
        "machine": facts,
        "knobs": knobs,
        "offered_rate": args.rate,
        "achieved_rate": offered.rate,
        "sent": offered.sent,
        "seconds": offered.seconds,
        "delivered": len(pairs),
        "measured": len(measured),
        "latency_ms": {
            name: percentile(latencies_ms, fraction)
            for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
        }
        | {"max": latencies_ms[-1], "min": latencies_ms[0]},
    }


def print_results(results: dict[str, Any]) -> None:
    latency = results["latency_ms"]
    print()
    print(
        f"offered {results['offered_rate']:,.0f} entries/s, achieved "
        f"{results['achieved_rate']:,.0f} entries/s ({results['sent']:,} in "
        f"{results['seconds']:.1f} s); the sink wrote all {results['delivered']:,} the filter "
        "kept"
    )
    print(
        f"latency XADD → sink write of the {results['measured']:,} sent in the window (ms): "
        + "  ".join(f"{name} {value:.1f}" for name, value in latency.items())
    )
    verdict = "met" if latency["p99"] < AIM_P99_MS else "NOT met"
    print(f"aim p99 < {AIM_P99_MS:.0f} ms: {verdict}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report(args, run, print_results)


if __name__ == "__main__":
    sys.exit(main())
