"""The command line against a real Redis: produce, status, dlq, validate, backpressure."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis

from pipeline.config import parse_config
from pipeline.errors import BackpressureError
from pipeline.keys import Keys
from pipeline.producer import Producer

KEYS = Keys()


def logloom(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_produce_json_and_text_lines(client: redis.Redis, write_config, tmp_path: Path) -> None:
    config = write_config()
    lines = (
        '{"level": "ERROR", "module": "AUTH", "message": "bad password"}\n'
        "plain text line\n\n{broken json\n"
    )
    result = logloom(config, "produce", "--module", "APP", stdin=lines)
    assert result.returncode == 0, result.stderr
    assert "produced 3 entries to logloom:ingest" in result.stderr
    sent = [fields[b"entry"] for _, fields in client.xrange(KEYS.ingest)]
    assert orjson.loads(sent[0])["module"] == "AUTH"
    assert orjson.loads(sent[1]) == {"level": "INFO", "module": "APP", "message": "plain text line"}
    assert sent[2] == b"{broken json", "sent as is: the pipeline dead-letters it, loses nothing"


def test_status_and_dlq_commands(client: redis.Redis, write_config, tmp_path: Path) -> None:
    config = write_config()
    client.xgroup_create(KEYS.ingest, "filter", id="0", mkstream=True)
    client.xadd(KEYS.ingest, {"level": "INFO", "message": "waiting"})
    letter_id = client.xadd(
        KEYS.dlq("ingest"),
        {
            "entry": '{"level": "INFO", "message": "fixed"}',
            "error": "unknown level 'VERBOSE'",
            "plugin": "",
            "stage": "ingest",
            "attempts": "1",
            "source_stream": KEYS.ingest,
            "source_id": "1-0",
            "replay_to": KEYS.ingest,
            "failed_at": "t",
        },
    ).decode()

    status = logloom(config, "status")
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith("logloom:ingest"))
    assert row.split()[:6] == ["logloom:ingest", "1", "filter", "0", "0", "1"]
    assert "unknown level 'VERBOSE'" in status.stdout

    listing = logloom(config, "dlq", "list", "ingest")
    assert letter_id in listing.stdout and "unknown level" in listing.stdout
    shown = orjson.loads(logloom(config, "dlq", "show", "ingest", letter_id).stdout)
    assert shown["id"] == letter_id and shown["source_stream"] == KEYS.ingest
    assert logloom(config, "dlq", "replay", "ingest").returncode == 2, "needs ids or --all"
    missing = logloom(config, "dlq", "replay", "ingest", "999-0")
    assert missing.returncode == 1 and "no dead letter 999-0" in missing.stderr
    assert client.xlen(KEYS.dlq("ingest")) == 1, "nothing replayed on a bad request"

    replayed = logloom(config, "dlq", "replay", "ingest", letter_id)
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout
    assert client.xlen(KEYS.dlq("ingest")) == 0
    last = client.xrevrange(KEYS.ingest, count=1)[0][1]
    assert orjson.loads(last[b"entry"])["message"] == "fixed"

    client.xadd(KEYS.dlq("sink"), {"entry": "{}", "error": "e"})
    purged = logloom(config, "dlq", "purge", "sink", "--all")
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    assert client.xlen(KEYS.dlq("sink")) == 0


def test_validate_names_each_plugin_that_fails(write_config, write_plugin, tmp_path: Path) -> None:
    write_plugin(
        "filter_half",
        'PLUGIN_INFO = {"name": "filter_half", "version": "1.0.0", '
        '"type": "filter"}\ndef plugin_init(): return 0\ndef plugin_shutdown(): pass\n',
    )
    config = write_config(plugins={"enabled": ["log_filter_severity", "filter_half"]})
    result = logloom(config, "validate")
    assert result.returncode == 2
    warning = "[WARN] Failed to load plugin 'filter_half.py': missing plugin_process()"
    assert warning in result.stderr
    assert "ok  log_filter_severity" in result.stdout


def test_producer_fails_loudly_or_waits_when_ingest_is_full(client: redis.Redis) -> None:
    config = parse_config({"ingest": {"max_len": 10, "producer_batch": 5, "backpressure": "fail"}})
    producer = Producer.from_config(client, config)
    for n in range(10):
        producer.send({"message": f"m{n}"})
    with pytest.raises(BackpressureError, match=r"holds 10 entries, over ingest\.max_len=10"):
        producer.send_many([{"message": "one too many"}] * 5)
    assert client.xlen(KEYS.ingest) == 10, "nothing trimmed, nothing half-sent"

    waiting = Producer(
        client, KEYS, batch=5, max_len=10, backpressure="wait", backpressure_timeout_s=10
    )
    threading.Timer(0.5, lambda: client.xtrim(KEYS.ingest, maxlen=0)).start()
    started = time.monotonic()
    waiting.send_many([{"message": "later"}] * 5)
    assert time.monotonic() - started >= 0.4
    assert client.xlen(KEYS.ingest) == 5


def test_producer_batches_arrive_whole_in_order_and_a_refusal_is_raised(
    client: redis.Redis,
) -> None:
    """The producer's packed XADDs: every entry once, in order, the bytes as given; a refused
    XADD (the key is not a stream) raises after the batch, and the client still works."""
    producer = Producer(client, KEYS, batch=300)
    sent = [orjson.dumps({"message": f"m{n}", "n": n}) for n in range(1000)]
    assert producer.send_many(sent) == 1000
    stored = [fields[b"entry"] for _, fields in client.xrange(KEYS.ingest)]
    assert stored == sent
    client.delete(KEYS.ingest)
    crlf = b'{"message":\r\n"*5\r\n$4\r\n"}'  # RESP-looking bytes stay the payload's
    producer.send_many([sent[0].decode(), bytearray(sent[1]), {"message": "m2", "n": 2}, crlf])
    stored = [fields[b"entry"] for _, fields in client.xrange(KEYS.ingest)]
    assert stored == [sent[0], sent[1], sent[2], crlf], "text, bytes-like and dicts alike"
    with pytest.raises(TypeError, match="not a int"):
        producer.send(7)  # type: ignore[arg-type]
    client.delete(KEYS.ingest)
    client.set(KEYS.ingest, "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        Producer(client, KEYS, batch=10).send_many([{"message": "x"}] * 3)
    assert client.get(KEYS.ingest) == b"not a stream"
    assert client.ping(), "the connection after a refusal is a clean one"


def test_a_partly_refused_batch_keeps_only_the_refused_entries_for_the_next_flush(
    client: redis.Redis,
) -> None:
    keys = Keys("logloom", 2)  # round robin over two partitions
    taken, refusing = (part.ingest for part in keys.partitions())
    last_id = "18446744073709551615-18446744073709551615"  # no ID left for XADD * to take
    client.xadd(refusing, {"x": "y"}, id=last_id)
    producer = Producer(client, keys, batch=100)
    with pytest.raises(redis.ResponseError, match="last possible ID"):
        producer.send_many({"message": "m", "n": n} for n in range(10))
    assert client.xlen(taken) == 5 and producer.sent == 5
    client.delete(refusing)
    producer.flush()  # the refused five again, the taken five not twice
    numbers = [
        orjson.loads(f[b"entry"])["n"] for s in (taken, refusing) for _, f in client.xrange(s)
    ]
    assert sorted(numbers) == list(range(10)) and producer.sent == 10
