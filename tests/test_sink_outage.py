"""A sink's destination down for longer than a worker may look idle: held entries stay with the
worker that holds them, entries blamed for their own failure still reach the DLQ, and each
entry is delivered once when the destination is back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import produce_requests, wait_for

from pipeline.config import PluginSettings, parse_config
from pipeline.health import GuardedPlugin
from pipeline.keys import Keys
from pipeline.runtimes import load_plugin
from pipeline.stages.sink import SinkStage

pytestmark = pytest.mark.slow

# A per-entry sink (plugin_process, not flush): ConnectionError while the flag file exists;
# entries saying "bad" are refused for good.
GATED = """
import os
PLUGIN_INFO = {"name": "sink_gated", "version": "1.0.0", "type": "sink"}
settings = {}
def plugin_init(config):
    settings.update(config)
    return 0
def plugin_shutdown(): pass
def plugin_process(entry):
    if "bad" in entry["message"]:
        raise ValueError("refused for good")
    if os.path.exists(settings["down_flag"]):
        raise ConnectionError("destination down")
    with open(settings["path"], "a") as out:
        out.write(entry["message"] + "\\n")
    return 0
"""


def delivered(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_long_outage_keeps_each_entry_with_its_worker_and_delivers_it_once(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    write_plugin("sink_gated", GATED)
    out, flag = tmp_path / "out.txt", tmp_path / "down"
    flag.touch()
    config = write_config(
        plugins={
            "enabled": ["sink_gated"],
            "config": {"sink_gated": {"path": str(out), "down_flag": str(flag)}},
        },
        sink={"flush_interval_ms": 100, "batch_size": 50,
              "retry": {"max_attempts": 2, "backoff_initial_ms": 50, "backoff_max_ms": 200}},
    )  # fmt: skip
    workers.start(config, "filter")
    workers.start(config, "sink")
    workers.start(config, "sink")
    pipe = client.pipeline(transaction=False)
    for seq in range(3):  # first, so they share a batch with entries the outage holds
        entry = {"level": "INFO", "module": "api", "message": f"bad request {seq}"}
        pipe.xadd(Keys().ingest, {"entry": orjson.dumps(entry)})
    pipe.execute()
    produce_requests(client, 0, 300)
    # Held well past claim_idle_ms (1.5 s here) several times over.
    wait_for(lambda: client.xlen(Keys().dlq("sink")) == 3, 30, "the 3 bad entries")
    threading.Event().wait(6.0)
    assert delivered(out) == [], "nothing gets through while the destination is down"
    flag.unlink()
    wait_for(lambda: len(delivered(out)) >= 300, 60, "every entry, once the destination is back")
    threading.Event().wait(1.0)  # room for a duplicate to show up
    lines = delivered(out)
    assert sorted(lines) == sorted(f"request {seq}" for seq in range(300)), "each exactly once"
    letters = client.xrange(Keys().dlq("sink"))
    assert sorted(orjson.loads(f[b"entry"])["message"] for _, f in letters) == [
        f"bad request {seq}" for seq in range(3)
    ], "only the entries blamed for their failure"
    assert "destination unavailable: ConnectionError: destination down" in workers.output()


def test_entry_ids_are_unique_across_partitions(tmp_path: Path) -> None:
    config = parse_config({"redis": {"partitions": 3}})
    sink = tmp_path / "sink_null.py"
    sink.write_text(
        "PLUGIN_INFO = {'name': 'sink_null', 'version': '1.0.0', 'type': 'sink'}\n"
        "def plugin_init(config): return 0\n"
        "def plugin_shutdown(): pass\n"
        "def flush(entries): return 0\n"
    )
    plugin = GuardedPlugin(load_plugin(sink, {}), PluginSettings(), 500)
    entry = {b"entry": orjson.dumps({"level": "INFO", "module": "m", "message": "x",
                                     "timestamp": "2025-04-30T12:00:00Z"})}  # fmt: skip
    ids = []
    for keys in config.keys.partitions()[:2]:
        stage = SinkStage(config, plugin, threading.Event(), keys=keys)
        stage.handle(stage.streams[0], [(b"1-0", entry)])
        stage.handle(stage.streams[1], [(b"1-0", entry)])
        ids += [one.entry.id for one in stage.buffer]
    assert ids == ["p0/1-0", "p0/replay/1-0", "p1/1-0", "p1/replay/1-0"]
