"""The direct stage (``logloom worker --stage direct``): filter chain and sink in one worker,
on the ingest stream, with real worker processes and a real Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import wait_for
from test_lang import TEXTS, dict_plugin
from test_pipeline_e2e import MALFORMED, jsonl_config, produce_mixed, wait_delivered

from pipeline.config import parse_config
from pipeline.discovery import load_plugins
from pipeline.keys import Keys
from pipeline.stages.direct import DirectStage
from pipeline.stages.runner import StageLoop
from pipeline.streams import connect

pytestmark = pytest.mark.slow
KEYS = Keys()
GROUP = KEYS.direct_group("sink_jsonl")

FAILING_FILTER = """
PLUGIN_INFO = {"name": "filter_picky", "version": "1.0.0", "type": "filter"}
def plugin_init(): return 0
def plugin_process(entry):
    if "boom" in entry["message"]:
        raise ValueError("cannot judge " + entry["message"])
    return True
def plugin_shutdown(): pass
"""


def test_entries_go_straight_from_ingest_to_the_sink_without_the_filtered_stream(
    client: redis.Redis, write_config: Callable[..., Path], workers: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    workers.start(jsonl_config(write_config, out), "direct")
    expected, malformed = produce_mixed(client, 5000)
    seqs = wait_delivered(out, expected)
    assert set(seqs) == expected, "exactly the well-formed non-DEBUG entries"
    assert max(seqs.values()) == 1, "no duplicates"
    first = orjson.loads(out.read_bytes().splitlines()[0])
    assert first["level"] in {"INFO", "WARN", "ERROR", "FATAL"} and "timestamp" in first
    wait_for(lambda: client.xlen(KEYS.dlq("ingest")) == len(malformed), 10, "the ingest DLQ")
    letters = [fields for _, fields in client.xrange(KEYS.dlq("ingest"))]
    assert sorted(fields[b"source_id"] for fields in letters) == sorted(malformed)
    assert {fields[b"stage"] for fields in letters} == {b"ingest"}
    assert any(MALFORMED[0][1] in fields[b"error"].decode() for fields in letters)
    wait_for(lambda: client.xpending(KEYS.ingest, GROUP)["pending"] == 0, 10, "every entry acked")
    (group,) = client.xinfo_groups(KEYS.ingest)
    assert group["name"] == GROUP.encode() and group["lag"] == 0
    assert client.exists(KEYS.filtered) == 0, "the filtered stream is never written"


def test_a_failing_filter_dead_letters_its_entries_and_the_rest_are_delivered(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    write_plugin("filter_picky", FAILING_FILTER)
    out = tmp_path / "out.jsonl"
    config = write_config(
        plugins={
            "enabled": ["filter_picky", "sink_jsonl"],
            "config": {"sink_jsonl": {"path": str(out)}},
        }
    )
    workers.start(config, "direct")
    pipe = client.pipeline(transaction=False)
    for n in range(300):
        message = f"boom {n}" if n % 10 == 0 else f"fine {n}"
        pipe.xadd(KEYS.ingest, {"entry": orjson.dumps({"message": message, "n": n})})
    pipe.execute()
    delivered = wait_for(
        lambda: out.exists() and len(lines := out.read_bytes().splitlines()) >= 270 and lines,
        20,
        "the fine entries",
    )
    assert sorted(orjson.loads(line)["n"] for line in delivered) == [
        n for n in range(300) if n % 10
    ]
    wait_for(lambda: client.xlen(KEYS.dlq("filter")) == 30, 10, "the filter DLQ")
    letter = client.xrange(KEYS.dlq("filter"), count=1)[0][1]
    assert letter[b"plugin"] == b"filter_picky" and b"cannot judge boom 0" in letter[b"error"]
    wait_for(lambda: client.xpending(KEYS.ingest, GROUP)["pending"] == 0, 10, "every entry acked")


def test_kill_9_of_a_direct_worker_loses_nothing(
    client: redis.Redis, write_config: Callable[..., Path], workers: Any, tmp_path: Path
) -> None:
    """The entries in the killed worker's hands (read, buffered, maybe written) stay pending in
    its group; the next worker takes them over: each entry delivered at least once."""
    out = tmp_path / "out.jsonl"
    config = jsonl_config(write_config, out, sink={"batch_size": 50})
    expected, _ = produce_mixed(client, 20_000)
    victim = workers.start(config, "direct")
    wait_for(lambda: len(read_lines(out)) > 500, 30, "the first worker to get going")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert len(read_lines(out)) < len(expected), "killed mid-stream"
    workers.start(config, "direct")
    seqs = wait_delivered(out, expected)
    assert set(seqs) == expected
    duplicates = sum(count - 1 for count in seqs.values())
    assert duplicates <= 400, f"{duplicates} duplicates: more than a buffer's worth"


def test_a_direct_worker_refuses_two_sinks_or_another_reader_of_the_ingest_stream(
    client: redis.Redis, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Each reader of the ingest stream judges every entry: a second one would write every dead
    letter again. So a deployment runs one direct sink, alone on the ingest stream."""

    def direct_worker(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "worker",
             "--stage", "direct", "--metrics-port", "-1", *extra],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip

    out = tmp_path / "out.jsonl"
    enabled = ["log_filter_severity", "sink_jsonl", "sink_console"]
    two = jsonl_config(write_config, out, plugins={"enabled": enabled})
    refused = direct_worker(two)
    assert refused.returncode == 2, refused.stderr
    assert "runs exactly one sink (enabled: sink_jsonl, sink_console)" in refused.stderr
    client.xgroup_create(KEYS.ingest, "filter", id="0", mkstream=True)
    refused = direct_worker(two, "--sink", "sink_jsonl")
    assert refused.returncode == 2, refused.stderr
    assert f"XGROUP DESTROY {KEYS.ingest} filter" in refused.stderr
    assert client.xinfo_groups(KEYS.ingest)[0]["name"] == b"filter", "nothing created"
    assert len(client.xinfo_groups(KEYS.ingest)) == 1
    # A sink that fails to load may be waiting for its destination: exit 1, started again.
    broken = {"enabled": ["log_filter_severity", "sink_jsonl"],
              "config": {"sink_jsonl": {"path": str(out), "no_such_setting": 1}}}  # fmt: skip
    failed = direct_worker(write_config(plugins=broken))
    assert failed.returncode == 1, failed.stderr
    assert "Direct worker: no sink loaded (Failed to load plugin 'sink_jsonl" in failed.stderr


