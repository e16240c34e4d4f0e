"""Stream plumbing on a real Redis: the forward-and-ack script, trimming, loop recovery."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import wait_for

from pipeline import dlq, streams
from pipeline.config import parse_config
from pipeline.dashboard.sampler import Sampler
from pipeline.discovery import load_plugins
from pipeline.stages.filter import FilterStage
from pipeline.stages.runner import StageLoop, consumer_name
from pipeline.stages.sink import SinkStage
from pipeline.streams import (
    connect,
    ensure_group,
    forget_idle_consumers,
    forward_and_ack,
    id_tuple,
    trim_acknowledged,
)


def test_forward_and_ack_writes_letters_forwards_and_acks_atomically(client: redis.Redis) -> None:
    ensure_group(client, "src", "g")
    ids = [client.xadd("src", {"entry": b"{}"}) for _ in range(2500)]
    client.xreadgroup("g", "c", {"src": ">"}, count=3000)
    letters = [
        ("dlq:a", {"entry": "1", "error": "e1"}),
        ("dlq:b", {"entry": "2", "error": "e2"}),
        ("dlq:a", {"entry": "3", "error": "e3", "attempts": 2}),
    ]
    assert client.execute_command(*forward_and_ack("src", "g", ids, "dst", [b"x", b"y"], letters))
    assert [f[b"entry"] for _, f in client.xrange("dst")] == [b"x", b"y"]
    assert [f[b"error"] for _, f in client.xrange("dlq:a")] == [b"e1", b"e3"]
    assert client.xrange("dlq:a")[1][1][b"attempts"] == b"2"
    assert client.xlen("dlq:b") == 1
    assert client.xpending("src", "g")["pending"] == 0, "2500 ids acked in chunks"
    assert client.execute_command(*forward_and_ack("src", "g", [], "dst", [], [])) == 0


def test_forward_and_ack_writes_nothing_when_a_key_has_the_wrong_type(client: redis.Redis) -> None:
    ensure_group(client, "src", "g")
    entry_id = client.xadd("src", {"entry": b"{}"})
    client.xreadgroup("g", "c", {"src": ">"})
    client.set("dlq:broken", "not a stream")
    command = forward_and_ack("src", "g", [entry_id], "dst", [b"x"], [("dlq:broken", {"a": "b"})])
    with pytest.raises(redis.ResponseError, match="dlq:broken is a string, not a stream"):
        client.execute_command(*command)
    assert client.xlen("dst") == 0 and client.xpending("src", "g")["pending"] == 1


@pytest.mark.parametrize(
    "options",
    [{}, {"protocol": 2}, {"parser_class": redis.connection._RESP3Parser, "protocol": 3}],
    ids=["hiredis-resp3", "hiredis-resp2", "python-parser"],
)
def test_exchange_answers_each_command_in_order_with_refusals_in_place(
    redis_url: str, options: dict[str, Any]
) -> None:
    """:func:`streams.exchange` reads replies off redis-py's hiredis reader itself, or through
    redis-py with any other parser: the same answers either way, also for replies larger than
    one socket read and with RESP3 push messages arriving in between."""
    client = redis.Redis.from_url(redis_url, **options)
    other = redis.Redis.from_url(redis_url)
    client.set("plain", "not a stream")
    big = [("XADD", "big", "*", "entry", b"x" * 200) for _ in range(2000)]
    replies = streams.exchange(
        client,
        [
            ("XADD", "s", "1-1", "entry", "{}"),
            ("XADD", "plain", "*", "entry", "{}"),
            ("EVALSHA", "0" * 40, 0),
            *big,
            ("XRANGE", "big", "-", "+"),
        ],
    )
    assert replies[0] == b"1-1"
    assert isinstance(replies[1], redis.ResponseError) and "WRONGTYPE" in str(replies[1])
    assert isinstance(replies[2], redis.exceptions.NoScriptError)
    assert len(replies) == 2004 and len(replies[-1]) == 2000
    assert replies[-1][0][1] == [b"entry", b"x" * 200], "replies as Redis sends them"
    if client.connection_pool.connection_kwargs.get("protocol", 3) == 3:
        streams.exchange(client, [("CLIENT", "TRACKING", "ON"), ("GET", "plain")])
        other.set("plain", "changed")  # an invalidation is pushed to the tracking connection
        time.sleep(0.1)
        assert streams.exchange(client, [("PING",), ("GET", "plain")]) == [b"PONG", b"changed"]
    client.close()
    other.close()


def test_exchange_turns_a_reset_connection_into_redis_connection_error() -> None:
    """A connection reset mid-exchange (a failover, a proxy) is the ConnectionError the stage
    loop waits out, not an OSError that would stop the worker."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def reset_after_the_request() -> None:
        conn, _ = server.accept()
        received = b""
        while b"PING" not in received:  # what redis-py says on connecting is answered first
            data = conn.recv(65536)
            received += data
            conn.sendall(b"+OK\r\n" * data.count(b"SETINFO"))
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # with linger 0: a reset, not an orderly close

    threading.Thread(target=reset_after_the_request, daemon=True).start()
    client = redis.Redis(port=port, protocol=2)
    try:
        with pytest.raises(redis.ConnectionError, match="reset"):
            streams.exchange(client, [("PING",)])
    finally:
        client.close()
        server.close()


