"""``python -m benchmarks.profile``: one throughput figure run over and over, for a profiler.

Runs a figure of ``python -m benchmarks`` (``--figure``, default the filter worker) ``--repeat``
times on its own private Redis and prints each run's entries/s, with nothing else in the
process to blur the profile. ``make profile`` records it with py-spy as a flame graph
(``--idle``: time spent waiting for Redis shows as the socket read it is)::

    .venv/bin/py-spy record --idle -r 500 -o filter.svg -- .venv/bin/python -m benchmarks.profile
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import redis

from benchmarks.__main__ import FIGURES, make_workload
from benchmarks.figures import Bench, redis_server


def main(argv: list[str] | None = None) -> int:
    by_key = {figure.key: figure for figure in FIGURES if figure.baseline != "rsyslog"}
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--figure", choices=sorted(by_key), default="filter_worker")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    figure = by_key[args.figure]
    workload = make_workload(args.entries)
    with tempfile.TemporaryDirectory(prefix="logloom-profile-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as (host, port):
            client = redis.Redis(host=host, port=port)
            bench = Bench(client, f"redis://{host}:{port}/0", host, port, workdir)
            for attempt in range(1, args.repeat + 1):
                client.flushall()
                seconds = figure.run(bench, workload)
                print(f"run {attempt}/{args.repeat}  {figure.label}  "
                      f"{workload.count / seconds:,.0f} entries/s", flush=True)  # fmt: skip
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
