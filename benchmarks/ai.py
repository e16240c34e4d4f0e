"""``python -m benchmarks.ai``: entries/s through the ai stage, batched jobs against one job per
entry, in one run on one private redis-server.

Both runs analyse the same realistic entries with ``ai_log_templates`` (Drain3) in one process
that is what ``logloom worker --stage ai`` is: the ai stage reads the filtered stream and
enqueues jobs, then an RQ ``SimpleWorker`` runs them (``burst``: until the queue is empty). The
clock runs from the first read to the last job done. A run counts only if every entry was
analysed (the plugin's own count, from its final summary) and no job failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import redis
import yaml
from rq.worker import SimpleWorker

from benchmarks.figures import BenchmarkError, load_stream, redis_server
from pipeline import ai
from pipeline.config import load_config
from pipeline.stages.ai import AiStage
from pipeline.stages.runner import StageLoop
from pipeline.streams import connect
from workers.demo import realistic_entries

PLUGIN = "ai_log_templates"


def analyse(url: str, workdir: Path, entries: int, batch_size: int) -> float:
    """Entries/s of one stage + worker process with jobs of ``batch_size`` entries."""
    client = redis.Redis.from_url(url)
    client.flushall()
    ai.shutdown_plugins()  # a fresh template miner per run
    path = workdir / f"ai-{batch_size}.yaml"  # jobs read the config file, as in production
    path.write_text(
        yaml.safe_dump(
            {
                "redis": {"url": url},
                "plugins": {"enabled": [PLUGIN], "config": {PLUGIN: {"summary_every": entries}}},
                "ai": {"batch_size": batch_size, "max_queued_jobs": 1_000_000, "retries": 0},
            }
        )
    )
    config = load_config(path)
    payloads = [orjson.dumps(entry) for entry in realistic_entries(entries, seed=5)]
    load_stream(client, config.keys.filtered, payloads)
    stage = AiStage(config, redis.Redis.from_url(url), [PLUGIN])
    loop = StageLoop(connect(url), stage, config.stages, 1000)
    loop.ensure_groups()
    started = time.perf_counter()
    while client.xinfo_groups(config.keys.filtered)[0]["lag"]:
        loop.step()
    stage.drain()
    worker = SimpleWorker([stage.queue], connection=redis.Redis.from_url(url))
    worker.work(burst=True, logging_level="ERROR")
    elapsed = time.perf_counter() - started
    check(client, config.keys.ai_results, stage.queue.failed_job_registry.count, entries)
    ai.shutdown_plugins()
    return entries / elapsed


def check(client: redis.Redis, results: str, failed: int, entries: int) -> None:
    if failed:
        raise BenchmarkError(f"{failed} jobs failed")
    summaries = [
        orjson.loads(fields[b"result"])
        for _, fields in client.xrange(results)
        if b"template_summary" in fields[b"result"]
    ]
    if not summaries or summaries[-1]["entries"] != entries:
        raise BenchmarkError(f"the plugin did not see all {entries} entries: {summaries[-1:]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=50_000, help="for the batched runs")
    parser.add_argument("--per-entry", type=int, default=1_000, help="for one job per entry")
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as workdir, redis_server(Path(workdir)) as (host, port):
            url = f"redis://{host}:{port}/0"
            batched, single = [], []
            for run in range(args.repeats):
                batched.append(analyse(url, Path(workdir), args.entries, args.batch_size))
                single.append(analyse(url, Path(workdir), args.per_entry, 1))
                print(f"run {run + 1}: batched {batched[-1]:,.0f}/s, per entry {single[-1]:,.0f}/s")
    except BenchmarkError as exc:
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    best_batched, best_single = max(batched), max(single)
    print()
    print("| ai stage + RQ SimpleWorker, ai_log_templates | best entries/s |")
    print("| --- | ---: |")
    print(f"| jobs of {args.batch_size} entries | {best_batched:,.0f} |")
    print(f"| one job per entry | {best_single:,.0f} |")
    print(f"| ratio | {best_batched / best_single:.0f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
