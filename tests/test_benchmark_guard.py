"""The regression guard of ``python -m benchmarks``: a short run that fails only on a gross
regression, judged by a ratio measured in the same run, never by an absolute time.

The filter worker must keep at least half the pace of the hand-written redis-py loop (the
full benchmark has it at about 0.9×). Both run three times, interleaved, on the runner's own
private redis-server, and each is judged by its best run, so a burst of load on a shared machine
must hit every run of one figure and none of the other to fail the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from benchmarks.__main__ import make_workload
from benchmarks.figures import Bench, filter_worker, raw_filter_loop, redis_server

ENTRIES = 30_000
ROUNDS = 3
MIN_RATIO = 0.5


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_filter_worker_keeps_half_the_pace_of_the_raw_loop(tmp_path: Path) -> None:
    workload = make_workload(ENTRIES)
    seconds: dict[str, list[float]] = {"raw": [], "worker": []}
    with redis_server(tmp_path) as (host, port):
        client = redis.Redis(host=host, port=port)
        bench = Bench(client, f"redis://{host}:{port}/0", host, port, tmp_path)
        for _ in range(ROUNDS):
            for name, figure in (("raw", raw_filter_loop), ("worker", filter_worker)):
                client.flushall()
                seconds[name].append(figure(bench, workload))  # checks its output, too
        client.close()
    ratio = min(seconds["raw"]) / min(seconds["worker"])
    runs = "; ".join(f"{name} {[round(s, 3) for s in each]} s" for name, each in seconds.items())
    assert ratio >= MIN_RATIO, (
        f"filter worker at {ratio:.2f}× the raw redis-py loop (best of {ROUNDS}; runs: {runs}); "
        f"below {MIN_RATIO}× is a gross regression"
    )