def test_lang_keys_are_resolved_before_the_sink_gets_the_entry(
    redis_url: str, write_plugin: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write_plugin("lang_dict", dict_plugin(TEXTS))
    out = tmp_path / "out.jsonl"
    config = parse_config(
        {
            "plugins": {
                "enabled": ["log_filter_severity", "lang_dict", "sink_jsonl"],
                "paths": [str(tmp_path / "plugins")],
                "config": {"sink_jsonl": {"path": str(out)}},
            },
            "lang": {"locales": ["en", "zh"]},
            "stages": {"block_ms": 10},
        }
    )
    plugins = {plugin.info.type: plugin for plugin in load_plugins(config)}
    stage = DirectStage(
        config, [plugins["filter"]], [plugins["lang"]], plugins["sink"], threading.Event()
    )
    loop = StageLoop(connect(redis_url), stage, config.stages, 100)
    loop.ensure_groups()
    client = redis.Redis.from_url(redis_url)
    for entry in (
        {"level": "ERROR", "lang_key": "auth.login", "params": {"user": "u1"}},
        {"level": "DEBUG", "lang_key": "auth.login", "params": {"user": "dropped"}},
        {"level": "INFO", "message": "plain"},
    ):
        client.xadd(KEYS.ingest, {"entry": orjson.dumps(entry)})
    loop.step()
    loop.finish()
    for plugin in plugins.values():
        plugin.shutdown()
    written = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [one["message"] for one in written] == ["User u1 logged in", "plain"]
    assert written[0]["message_i18n"] == {"en": "User u1 logged in", "zh": "用户 u1 已登录"}
    assert client.xpending(KEYS.ingest, GROUP)["pending"] == 0


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []
