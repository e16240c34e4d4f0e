"""Limits on the host side (issue 5 parts 2 and 3): a slow plugin holds at most a batch or two
in flight and the worker's memory stays flat while the backlog waits in Redis; a leaking plugin
gets its memory cap, then a fresh host, and only its own entries fail."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from conftest import FAST_STAGES
from helpers import wait_for

from pipeline.config import parse_config
from pipeline.discovery import load_plugins
from pipeline.entry import Entry
from pipeline.keys import Keys
from pipeline.plugin import Failure
from pipeline.stages.filter import FILTER_GROUP

pytestmark = [pytest.mark.slow, pytest.mark.plugins]

SLOW = """
import time
PLUGIN_INFO = {"name": "slow_filter", "version": "1.0.0", "type": "filter"}
def plugin_init(config): return 0
def plugin_shutdown(): pass
def plugin_process(entry):
    time.sleep(0.002)
    return True
"""

LEAKY = """
PLUGIN_INFO = {"name": "leaky_filter", "version": "1.0.0", "type": "filter"}
kept = []
def plugin_init(config): return 0
def plugin_shutdown(): pass
def plugin_process(entry):
    if entry["message"] == "leak":
        kept.append(bytearray(16 * 1024 * 1024))
    return True
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_slow_plugin_holds_a_bounded_batch_and_the_backlog_stays_in_redis(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    write_plugin("slow_filter", SLOW)
    config = write_config(
        plugins={
            "enabled": ["slow_filter"],
            "settings": {"slow_filter": {"mode": "isolated", "timeout_ms": 5000}},
        }
    )
    keys = Keys()
    entry = orjson.dumps({"level": "INFO", "module": "M", "message": "x" * 400})
    for _ in range(4):
        pipe = client.pipeline(transaction=False)
        for _ in range(5000):
            pipe.xadd(keys.ingest, {"entry": entry})
        pipe.execute()
    worker = workers.start(config, "filter")
    wait_for(lambda: client.xlen(keys.filtered) > 0, 30, "the slow filter to start")
    pending, rss = [], []
    for _ in range(20):
        pending.append(client.xpending(keys.ingest, FILTER_GROUP)["pending"])
        rss.append(rss_kb(worker.pid))
        time.sleep(0.25)
    batch = FAST_STAGES["batch_size"]
    # One batch at the plugin, at most one more read alongside its acknowledgement.
    assert max(pending) <= 2 * batch, pending
    assert client.xlen(keys.ingest) - client.xlen(keys.filtered) > 5000, "the backlog waits"
    assert max(rss) - min(rss) < 20_000, f"worker memory flat while behind (kB: {rss})"
    assert worker.poll() is None


def test_a_leaking_plugin_hits_its_cap_and_gets_a_fresh_host(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "leaky_filter.py").write_text(LEAKY)
    config = parse_config(
        {
            "plugins": {
                "enabled": ["leaky_filter"],
                "paths": [str(plugins)],
                "python": {"mode": "subprocess", "max_memory": 120},
            }
        }
    )
    (plugin,) = load_plugins(config)
    try:
        link = plugin.plugin.link  # type: ignore[attr-defined]
        first_host = link.child.pid
        leak = [Entry(level="INFO", module="M", message="leak")]
        results = [plugin.call_batch(leak)[0] for _ in range(10)]
        failures = [result for result in results if isinstance(result, Failure)]
        assert failures and failures[0].error.startswith("MemoryError"), results
        assert results[0] is True, "the first calls fit under the cap"
        ok = [Entry(level="INFO", module="M", message="fine")]
        assert wait_for(lambda: plugin.call_batch(ok) == [True], 10, "a fresh host")
        assert link.child.pid != first_host, "the host that ran out was replaced"
    finally:
        plugin.shutdown()
