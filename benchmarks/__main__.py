"""``python -m benchmarks``: filter and sink throughput of Logloom against hand-written loops.

Starts a private redis-server, generates the entries once, runs every figure ``--repeat`` times
(interleaved, each on a freshly loaded stream), prints machine facts and a table of median
entries/s with ratios, and optionally writes the results as JSON. Exits 1 if any figure's
output is wrong.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from benchmarks.e2e import (
    CPU,
    ensure_rsyslog,
    logloom_pipeline,
    logloom_pipeline_bare_producer,
    logloom_pipeline_direct,
    logloom_pipeline_two_direct,
    logloom_pipeline_two_filters,
    rsyslog_pipeline,
    rsyslog_version,
)
from benchmarks.figures import (
    Bench,
    Workload,
    direct_stage,
    filter_worker,
    hiredis_filter_loop,
    raw_filter_loop,
    raw_sink_loop,
    redis_server,
    run_and_report,
    sink_stage,
)
from benchmarks.lang import CPU_SECONDS, lang_off, lang_on
from benchmarks.machine import machine_facts, print_facts
from pipeline.entry import decode
from workers.demo import realistic_entries

SEED = 7


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    run: Callable[[Bench, Workload], float]
    baseline: str  # the key of the raw redis-py loop of the same kind


FIGURES = [
    Figure("raw_filter", "raw redis-py loop", raw_filter_loop, "raw_filter"),
    Figure("filter_worker", "logloom filter worker", filter_worker, "raw_filter"),
    Figure("hiredis_filter", "bare hiredis loop", hiredis_filter_loop, "raw_filter"),
    Figure("raw_sink", "raw redis-py sink loop", raw_sink_loop, "raw_sink"),
    Figure("sink_stage", "logloom sink stage (sink_jsonl)", sink_stage, "raw_sink"),
    Figure("direct_stage", "logloom direct stage (filter, sink)", direct_stage, "raw_sink"),
    Figure("lang_off", "filter worker, lang off", lang_off, "lang_off"),
    Figure("lang_on", "filter worker, lang on (en, zh)", lang_on, "lang_off"),
    Figure("rsyslog", "rsyslog imfile→mmjsonparse→omfile", rsyslog_pipeline, "rsyslog"),
    Figure("e2e", "logloom e2e, 1 filter + 1 sink", logloom_pipeline, "rsyslog"),
    Figure("e2e_2f", "logloom e2e, 2 filter + 1 sink", logloom_pipeline_two_filters, "rsyslog"),
    Figure(
        "e2e_bare",
        "logloom e2e, 2 + 1, bare producer",
        logloom_pipeline_bare_producer,
        "rsyslog",
    ),
    Figure("e2e_direct", "logloom e2e, 1 direct worker", logloom_pipeline_direct, "rsyslog"),
    Figure("e2e_direct_2", "logloom e2e, 2 direct workers", logloom_pipeline_two_direct, "rsyslog"),
]

EXTRA_RATIOS = [
    ("filter_worker_vs_bare_hiredis", "filter_worker", "hiredis_filter"),
    ("lang_on_vs_off", "lang_on", "lang_off"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--entries", type=int, default=200_000, help="entries per figure")
    parser.add_argument(
        "--e2e-entries",
        type=int,
        default=1_000_000,
        help="entries per end-to-end figure (rsyslog and Logloom against it): at 200,000 "
        "rsyslog's runs are over in 0.4 s and swing by half",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median kept)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--figures",
        metavar="KEY,...",
        help=f"only these figures (and their baselines): {', '.join(f.key for f in FIGURES)}",
    )
    args = parser.parse_args(argv)
    if min(args.entries, args.e2e_entries, args.repeat) < 1:
        parser.error("--entries, --e2e-entries and --repeat must be at least 1")
    args.figures = chosen_figures(parser, args.figures)
    return args


def chosen_figures(parser: argparse.ArgumentParser, keys: str | None) -> list[Figure]:
    if not keys:
        return FIGURES
    by_key = {figure.key: figure for figure in FIGURES}
    wanted = set(keys.split(","))
    unknown = wanted - by_key.keys()
    if unknown:
        parser.error(f"--figures: unknown {', '.join(sorted(unknown))}")
    wanted |= {by_key[key].baseline for key in wanted}
    return [figure for figure in FIGURES if figure.key in wanted]


def make_workload(count: int) -> Workload:
    payloads = []
    forwarded = []
    kept = 0
    stream_id = b"%d-0" % int(time.time() * 1000)
    for entry in realistic_entries(count, SEED):
        payloads.append(orjson.dumps(entry))
        forwarded.append(decode(stream_id, {b"entry": payloads[-1]}, 1 << 20)[1])
        kept += entry["level"] != "DEBUG"
    return Workload(payloads, forwarded, kept)


def need_rsyslog(args: argparse.Namespace) -> dict[str, str]:
    """Install rsyslog if a chosen figure compares with it; if it cannot be had, drop those
    figures and say why. The facts to print: its version, or why it was skipped."""
    if not any(figure.baseline == "rsyslog" for figure in args.figures):
        return {}
    rsyslogd, why = ensure_rsyslog()
    if rsyslogd is None:
        args.figures = [figure for figure in args.figures if figure.baseline != "rsyslog"]
        return {"rsyslog": f"SKIPPED the end-to-end figures: {why}"}
    return {"rsyslog": rsyslog_version(rsyslogd)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rsyslog = need_rsyslog(args)
    workload = make_workload(args.entries)
    end_to_end = any(figure.baseline == "rsyslog" for figure in args.figures)
    e2e_workload = make_workload(args.e2e_entries) if end_to_end else workload
    sizes = [len(payload) for payload in workload.payloads]
    with tempfile.TemporaryDirectory(prefix="logloom-bench-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as (host, port):
            client = redis.Redis(host=host, port=port)
            facts = machine_facts(client) | rsyslog
            print_facts(facts)
            print(
                f"{'workload:':17} {workload.count} entries, {workload.kept} not DEBUG "
                f"({workload.kept / workload.count:.0%} kept), "
                f"{min(sizes)}–{max(sizes)} bytes (mean {statistics.fmean(sizes):.0f}), "
                f"{args.repeat} repeat(s)"
                + (f"; {e2e_workload.count} for the end-to-end figures" if end_to_end else "")
            )
            print()
            bench = Bench(client, f"redis://{host}:{port}/0", host, port, workdir)
            rates: dict[str, list[float]] = {figure.key: [] for figure in args.figures}
            for round_ in range(1, args.repeat + 1):
                for figure in args.figures:
                    client.flushall()
                    load = e2e_workload if figure.baseline == "rsyslog" else workload
                    seconds = figure.run(bench, load)
                    rates[figure.key].append(load.count / seconds)
                    print(
                        f"  run {round_}/{args.repeat}  {figure.label:34} "
                        f"{seconds:7.3f} s  {load.count / seconds:>10,.0f} entries/s",
                        flush=True,
                    )
            client.close()
    medians = {key: statistics.median(values) for key, values in rates.items()}
    return {
        "machine": facts,
        "entries": workload.count,
        "e2e_entries": e2e_workload.count,
        "kept": workload.kept,
        "repeat": args.repeat,
        "figures": [
            {
                "key": figure.key,
                "figure": figure.label,
                "entries_per_s": rates[figure.key],
                "median_entries_per_s": medians[figure.key],
                "baseline": figure.baseline,
                "ratio_vs_baseline": medians[figure.key] / medians[figure.baseline],
            }
            for figure in args.figures
        ],
        **{
            name: medians[figure] / medians[baseline]
            for name, figure, baseline in EXTRA_RATIOS
            if figure in medians and baseline in medians
        },
        **lang_cpu(),
        **({"e2e_cpu_seconds": CPU} if any(CPU.values()) else {}),
    }


def lang_cpu() -> dict[str, Any]:
    """The lang figures by the CPU time of this process: entries per CPU second, on / off."""
    runs = CPU_SECONDS
    if not (runs["lang_on"] and runs["lang_off"]):
        return {}
    return {
        "lang_cpu_seconds": runs,
        "lang_on_vs_off_cpu": statistics.median(runs["lang_off"])
        / statistics.median(runs["lang_on"]),
    }


def print_table(results: dict[str, Any]) -> None:
    labels = {figure.key: figure.label for figure in FIGURES}
    print()
    header = f"{'figure':34} {'median entries/s':>17} {'runs min–max':>19}  {'ratio':>5}  vs"
    print(header)
    print("-" * (len(header) + 20))
    for row in results["figures"]:
        runs = row["entries_per_s"]
        spread = f"{min(runs):,.0f}–{max(runs):,.0f}"
        print(
            f"{row['figure']:34} {row['median_entries_per_s']:>17,.0f} {spread:>19}  "
            f"{row['ratio_vs_baseline']:>5.2f}  {labels[row['baseline']]}"
        )
    print()
    if "filter_worker_vs_bare_hiredis" in results:
        ratio = results["filter_worker_vs_bare_hiredis"]
        print(f"logloom filter worker / bare hiredis loop: {ratio:.2f}")
    for row in results["figures"]:
        if row["baseline"] == "rsyslog" and row["key"] != "rsyslog":
            print(f"{row['figure']} / rsyslog: {row['ratio_vs_baseline']:.2f} (aim: 0.50)")
    print_e2e_cpu(results)
    if "lang_on_vs_off" in results:
        print(f"filter worker, lang on / lang off: {results['lang_on_vs_off']:.2f} (aim: 0.80)")
    if "lang_on_vs_off_cpu" in results:
        cpu = results["lang_cpu_seconds"]
        print(
            f"  the same by CPU time of this process: {results['lang_on_vs_off_cpu']:.2f} "
            f"(median {statistics.median(cpu['lang_off']):.2f} s off, "
            f"{statistics.median(cpu['lang_on']):.2f} s on)"
        )


def print_e2e_cpu(results: dict[str, Any]) -> None:
    """Where the cores went in the end-to-end figures: median CPU µs per entry by process."""
    runs = results.get("e2e_cpu_seconds", {})
    for key, label in (
        ("rsyslog", "rsyslog"),
        ("e2e", "1 filter + 1 sink"),
        ("e2e_2f", "2 + 1"),
        ("e2e_bare", "2 + 1, bare producer"),
        ("e2e_direct", "1 direct worker"),
        ("e2e_direct_2", "2 direct workers"),
    ):
        if not runs.get(key):
            continue
        names = list(runs[key][0])
        parts = []
        for name in names:
            value = statistics.median(run[name] for run in runs[key])
            if name == "producer wall":
                parts.append(f"producer done after {value:.2f} s")
            else:
                parts.append(f"{name} {value / results['e2e_entries'] * 1e6:.1f}")
        print(f"  CPU µs per entry, {label}: " + ", ".join(parts))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    return run_and_report(args, run, print_table)


if __name__ == "__main__":
    sys.exit(main())