def test_trimming_keeps_what_any_group_still_needs(client: redis.Redis) -> None:
    assert trim_acknowledged(client, "missing") == 0
    for n in range(100):
        client.xadd("s", {"n": n})
    ensure_group(client, "s", "fast")
    ensure_group(client, "s", "slow")
    fast = client.xreadgroup("fast", "c", {"s": ">"})[0][1]
    client.xack("s", "fast", *(m for m, _ in fast))
    slow = client.xreadgroup("slow", "c", {"s": ">"}, count=30)[0][1]
    client.xack("s", "slow", *(m for m, _ in slow[:20]))
    trim_acknowledged(client, "s")
    assert client.xrange("s", count=1)[0][0] <= slow[20][0], "slow's pending entry 21 kept"
    assert client.xlen("s") >= 80


def test_consumer_names_are_unique_per_start() -> None:
    assert consumer_name() != consumer_name()


def test_a_sink_delivers_each_entry_once_after_a_lost_connection(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.jsonl"
    config = parse_config(
        {
            "redis": {"url": redis_url},
            "stages": {"block_ms": 20, "batch_size": 50},
            "sink": {"batch_size": 50, "flush_interval_ms": 300},
            "plugins": {"enabled": ["sink_jsonl"], "config": {"sink_jsonl": {"path": str(out)}}},
        }
    )
    client = connect(redis_url)
    for n in range(20):
        client.xadd(config.keys.filtered, {"entry": orjson.dumps({"message": f"m{n}", "n": n})})
    (plugin,) = load_plugins(config, types=["sink"])
    stop = threading.Event()
    stage = SinkStage(config, plugin, stop)
    loop = StageLoop(client, stage, config.stages, config.sink.batch_size)
    real_exchange = streams.exchange
    calls = {"n": 0, "dropped": 0}

    def drop_once(client: redis.Redis, commands: Any, meanwhile: Any) -> Any:
        calls["n"] += 1
        if not calls["dropped"] and stage.buffer:  # entries read and buffered, not yet flushed
            calls["dropped"] += 1
            real_exchange(client, commands, meanwhile)
            raise redis.ConnectionError("connection reset by peer (replies lost)")
        return real_exchange(client, commands, meanwhile)

    monkeypatch.setattr(streams, "exchange", drop_once)
    worker = threading.Thread(target=loop.run, args=(stop,))
    worker.start()
    try:
        wait_for(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 20, 15, "delivery")
        wait_for(
            lambda: client.xpending(config.keys.filtered, stage.group)["pending"] == 0,
            10,
            "acknowledgements",
        )
    finally:
        stop.set()
        worker.join(10)
        plugin.shutdown()
        client.close()
    assert calls["dropped"] == 1 and calls["n"] > 3, "the connection was dropped once"
    numbers = [orjson.loads(line)["n"] for line in out.read_bytes().splitlines()]
    assert sorted(numbers) == list(range(20)), "each entry delivered exactly once"


def test_a_sink_disabled_with_a_batch_in_hand_gives_it_back_for_peers_to_take(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink loop reads its next batch while flushing the last. Disabled at run time with
    a batch read but not handled, it leaves that batch pending instead of keeping it in
    memory: a peer that reclaims it delivers it, and this worker, once enabled, does not."""
    out = tmp_path / "out.jsonl"
    config = parse_config(
        {
            "redis": {"url": redis_url},
            "stages": {"block_ms": 20, "batch_size": 10},
            "sink": {"batch_size": 10, "flush_interval_ms": 50},
            "plugins": {"enabled": ["sink_jsonl"], "config": {"sink_jsonl": {"path": str(out)}}},
        }
    )
    client = connect(redis_url)
    filtered = config.keys.filtered
    for n in range(100):
        client.xadd(filtered, {"entry": orjson.dumps({"message": f"m{n}", "n": n})})
    (plugin,) = load_plugins(config, types=["sink"])
    stop = threading.Event()
    stage = SinkStage(config, plugin, stop)
    loop = StageLoop(client, stage, config.stages, config.sink.batch_size)
    real_exchange = streams.exchange
    calls = {"n": 0}

    def disable_after_the_second_read(client: redis.Redis, commands: Any, meanwhile: Any) -> Any:
        replies = real_exchange(client, commands, meanwhile)
        calls["n"] += 1
        if calls["n"] == 2:  # its 10 entries are in hand, the 10 before flushed
            plugin.enabled = False
        return replies

    monkeypatch.setattr(streams, "exchange", disable_after_the_second_read)
    worker = threading.Thread(target=loop.run, args=(stop,))
    worker.start()
    try:
        wait_for(lambda: not plugin.enabled and stage.paused(), 10, "the pause")
        time.sleep(0.3)
        pending = client.xpending_range(filtered, stage.group, "-", "+", 100)
        assert len(pending) == 10 and {row["consumer"] for row in pending} == {
            loop.consumer.encode()
        }, "the batch in hand stays pending for this worker"
        taken = [row["message_id"] for row in pending]
        claimed = client.xclaim(filtered, stage.group, "peer", 0, taken)  # a peer takes it
        client.xack(filtered, stage.group, *taken)  # and delivers it
        peers = {orjson.loads(fields[b"entry"])["n"] for _, fields in claimed}
        plugin.enabled = True
        wait_for(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 90, 15, "delivery")
        wait_for(
            lambda: client.xpending(filtered, stage.group)["pending"] == 0, 10, "acknowledgements"
        )
    finally:
        stop.set()
        worker.join(10)
        plugin.shutdown()
    numbers = [orjson.loads(line)["n"] for line in out.read_bytes().splitlines()]
    client.close()
    assert len(peers) == 10
    assert sorted(numbers) == sorted(set(range(100)) - peers), "the peer's entries not again"


def test_the_filter_loop_forwards_each_entry_once_when_the_connection_drops_mid_batch(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filter stage handles a batch while its last writes and the next read are on their
    way. The connection drops once after Redis ran them (their replies lost) and once before
    they left: either way the work in flight comes back, and nothing is forwarded twice."""
    config = parse_config({"stages": {"block_ms": 20, "batch_size": 100}})
    client = connect(redis_url)
    observer = redis.Redis.from_url(redis_url)
    pipe = observer.pipeline(transaction=False)
    for n in range(1000):
        pipe.xadd(config.keys.ingest, {"entry": orjson.dumps({"message": f"m{n}", "n": n})})
    pipe.execute()
    stage = FilterStage(config, filters=[])  # keeps everything
    loop = StageLoop(client, stage, config.stages, config.stages.batch_size)
    real_exchange = streams.exchange
    exchanges = {"n": 0}

    def drop_twice(client: redis.Redis, commands: Any, meanwhile: Any) -> Any:
        exchanges["n"] += 1
        if exchanges["n"] == 3:
            real_exchange(client, commands, meanwhile)
            raise redis.ConnectionError("connection reset by peer (replies lost)")
        if exchanges["n"] == 6:
            meanwhile()
            raise redis.ConnectionError("connection reset by peer (nothing sent)")
        return real_exchange(client, commands, meanwhile)

    monkeypatch.setattr(streams, "exchange", drop_twice)
    stop = threading.Event()
    loop.ensure_groups()
    worker = threading.Thread(target=loop.run, args=(stop,))
    with caplog.at_level("ERROR", "logloom.stage"):
        worker.start()
        try:
            wait_for(lambda: observer.xlen(config.keys.filtered) >= 1000, 15, "forwarding")
            wait_for(
                lambda: observer.xpending(config.keys.ingest, stage.group)["pending"] == 0,
                10,
                "acknowledgements",
            )
        finally:
            stop.set()
            worker.join(10)
    assert caplog.text.count("Redis unavailable (connection reset by peer") == 2
    out = [orjson.loads(f[b"entry"])["n"] for _, f in observer.xrange(config.keys.filtered)]
    assert sorted(out) == list(range(1000)), "each entry forwarded exactly once"
    client.close()
    observer.close()


def test_stopped_consumers_with_nothing_pending_are_forgotten(client: redis.Redis) -> None:
    ensure_group(client, "s", "g")
    for n in range(3):
        client.xadd("s", {"n": n})
    client.xreadgroup("g", "done", {"s": ">"}, count=1)
    client.xack("s", "g", client.xrange("s", count=1)[0][0])
    client.xreadgroup("g", "busy", {"s": ">"}, count=1)
    client.xreadgroup("g", "me", {"s": ">"}, count=1)
    client.xack("s", "g", *(m for m, _ in client.xrange("s")))
    client.xreadgroup("g", "busy", {"s": ">"})  # nothing new; busy keeps nothing pending either
    client.xadd("s", {"n": 3})
    client.xreadgroup("g", "busy", {"s": ">"})
    time.sleep(0.05)
    assert forget_idle_consumers(client, "s", "g", 10, exclude="me") == 1
    names = {c["name"] for c in client.xinfo_consumers("s", "g")}
    assert names == {b"busy", b"me"}, "kept: one with pending entries, and ourselves"


def test_stream_ids_compare_as_redis_orders_them_wherever_they_are_compared(
    client: redis.Redis,
) -> None:
    assert id_tuple(b"1700000000000-10") > id_tuple("1700000000000-9"), "numbers, not text"
    assert id_tuple("1700000000000") == (1700000000000, 0)

    keys = parse_config({"redis": {"partitions": 2}}, "logloom.yaml").keys
    first, second = keys.dlqs("filter")
    client.xadd(first, {"error": "older"}, id="5-9")
    client.xadd(second, {"error": "newer"}, id="5-10")
    assert [one.id for one in dlq.newest(client, keys, "filter")] == ["5-10", "5-9"]

    sampler = Sampler(client, keys, "redis://test", 1.0, 1)
    sampler.ai_results.extend([{"id": "5-9"}, {"id": "5-10"}])
    assert [one["id"] for one in sampler.ai_results_after("5-9")] == ["5-10"]
