"""End to end on a real Redis with real worker processes: nothing lost, faults contained."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import start_redis_server, wait_for

from pipeline.keys import Keys

pytestmark = pytest.mark.slow
KEYS = Keys()
LEVELS = ["DEBUG", "INFO", "warning", "ERROR", "critical"]
MALFORMED = [
    ({b"entry": b'{"level": "INFO", "message": '}, "bad JSON"),
    ({b"level": b"VERBOSE", b"message": b"m"}, "unknown level 'VERBOSE'"),
    ({b"entry": b'{"level": "ERROR", "module": "X"}'}, "neither message nor lang_key"),
    ({b"entry": b'["not", "an", "object"]'}, "not an object"),
]


def produce_mixed(client: redis.Redis, count: int, start: int = 0) -> tuple[set[int], list[bytes]]:
    """``count`` entries, half JSON and half flat, 1 in 50 malformed, each with a unique ``seq``.

    Returns the seqs that must reach the sinks (well-formed, not DEBUG) and the stream IDs of
    the malformed entries.
    """
    expected: set[int] = set()
    malformed: list[bytes] = []
    pipe = client.pipeline(transaction=False)
    for seq in range(start, start + count):
        if seq % 50 == 49:
            pipe.execute()  # in order, and its ID known
            malformed.append(client.xadd(KEYS.ingest, MALFORMED[(seq // 50) % len(MALFORMED)][0]))
            continue
        level = LEVELS[seq % len(LEVELS)]
        if level != "DEBUG":
            expected.add(seq)
        if seq % 2:
            entry = {
                "level": level,
                "module": "AUTH",
                "message": f"entry {seq}",
                "seq": seq,
                "params": {"user": "alice"},
            }
            pipe.xadd(KEYS.ingest, {"entry": orjson.dumps(entry)})
        else:
            pipe.xadd(
                KEYS.ingest,
                {"level": level, "module": "DB", "message": f"entry {seq}", "seq": str(seq)},
            )
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    return expected, malformed


def read_seqs(path: Path) -> collections.Counter[int]:
    """How often each ``seq`` is in a JSON-lines file (a line still being written is skipped)."""
    if not path.exists():
        return collections.Counter()
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    return collections.Counter(int(orjson.loads(line)["seq"]) for line in complete.splitlines())


def jsonl_config(write_config: Callable[..., Path], out: Path, **extra: Any) -> Path:
    plugins = {
        "enabled": ["log_filter_severity", "sink_jsonl"],
        "config": {"sink_jsonl": {"path": str(out)}},
    }
    plugins.update(extra.pop("plugins", {}))
    return write_config(plugins=plugins, **extra)


def wait_delivered(out: Path, expected: set[int], timeout: float = 60) -> collections.Counter[int]:
    return wait_for(
        lambda: (seqs := read_seqs(out)) and set(seqs) >= expected and seqs,
        timeout,
        f"{len(expected)} entries in {out}",
    )


def test_ten_thousand_mixed_entries_reach_the_sink_and_malformed_ones_the_dlq(
    client: redis.Redis, write_config: Callable[..., Path], workers: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = jsonl_config(write_config, out)
    workers.start(config, "filter")
    workers.start(config, "sink")
    expected, malformed = produce_mixed(client, 10_000)
    seqs = wait_delivered(out, expected)
    assert set(seqs) == expected, "exactly the well-formed non-DEBUG entries"
    assert max(seqs.values()) == 1, "no duplicates"
    first = orjson.loads(out.read_bytes().splitlines()[0])
    assert first["level"] in {"INFO", "WARN", "ERROR", "FATAL"} and "timestamp" in first
    wait_for(lambda: client.xlen(KEYS.dlq("ingest")) == len(malformed), 10, "the ingest DLQ")
    letters = client.xrange(KEYS.dlq("ingest"))
    reasons = collections.Counter()
    for _, fields in letters:
        assert fields[b"stage"] == b"ingest" and fields[b"source_stream"] == KEYS.ingest.encode()
        for _, reason in MALFORMED:
            if reason in fields[b"error"].decode():
                reasons[reason] += 1
    # The ingest stream may be trimmed by now: each letter names the entry it was, by its ID.
    assert sorted(fields[b"source_id"] for _, fields in letters) == sorted(malformed)
    assert sum(reasons.values()) == len(malformed) and len(reasons) == len(MALFORMED)
    assert client.xlen(KEYS.dlq("filter")) == 0 and client.xlen(KEYS.dlq("sink")) == 0


def test_kill_9_of_a_filter_worker_loses_nothing(
    client: redis.Redis, write_config: Callable[..., Path], workers: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = jsonl_config(write_config, out, stages={"batch_size": 50})
    expected, _ = produce_mixed(client, 20_000)
    victim = workers.start(config, "filter")
    wait_for(lambda: client.xlen(KEYS.filtered) > 500, 30, "the first worker to get going")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert client.xlen(KEYS.filtered) < len(expected), "killed mid-stream"
    workers.start(config, "filter")
    workers.start(config, "sink")
    seqs = wait_delivered(out, expected)
    assert set(seqs) == expected
    duplicates = sum(count - 1 for count in seqs.values())
    assert duplicates <= 50, f"{duplicates} duplicates: more than one batch"


def test_sigterm_loses_nothing_and_duplicates_nothing(
    client: redis.Redis, write_config: Callable[..., Path], workers: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = jsonl_config(
        write_config,
        out,
        stages={"batch_size": 50},
        sink={"batch_size": 50, "flush_interval_ms": 5000},
    )
    expected, _ = produce_mixed(client, 20_000)
    filter_worker = workers.start(config, "filter")
    sink_worker = workers.start(config, "sink")
    wait_for(lambda: len(read_seqs(out)) > 200, 30, "the sink to get going")
    for worker in (filter_worker, sink_worker):
        worker.send_signal(signal.SIGTERM)
    assert filter_worker.wait(timeout=15) == 0 and sink_worker.wait(timeout=15) == 0
    groups = {g["name"]: g for g in client.xinfo_groups(KEYS.ingest)}
    assert groups[b"filter"]["pending"] == 0, "everything read was acknowledged on the way out"
    assert len(read_seqs(out)) < len(expected), "stopped mid-stream"
    workers.start(config, "filter")
    workers.start(config, "sink")
    seqs = wait_delivered(out, expected)
    assert set(seqs) == expected and max(seqs.values()) == 1


FLAKY_SINK = """
import json
PLUGIN_INFO = {"name": "sink_flaky", "version": "1.0.0", "type": "sink"}
settings = {}
calls = {"n": 0}
def plugin_init(config):
    settings.update(config)
    return 0
