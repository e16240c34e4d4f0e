"""Every plugin runtime through real workers on a real Redis: mixed chains, faults, control."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import wait_for
from plugin_kit import LOGLOOM, ROOT, build_bundled, compile_c, node_service, python_service, stop

from pipeline.keys import Keys

pytestmark = [pytest.mark.slow, pytest.mark.plugins]
LEVELS = ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"]

NO_NOISE = """
PLUGIN_INFO = {"name": "filter_no_noise", "version": "1.0.0", "type": "filter"}
def plugin_init(config): return 0
def plugin_process(entry):
    print("a print from the plugin")  # must not corrupt the subprocess protocol
    return "noise" not in entry["message"]
def plugin_shutdown(): pass
"""


def produce(
    client: redis.Redis, keys: Keys, count: int, special: dict[int, str], start: int = 0
) -> None:
    pipe = client.pipeline(transaction=False)
    for seq in range(start, start + count):
        message = special.get(seq, "noise here" if seq % 7 == 3 else f"entry {seq} ünïcode")
        entry = {"level": LEVELS[seq % 5], "module": "M", "message": message, "seq": seq}
        entry["timestamp"] = f"2025-04-30T12:{seq // 60 % 60:02d}:{seq % 60:02d}Z"
        pipe.xadd(keys.ingest, {"entry": orjson.dumps(entry)})
    pipe.execute()


def delivered(path: Path) -> dict[int, dict[str, Any]]:
    if not path.exists():
        return {}
    data = path.read_bytes()
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    return {(entry := orjson.loads(line))["seq"]: entry for line in lines}


def test_a_chain_of_c_python_subprocess_and_node_service_matches_pure_python(
    client: redis.Redis,
    write_config: Callable[..., Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    """design §5.5.10: filter_c → filter_python → service → sink_c, against the same logic in
    in-process Python plugins, on the same entries."""
    plugins_dir = tmp_path / "plugins"
    build_bundled(plugins_dir, "filter_severity")
    build_bundled(plugins_dir, "sink_file")
    (plugins_dir / "filter_no_noise.py").write_text(NO_NOISE)
    sock = tmp_path / "sev.sock"
    service = node_service(sock)
    try:
        mixed_out, python_out = tmp_path / "mixed.jsonl", tmp_path / "python.jsonl"
        mixed = write_config(
            redis={"prefix": "mixed"},
            plugins={
                "enabled": ["filter_severity", "filter_no_noise", "severity_service", "sink_file"],
                "settings": {"filter_no_noise": {"mode": "isolated"}},
                "services": {"severity_service": {"address": f"unix://{sock}"}},
                "config": {"sink_file": {"path": str(mixed_out)}},
            },
        )
        mixed.rename(mixed := tmp_path / "mixed.yaml")
        pure = write_config(
            redis={"prefix": "pure"},
            plugins={
                "enabled": ["log_filter_severity", "filter_no_noise", "sink_jsonl"],
                "config": {"sink_jsonl": {"path": str(python_out)}},
            },
        )
        for config in (mixed, pure):
            workers.start(config, "filter")
            workers.start(config, "sink")
        for prefix in ("mixed", "pure"):
            produce(client, Keys(prefix), 3000, {})
        expected = {s for s in range(3000) if s % 5 != 0 and s % 7 != 3}
        wait_for(lambda: set(delivered(mixed_out)) >= expected, 60, "the mixed chain's output")
        wait_for(lambda: set(delivered(python_out)) >= expected, 60, "the Python chain's output")
        assert delivered(mixed_out) == delivered(python_out), "the same entries, byte for byte"
        assert len(mixed_out.read_text().splitlines()) == len(expected), "no duplicates"
        assert client.xlen(Keys("mixed").dlq("filter")) == 0
        assert "Failed to load" not in workers.output()
    finally:
        stop(service)


def test_a_segfaulting_isolated_c_filter_sends_only_its_entries_to_the_dlq(
    client: redis.Redis, write_config: Callable[..., Path], workers: Any, tmp_path: Path
) -> None:
    compile_c(
        tmp_path / "plugins",
        "filter_crashy.so",
        """
        int plugin_process(const log_entry_t *e) {
            if (strstr(e->message, "boom")) raise(SIGSEGV);
            return 1;
        }
        """,
    )
    out = tmp_path / "out.jsonl"
    config = write_config(
        plugins={
            "enabled": ["filter_crashy", "sink_jsonl"],
            "settings": {"filter_crashy": {"mode": "isolated"}},
            "config": {"sink_jsonl": {"path": str(out)}},
        }
    )
    booms = {100: "boom 1", 700: "boom 2", 701: "boom 3"}
    produce(client, Keys(), 1000, booms)
    worker = workers.start(config, "filter")
    workers.start(config, "sink")
    wait_for(lambda: len(delivered(out)) == 1000 - len(booms), 60, "the healthy entries")
    letters = wait_for(lambda: client.xrange(Keys().dlq("filter")), 10, "dead letters")
    assert {orjson.loads(fields[b"entry"])["message"] for _, fields in letters} == set(
        booms.values()
    )
    for _, fields in letters:
        assert fields[b"plugin"] == b"filter_crashy"
        assert fields[b"error"].decode().endswith("killed by SIGSEGV")
    assert worker.poll() is None, "the worker lives on"
    assert "Plugin communication failed: filter_crashy:" in workers.output()


def test_a_hung_python_subprocess_filter_times_out_and_the_rest_flows(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    write_plugin(
        "filter_sleepy",
        """
        import time
        PLUGIN_INFO = {"name": "filter_sleepy", "version": "1.0.0", "type": "filter"}
        def plugin_init(): return 0
        def plugin_process(entry):
            if entry["message"] == "hang":
                time.sleep(60)
            return True
        def plugin_shutdown(): pass
        """,
    )
    out = tmp_path / "out.jsonl"
    config = write_config(
        plugins={
            "enabled": ["filter_sleepy", "sink_jsonl"],
            "python": {"mode": "subprocess", "timeout": 100},
            "config": {"sink_jsonl": {"path": str(out)}},
        }
    )
    produce(client, Keys(), 400, {50: "hang"})
    workers.start(config, "filter")
    workers.start(config, "sink")
    wait_for(lambda: len(delivered(out)) == 399, 60, "every entry but the hung one")
    (letter,) = wait_for(lambda: client.xrange(Keys().dlq("filter")), 10, "the dead letter")
    assert orjson.loads(letter[1][b"entry"])["seq"] == 50
    assert b"did not answer in time" in letter[1][b"error"]


def run_cli(config: Path, *args: str) -> str:
    result = subprocess.run(
        [*LOGLOOM, "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_disable_enable_reload_and_hot_reload_reach_running_workers(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    source = """
        PLUGIN_INFO = {"name": "filter_word", "version": "VERSION", "type": "filter"}
        def plugin_init(): return 0
        def plugin_process(entry): return "WORD" not in entry["message"]
        def plugin_shutdown(): pass
        """
    path = write_plugin("filter_word", source.replace("VERSION", "1.0.0").replace("WORD", "red"))
    out = tmp_path / "out.jsonl"
    config = write_config(
        plugins={
            "enabled": ["filter_word", "sink_jsonl"],
            "config": {"sink_jsonl": {"path": str(out)}},
        }
    )
    workers.start(config, "filter")
    workers.start(config, "sink")
    keys = Keys()
    wait_for(lambda: "filter_word" in run_cli(config, "plugins", "list"), 20, "the worker report")

    def send_and_count(start: int, messages: list[str]) -> list[str]:
        """Send entries, wait until both stages are done with them, return what was delivered."""
        pipe = client.pipeline(transaction=False)
        for offset, message in enumerate(messages):
            entry = {"level": "INFO", "message": message, "seq": start + offset}
            pipe.xadd(keys.ingest, {"entry": orjson.dumps(entry)})
        pipe.execute()
        wait_for(lambda: settled(client, keys.ingest), 10, "the filter stage")
        wait_for(lambda: settled(client, keys.filtered), 10, "the sink stage")
        got = delivered(out)
        return [got[seq]["message"] for seq in range(start, start + len(messages)) if seq in got]

    assert send_and_count(0, ["red 1", "blue 1"]) == ["blue 1"]
    health = {p["plugin"]: p for p in orjson.loads(run_cli(config, "status", "--json"))["plugins"]}
    assert health["filter_word"]["workers"] == 1 and health["filter_word"]["runtime"] == "python"
    assert health["sink_jsonl"]["states"] == ["ok"]
    assert "sent to 2 running worker(s)" in run_cli(config, "plugins", "disable", "filter_word")
    wait_for(lambda: "disabled" in run_cli(config, "plugins", "list"), 5, "the disabled state")
    assert send_and_count(10, ["red 2", "blue 2"]) == ["red 2", "blue 2"]
    run_cli(config, "plugins", "enable", "filter_word")
    wait_for(lambda: " ok " in run_cli(config, "plugins", "list"), 5, "the enabled state")
    assert send_and_count(20, ["red 3", "blue 3"]) == ["blue 3"]

    path.write_text(
        __import__("textwrap").dedent(source.replace("VERSION", "2.0.0").replace("WORD", "blue"))
    )
    wait_for(lambda: "2.0.0" in run_cli(config, "plugins", "list"), 10, "the hot reload")
    assert send_and_count(30, ["red 4", "blue 4"]) == ["red 4"]
    run_cli(config, "plugins", "reload", "filter_word")
    wait_for(lambda: "reloaded" in workers.output(), 10, "the ordered reload")


def settled(client: redis.Redis, stream: str) -> bool:
    """Every group on ``stream`` has read everything and has nothing pending."""
    if not client.exists(stream):
        return False
    last = client.xinfo_stream(stream)["last-generated-id"]
    groups = client.xinfo_groups(stream)
    return bool(groups) and all(
        g["pending"] == 0 and g["last-delivered-id"] == last for g in groups
    )


def test_a_service_filter_that_dies_mid_stream_loses_nothing(
    client: redis.Redis, write_config: Callable[..., Path], workers: Any, tmp_path: Path
) -> None:
    """The service crashes on one entry and is started again by its operator; every entry ends
    up delivered or in the DLQ with the cause, and the worker never stops."""
    sock = tmp_path / "sev.sock"
    service = python_service(sock, LOGLOOM_SERVICE_CRASH_ON="poison")
    out = tmp_path / "out.jsonl"
    config = write_config(
        plugins={
            "enabled": ["severity_service", "sink_jsonl"],
            "services": {"severity_service": {"address": f"unix://{sock}", "timeout_ms": 300}},
            "settings": {"severity_service": {"circuit": {"failures": 1000}}},
            "config": {"sink_jsonl": {"path": str(out)}},
        }
    )
    worker = workers.start(config, "filter")
    workers.start(config, "sink")
    keys = Keys()
    try:
        produce(client, keys, 2000, {1001: "poison"})
        service.wait(timeout=30)  # it died on the poison entry
        stop(service)
        produce(client, keys, 1000, {}, start=2000)  # while it is down
        service = python_service(sock)  # the operator (or systemd) brings it back
        wait_for(lambda: settled(client, keys.ingest), 60, "the filter stage")
        probes = iter(range(3000, 3400, 4))  # a trickle, until the worker has reconnected

        def reconnected() -> bool:
            produce(client, keys, 4, {}, start=next(probes))
            time.sleep(0.25)
            return "answers again" in workers.output()

        wait_for(reconnected, 60, "the worker to reconnect")
        produce(client, keys, 1000, {}, start=4000)  # once it is back
        wait_for(lambda: settled(client, keys.ingest), 60, "the filter stage")
        wait_for(lambda: settled(client, keys.filtered), 60, "the sink stage")

        letters = client.xrange(keys.dlq("filter"))
        lost = Counter(orjson.loads(fields[b"entry"])["seq"] for _, fields in letters)
        for _, fields in letters:
            assert fields[b"plugin"] == b"severity_service" and fields[b"error"]
        got = read_all_seqs(out)
        assert 1001 in lost and got[1001] == 0, "the poison entry is in the DLQ, not delivered"
        produced = [*range(3000), *range(3000, next(probes)), *range(4000, 5000)]
        for seq in produced:
            kept = seq % 5 != 0  # DEBUG is dropped, by the service
            assert got[seq] + lost[seq] == (1 if kept or lost[seq] else 0), f"entry {seq}"
        assert all(got[seq] == 1 for seq in range(4000, 5000) if seq % 5), "recovered"
        assert worker.poll() is None
        assert "Plugin communication failed: severity_service" in workers.output()
    finally:
        stop(service)


def read_all_seqs(path: Path) -> Counter[int]:
    data = path.read_bytes() if path.exists() else b""
    return Counter(orjson.loads(line)["seq"] for line in data.splitlines())
