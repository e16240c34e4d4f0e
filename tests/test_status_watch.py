"""``logloom status --watch``: the tables refreshed in place, with rates, from real workers."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import wait_for
from plugin_kit import LOGLOOM
from test_tap import produce_until

from pipeline.keys import Keys

pytestmark = pytest.mark.slow


def test_status_watch_refreshes_with_rates(
    client: redis.Redis, write_config: Callable[..., Path], workers: Any, tmp_path: Path
) -> None:
    config = write_config(plugins={"enabled": ["log_filter_severity"]})
    keys = Keys()
    workers.start(config, "filter")
    wait_for(lambda: "Filter worker" in workers.output(), 30, "the filter worker")
    done = threading.Event()
    producer = threading.Thread(target=produce_until, args=(client, keys, done))
    producer.start()
    try:
        watched = subprocess.run(
            [*LOGLOOM, "--config", str(config), "status", "--watch", "--interval", "0.5",
             "--count", "5"],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
        )  # fmt: skip
    finally:
        done.set()
        producer.join()
    assert watched.returncode == 0, watched.stderr
    frames = watched.stdout.split("logloom status, ")[1:]
    assert len(frames) == 5
    assert "IN/S" in frames[0] and "OUT/S" in frames[0]
    assert "\x1b[2J" not in watched.stdout, "no screen clearing when not on a terminal"
    rows = [re.search(r"^logloom:ingest\s+\d+\s+(\S+)\s+filter\s.*\s(\S+)$", frame, re.M)
            for frame in frames]  # fmt: skip
    assert all(rows), frames[-1]
    in_rates = [row.group(1) for row in rows if row]
    assert in_rates[0] == "-", "no rate from a single sample"
    assert float(in_rates[-1]) > 0, "entries flow in: ~160/s produced"
    assert float(rows[-1].group(2)) > 0 if rows[-1] else False, "and out"


def test_a_worker_report_of_another_version_does_not_break_status(client: redis.Redis) -> None:
    from pipeline import status

    keys = Keys()
    client.set(keys.worker_report("old-1"), b'{"worker": "old-1", "plugins": [{"name": "a"}]}')
    client.set(keys.worker_report("odd-2"), b'{"worker": "odd-2", "plugins": "nope"}')
    client.set(keys.worker_report("new-3"), b'{"worker": "new-3", "plugins": [{"name": "a", '
               b'"runtime": "python", "state": "ok", "calls": 4, "entries": 40, "failures": 1, '
               b'"restarts": 0, "p99_ms": 2.5}]}')  # fmt: skip
    (health,) = status.plugin_health(client, keys)
    assert health["plugin"] == "a" and health["workers"] == 2
    assert health["calls"] == 4 and health["entries"] == 40 and health["p99_ms"] == 2.5