def flush(entries):
    calls["n"] += 1
    if calls["n"] <= settings["fail_first"]:
        raise ConnectionError(f"remote down (call {calls['n']})")
    with open(settings["path"], "a") as out:
        out.writelines(json.dumps(dict(e)) + "\\n" for e in entries)
    return 0
def plugin_shutdown(): pass
"""

BROKEN_SINK = """
import os
PLUGIN_INFO = {"name": "sink_broken", "version": "1.0.0", "type": "sink"}
settings = {}
def plugin_init(config):
    settings.update(config)
    return 0
def plugin_process(entry):
    if os.path.exists(settings["down_flag"]):
        return 7
    with open(settings["path"], "a") as out:
        out.write('{"seq": %d}\\n' % int(entry["seq"]))
    return 0
def plugin_shutdown(): pass
"""


def test_a_sink_that_fails_twice_then_succeeds_delivers_everything(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[..., Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    write_plugin("sink_flaky", FLAKY_SINK)
    out = tmp_path / "flaky.jsonl"
    config = write_config(
        plugins={
            "enabled": ["log_filter_severity", "sink_flaky"],
            "config": {"sink_flaky": {"path": str(out), "fail_first": 2}},
        }
    )
    expected, _ = produce_mixed(client, 1000)
    workers.start(config, "filter")
    workers.start(config, "sink")
    seqs = wait_delivered(out, expected)
    assert set(seqs) == expected and max(seqs.values()) == 1
    assert client.xlen(KEYS.dlq("sink")) == 0
    # ConnectionError: the destination is down, not the entries bad; held, not dead-lettered.
    assert (
        "Sink 'sink_flaky': destination unavailable: ConnectionError: remote down (call 1)"
        in workers.output()
    )
    assert "Sink 'sink_flaky': destination back after" in workers.output()


def test_an_always_failing_sink_fills_its_dlq_and_never_blocks_the_other(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[..., Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    write_plugin("sink_broken", BROKEN_SINK)
    out, broken_out, flag = tmp_path / "out.jsonl", tmp_path / "broken.jsonl", tmp_path / "down"
    flag.touch()
    config = write_config(
        plugins={
            "enabled": ["log_filter_severity", "sink_jsonl", "sink_broken"],
            "config": {
                "sink_jsonl": {"path": str(out)},
                "sink_broken": {"path": str(broken_out), "down_flag": str(flag)},
            },
            # The breaker would hold the entries back instead (the next test): off here.
            "settings": {"sink_broken": {"circuit": {"failures": 1_000_000}}},
        },
        sink={"retry": {"max_attempts": 3, "backoff_initial_ms": 50, "backoff_max_ms": 100}},
    )
    expected, _ = produce_mixed(client, 2000)
    workers.start(config, "filter")
    workers.start(config, "sink")
    seqs = wait_delivered(out, expected)
    assert set(seqs) == expected and max(seqs.values()) == 1
    wait_for(lambda: client.xlen(KEYS.dlq("sink")) == len(expected), 30, "the sink DLQ to fill")
    _, fields = client.xrange(KEYS.dlq("sink"), count=1)[0]
    assert fields[b"plugin"] == b"sink_broken" and fields[b"error"] == b"returned 7, expected 0"
    assert fields[b"attempts"] == b"3" and fields[b"stage"] == b"sink"
    assert fields[b"replay_to"] == KEYS.sink_replay("sink_broken").encode()
    assert not broken_out.exists()
    assert (
        f"Sink 'sink_broken': 200 entries sent to {KEYS.dlq('sink')} after 3 attempts"
        in workers.output()
    )

    flag.unlink()
    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "--config",
            str(config),
            "dlq",
            "replay",
            "sink",
            "--all",
        ],
        capture_output=True,
        text=True,
    )
    assert replay.returncode == 0, replay.stderr
    assert f"replayed {len(expected)} dead letters" in replay.stdout
    assert set(wait_delivered(broken_out, expected)) == expected
    assert client.xlen(KEYS.dlq("sink")) == 0
    assert max(read_seqs(out).values()) == 1, "replay reached only the sink that failed"


def test_a_sink_whose_destination_is_down_holds_its_entries_until_it_is_back(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[..., Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    """The breaker opens after a few failed flushes; then the sink waits rather than spend its
    attempts, so what it could not deliver stays pending, not dead-lettered."""
    write_plugin("sink_broken", BROKEN_SINK)
    out, flag = tmp_path / "out.jsonl", tmp_path / "down"
    flag.touch()
    config = write_config(
        plugins={
            "enabled": ["log_filter_severity", "sink_broken"],
            "config": {"sink_broken": {"path": str(out), "down_flag": str(flag)}},
            "settings": {"sink_broken": {"circuit": {"failures": 2, "cooldown_s": 0.5}}},
        },
        sink={"retry": {"max_attempts": 2, "backoff_initial_ms": 50, "backoff_max_ms": 100}},
    )
    expected, _ = produce_mixed(client, 3000)
    workers.start(config, "filter")
    workers.start(config, "sink")
    wait_for(lambda: "circuit open" in workers.output(), 30, "the breaker to open")
    time.sleep(2)  # a few cooldowns: the sink waits, its entries stay pending
    dead = client.xlen(KEYS.dlq("sink"))
    assert dead <= 2 * 200, "at most the batches tried before the breaker opened"
    flag.unlink()
    seqs = wait_delivered(out, expected - dead_seqs(client))
    assert client.xlen(KEYS.dlq("sink")) == dead, "nothing more dead-lettered"
    assert set(seqs) | dead_seqs(client) == expected


def dead_seqs(client: redis.Redis) -> set[int]:
    return {
        int(orjson.loads(fields[b"entry"])["seq"]) for _, fields in client.xrange(KEYS.dlq("sink"))
    }


def test_a_filter_that_raises_or_answers_garbage_dead_letters_only_those_entries(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[..., Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    write_plugin(
        "filter_picky",
        """
        PLUGIN_INFO = {"name": "filter_picky", "version": "1.0.0", "type": "filter"}
        def plugin_init(): return 0
        def plugin_process(entry):
            seq = int(entry["seq"])
            if seq % 7 == 0:
                raise KeyError("no such customer")
            if seq % 11 == 0:
                return "keep"
            return True
        def plugin_shutdown(): pass
    """,
    )
    out = tmp_path / "out.jsonl"
    config = jsonl_config(
        write_config,
        out,
        plugins={"enabled": ["log_filter_severity", "filter_picky", "sink_jsonl"]},
    )
    expected, _ = produce_mixed(client, 1000)
    raised = {s for s in expected if s % 7 == 0}
    garbage = {s for s in expected if s % 11 == 0} - raised
    workers.start(config, "filter")
    workers.start(config, "sink")
    seqs = wait_delivered(out, expected - raised - garbage)
    assert set(seqs) == expected - raised - garbage
    wait_for(lambda: client.xlen(KEYS.dlq("filter")) == len(raised | garbage), 10, "filter DLQ")
    errors = collections.Counter()
    for _, fields in client.xrange(KEYS.dlq("filter")):
        assert fields[b"plugin"] == b"filter_picky"
        errors[fields[b"error"].decode()] += 1
    assert errors == {
        "KeyError: 'no such customer'": len(raised),
        "returned str, a filter must return bool": len(garbage),
    }
    assert "Plugin 'filter_picky' failed on" in workers.output()


def test_an_entry_that_kills_its_workers_ends_in_the_dlq_and_spares_the_rest(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[..., Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    write_plugin(
        "filter_fragile",
        """
        import os
        PLUGIN_INFO = {"name": "filter_fragile", "version": "1.0.0", "type": "filter"}
        def plugin_init(): return 0
        def plugin_process(entry):
            if entry["message"] == "entry 13":
                os._exit(3)  # a crash no try/except can catch, like a segfault
            return True
        def plugin_shutdown(): pass
    """,
    )
    out = tmp_path / "out.jsonl"
    config = jsonl_config(
        write_config,
        out,
        stages={"max_deliveries": 2, "claim_idle_ms": 300},
        plugins={"enabled": ["filter_fragile", "sink_jsonl"]},
    )
    produce_mixed(client, 40)
    expected = {s for s in range(40) if s % 50 != 49} - {13}
    for _ in range(6):
        worker = workers.start(config, "filter")
        try:
            worker.wait(timeout=3)
        except subprocess.TimeoutExpired:
            break
    letters = client.xrange(KEYS.dlq("filter"))
    assert len(letters) == 1
    assert orjson.loads(letters[0][1][b"entry"])["message"] == "entry 13"
    assert b"delivered more than 2 times" in letters[0][1][b"error"]
    workers.start(config, "sink")
    assert set(wait_delivered(out, expected)) == expected


def test_acknowledged_entries_are_trimmed_unread_ones_never(
    client: redis.Redis, write_config: Callable[..., Path], workers: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = jsonl_config(write_config, out)
    expected, _ = produce_mixed(client, 3000)
    workers.start(config, "filter")
    wait_for(lambda: client.xlen(KEYS.ingest) < 1000, 30, "the ingest stream to be trimmed")
    assert client.xlen(KEYS.filtered) == len(expected), "no sink has read these: kept"
    workers.start(config, "sink")
    wait_delivered(out, expected)
    wait_for(lambda: client.xlen(KEYS.filtered) < 1000, 30, "the filtered stream to be trimmed")


def test_workers_ride_out_a_redis_restart(
    tmp_path: Path, write_config: Callable[..., Path], workers: Any
) -> None:
    binary = shutil.which("redis-server")
    assert binary
    server, url = start_redis_server(binary, tmp_path)
    own = redis.Redis.from_url(url)
    try:
        out = tmp_path / "out.jsonl"
        config = jsonl_config(write_config, out, redis={"url": url})
        workers.start(config, "filter")
        workers.start(config, "sink")
        first, _ = produce_mixed(own, 500)
        wait_delivered(out, first)
        server.terminate()
        server.wait()
        server, _ = start_redis_server(
            binary, tmp_path, port=own.connection_pool.connection_kwargs["port"]
        )
        second, _ = produce_mixed(own, 500, start=1000)
        assert set(wait_delivered(out, first | second)) == first | second
        assert "Redis unavailable" in workers.output()
        assert all(p.poll() is None for p in workers.processes), "workers stayed up"
    finally:
        own.close()
        server.terminate()
        server.wait()


def test_workers_wait_out_a_redis_that_refuses_writes(
    client: redis.Redis, write_config: Callable[..., Path], workers: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = jsonl_config(write_config, out)
    expected, _ = produce_mixed(client, 2000)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")  # every write is refused with OOM
    try:
        workers.start(config, "filter")
        workers.start(config, "sink")
        wait_for(lambda: "Redis refused (OutOfMemoryError" in workers.output(), 20, "the refusal")
        assert not out.exists() or not read_seqs(out)
    finally:
        client.config_set("maxmemory", "0")
    seqs = wait_delivered(out, expected)
    assert set(seqs) == expected and max(seqs.values()) == 1
    assert all(p.poll() is None for p in workers.processes), "workers stayed up"
