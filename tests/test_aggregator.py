"""Remote aggregation: a node pipeline (filter and sink workers with sink_aggregator) ships to a
real ``logloom aggregator`` process, which writes into a second private Redis, the central one.

The aggregator is killed and restarted mid-stream, the sink worker is killed while its spool
holds batches, the spool fills up, and the link runs over TLS with a token: every entry arrives
(duplicates allowed: at least once), in order per source.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from helpers import free_port, produce_requests, start_redis_server, wait_for
from plugin_kit import ROOT
from test_redis_security import make_pki

from pipeline.aggregator import Refused, Writer, parse_batch
from pipeline.config import parse_config
from pipeline.keys import Keys
from pipeline.runtimes.python import import_plugin_module
from pipeline.streams import connect

pytestmark = pytest.mark.plugins

KEYS = Keys()
GROUP = "sink:sink_aggregator"
TOKEN = "s3cret-aggregator-token"
SINK = {
    "flush_interval_ms": 100,
    "batch_size": 500,
    "retry": {"max_attempts": 3, "backoff_initial_ms": 50, "backoff_max_ms": 300},
}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LOGLOOM_REDIS_URL", "REDIS_URL")}


class Central:
    """The central side: its own redis-server and a ``logloom aggregator`` process in front."""

    def __init__(self, directory: Path, redis_url: str, **aggregator: Any) -> None:
        self.directory = directory
        self.port = free_port()
        self.client = redis.Redis.from_url(redis_url)
        self.config = directory / "aggregator.yaml"
        settings = {"token": TOKEN, **aggregator}
        self.config.write_text(
            yaml.safe_dump({"redis": {"url": redis_url}, "aggregator": settings})
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Central:
        self.starts += 1
        with open(self.directory / f"aggregator-{self.starts}.out", "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "--config", str(self.config),
                 "aggregator", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
            )  # fmt: skip
        wait_for(lambda: "Aggregator listening" in self.output(), 20, "the aggregator to listen")
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def output(self) -> str:
        return "".join(p.read_text() for p in sorted(self.directory.glob("aggregator-*.out")))

    def seqs(self) -> list[int]:
        """The seq of every entry in the central ingest stream, in order of arrival."""
        return [
            orjson.loads(fields[b"entry"])["seq"]
            for _, fields in self.client.xrange(KEYS.ingest)  # type: ignore[union-attr]
        ]


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Callable[..., Central]]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not on PATH"
    directory = tmp_path / "central"
    directory.mkdir()
    server, url = start_redis_server(binary, directory)
    made: list[Central] = []

    def make(**aggregator: Any) -> Central:
        made.append(Central(directory, url, **aggregator))
        return made[-1]

    yield make
    for one in made:
        one.kill()
        one.client.close()
    server.terminate()
    server.wait(timeout=10)


def node_config(
    write_config: Callable[..., Path],
    tmp_path: Path,
    central: Central,
    sink: dict[str, Any] = SINK,
    **plugin: Any,
) -> Path:
    settings = {
        "address": f"127.0.0.1:{central.port}",
        "node": "node-a",
        "token": TOKEN,
        "connect_timeout_s": 2,
        "timeout_s": 10,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "spool": {"dir": str(tmp_path / "spool")},
        **plugin,
    }
    return write_config(
        plugins={
            "enabled": ["sink_aggregator"],
            "config": {"sink_aggregator": settings},
            # a held batch's retries open the breaker; keep its pause short
            "settings": {"sink_aggregator": {"circuit": {"failures": 5, "cooldown_s": 1}}},
        },
        sink=sink,
    )


def produce(client: redis.Redis, start: int, count: int) -> None:
    produce_requests(client, start, count, KEYS.prefix)


def spooled(tmp_path: Path) -> list[int]:
    """The seqs in the spool's segments, oldest segment first."""
    return [
        item["entry"]["seq"]
        for segment in sorted((tmp_path / "spool" / "slot-0").glob("*.seg"))
        for item in orjson.loads(segment.read_bytes())["entries"]
    ]


def first_arrivals(seqs: list[int]) -> list[int]:
    return list(dict.fromkeys(seqs))


def in_order(subsequence: list[int], arrivals: list[int]) -> bool:
    position = {seq: index for index, seq in enumerate(arrivals)}
    places = [position[seq] for seq in subsequence]
    return places == sorted(places)


def settled(client: redis.Redis) -> bool:
    """The sink has taken every entry (none pending, none unread in its group)."""
    groups = {g["name"].decode(): g for g in client.xinfo_groups(KEYS.filtered)}
    group = groups.get(GROUP)
    return bool(group) and group["pending"] == 0 and group["lag"] == 0


def status(config: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "status", "--json"],
        capture_output=True, env=clean_env(), timeout=30, check=True,
    )  # fmt: skip
    data: dict[str, Any] = orjson.loads(done.stdout)
    return data


def test_a_spool_segment_is_whole_when_the_disk_takes_a_few_bytes_per_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = import_plugin_module(ROOT / "plugins/python/sink_aggregator.py")
    spool = plugin.Spool.take(tmp_path / "slot-0")
    write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: write(fd, bytes(data[:7])))
    try:
        line = orjson.dumps({"entries": [{"entry": {"seq": i}} for i in range(100)]})
        spool.append(line, 1 << 20)
        path, stored = spool.head()
        assert stored == line, "every byte written before the rename, not only the first write's"
        assert spool.bytes == path.stat().st_size == len(line)
    finally:
        spool.close()


def test_a_batch_line_is_checked_and_stamped_with_node_and_id() -> None:
    entries = [
        {"id": "5-0", "entry": {"message": "hi"}},
        {"id": "6-0", "entry": {"message": "x", "logloom_node": "edge"}},
    ]
    line = orjson.dumps({"op": "batch", "node": "web-1", "batch": "b1", "token": "t",
                         "entries": entries})  # fmt: skip
    batch = parse_batch(line)
    assert (batch.node, batch.batch, batch.token) == ("web-1", "b1", "t")
    assert [orjson.loads(p) for p in batch.payloads] == [
        {"message": "hi", "logloom_node": "web-1", "logloom_id": "5-0"},
        {"message": "x", "logloom_node": "edge", "logloom_id": "6-0"},  # an earlier hop's node
    ]
    for bad, error in [
        (b"nope", "not JSON"),
        (b"[1]", "not an object"),
        (b'{"node": "a b", "batch": "1", "entries": []}', "'node' must be"),
        (b'{"node": "a", "batch": "1", "entries": [{"id": "1-0", "entry": 3}]}',
         "entries[0].entry is not a JSON object"),
    ]:  # fmt: skip
        with pytest.raises(Refused, match=error.replace("[", r"\[")) as refused:
            parse_batch(bad)
        assert refused.value.code == "malformed" and not refused.value.retry


@pytest.mark.parametrize(
    ("aggregator", "error"),
    [
        ({"token": "short"}, "aggregator.token: use at least 16 characters"),
        ({"tls": {"cert_file": "/etc/hostname"}}, "aggregator.tls: cert_file and key_file go"),
        ({"host": "0.0.0.0"}, "aggregator.token: required to listen beyond loopback (0.0.0.0)"),
    ],
)
def test_aggregator_config_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, aggregator: dict[str, Any], error: str
) -> None:
    config = tmp_path / "central.yaml"
    config.write_text(yaml.safe_dump({"redis": {"url": "redis://127.0.0.1:1/0"},
                                      "aggregator": aggregator}))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "aggregator"],
        capture_output=True, text=True, env=clean_env(), timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("logloom: ") and error in line


def test_a_node_writes_to_one_partition_and_a_resent_batch_is_written_once(
    redis_url: str,
) -> None:
    config = parse_config({"redis": {"url": redis_url, "partitions": 2}})
    writer = Writer(connect(redis_url), config)
    line = orjson.dumps({"node": "web-1", "batch": "b1", "entries": [
        {"id": f"7-{i}", "entry": {"message": f"m{i}", "seq": i}} for i in range(3)]})  # fmt: skip
    assert writer.write(parse_batch(line)) == 3
    assert writer.write(parse_batch(line)) is None, "the same batch again: not written twice"
    target = writer.partition("web-1").ingest
    other = next(p.ingest for p in config.keys.partitions() if p.ingest != target)
    written = writer.client.xrange(target)
    assert [orjson.loads(fields[b"entry"])["seq"] for _, fields in written] == [0, 1, 2]
    assert writer.client.xlen(other) == 0
    writer.client.close()


@pytest.mark.slow
def test_ten_thousand_entries_through_an_aggregator_killed_mid_stream(
    client: redis.Redis,
    write_config: Callable[..., Path],
    workers: Any,
    central: Callable[..., Central],
    tmp_path: Path,
) -> None:
    aggregator = central().start()
    config = node_config(write_config, tmp_path, aggregator)
    workers.start(config, "filter")
    worker = workers.start(config, "sink")
    produce(client, 0, 4000)
    wait_for(lambda: len(aggregator.seqs()) >= 1000, 60, "the first batches centrally")
    aggregator.kill()
    produce(client, 4000, 3000)
    wait_for(lambda: settled(client) and spooled(tmp_path), 30, "batches in the spool")
    early = spooled(tmp_path)
    produce(client, 7000, 3000)
    wait_for(lambda: settled(client) and 9999 in spooled(tmp_path), 30, "the rest spooled")
    in_spool = spooled(tmp_path)
    assert len(in_spool) >= len(early) + 3000, "the spool grows while the aggregator is down"

    def shown() -> dict[str, Any]:  # workers report every 2 s
        (plugin,) = [p for p in status(config)["plugins"] if p["plugin"] == "sink_aggregator"]
        return dict(plugin["stats"])

    stats = wait_for(lambda: (s := shown())["spool_batches"] >= 2 and s, 20, "status to show it")
    assert stats["link"] == "down" and stats["spool_bytes"] > 0, stats

    aggregator.start()  # the same port
    wait_for(lambda: len(set(aggregator.seqs())) >= 10_000, 60, "every entry centrally")
    arrivals = aggregator.seqs()
    assert set(arrivals) == set(range(10_000)), "none lost (duplicates allowed: at least once)"
    firsts = first_arrivals(arrivals)
    assert firsts == sorted(firsts), "one source, one sink worker: in order"
    assert in_order(in_spool, firsts), "the spool drains oldest first"
    wait_for(lambda: not spooled(tmp_path), 10, "an empty spool")
    assert client.xlen(KEYS.dlq("sink")) == 0
    assert worker.poll() is None
    output = workers.output()
    assert "Sink 'sink_aggregator': 127.0.0.1:" in output and "spooling batches in" in output
    assert "spool drained" in output


@pytest.mark.slow
def test_a_new_sink_worker_drains_the_spool_a_killed_one_left(
    client: redis.Redis,
    write_config: Callable[..., Path],
    workers: Any,
    central: Callable[..., Central],
    tmp_path: Path,
) -> None:
    aggregator = central()  # not started yet: everything goes to the spool
    config = node_config(write_config, tmp_path, aggregator)
    workers.start(config, "filter")
    first = workers.start(config, "sink")
    produce(client, 0, 3000)
    wait_for(lambda: len(spooled(tmp_path)) == 3000 and settled(client), 30, "a full handover")
    in_spool = spooled(tmp_path)
    first.send_signal(signal.SIGKILL)
    first.wait()

    workers.start(config, "sink")
    produce(client, 3000, 1000)  # a new worker puts these behind what the old one spooled
    time.sleep(1.0)
    aggregator.start()
    wait_for(lambda: len(set(aggregator.seqs())) >= 4000, 60, "every entry centrally")
    arrivals = aggregator.seqs()
    assert set(arrivals) == set(range(4000))
    assert in_order(in_spool, first_arrivals(arrivals)), "the old worker's batches, in order"
    assert first_arrivals(arrivals) == list(range(4000)), "newer batches behind the spooled"
    assert "from before; sending them before anything newer" in workers.output()


@pytest.mark.slow
def test_a_full_spool_leaves_entries_pending_in_redis_and_loses_none(
    client: redis.Redis,
    write_config: Callable[..., Path],
    workers: Any,
    central: Callable[..., Central],
    tmp_path: Path,
) -> None:
    aggregator = central()
    config = node_config(write_config, tmp_path, aggregator, sink={**SINK, "batch_size": 100},
                         spool={"dir": str(tmp_path / "spool"), "max_bytes": 65536})  # fmt: skip
    workers.start(config, "filter")
    workers.start(config, "sink")
    produce(client, 0, 3000)
    wait_for(lambda: "full (" in workers.output(), 30, "a full spool")
    wait_for(lambda: client.xpending(KEYS.filtered, GROUP)["pending"], 10, "held entries")
    segments = list((tmp_path / "spool" / "slot-0").glob("*.seg"))
    assert segments and sum(s.stat().st_size for s in segments) <= 65536
    assert len(spooled(tmp_path)) < 3000
    assert "new entries wait in Redis (pending in group sink:sink_aggregator)" in workers.output()
    assert client.xlen(KEYS.dlq("sink")) == 0, "held, not dead-lettered"

    aggregator.start()
    wait_for(lambda: len(set(aggregator.seqs())) >= 3000, 60, "every entry centrally")
    assert first_arrivals(aggregator.seqs()) == list(range(3000))
    wait_for(lambda: settled(client), 10)
    assert client.xlen(KEYS.dlq("sink")) == 0


def tls_exchange(port: int, ca: Path, line: bytes) -> tuple[dict[str, Any], bytes]:
    """Send one line over TLS; the answer, and what follows it (b"" once the peer closed)."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(
        raw, server_hostname="127.0.0.1"
    ) as conn, conn.makefile("rb") as reader:  # fmt: skip
        conn.sendall(line)
        answer = orjson.loads(reader.readline())
        return answer, reader.read()


@pytest.mark.slow
def test_tls_with_a_token_delivers_and_a_wrong_token_is_refused_in_one_line(
    client: redis.Redis,
    write_config: Callable[..., Path],
    workers: Any,
    central: Callable[..., Central],
    tmp_path: Path,
) -> None:
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    pki = make_pki(pki_dir)
    (tmp_path / "token").write_text(TOKEN + "\n")
    aggregator = central(
        token=None,
        token_file=str(tmp_path / "token"),
        tls={"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
    ).start()
    assert "(TLS, token required)" in aggregator.output()
    config = node_config(write_config, tmp_path, aggregator,
                         tls={"enabled": True, "ca_file": str(pki.ca)})  # fmt: skip
    workers.start(config, "filter")
    workers.start(config, "sink")
    produce(client, 0, 1000)
    wait_for(lambda: len(set(aggregator.seqs())) >= 1000, 30, "every entry over TLS")
    assert set(aggregator.seqs()) == set(range(1000))

    batch = {"op": "batch", "node": "intruder", "batch": "b-1", "token": "guess-guess-guess",
             "entries": [{"id": "1-0", "entry": {"message": "let me in", "seq": -1}}]}  # fmt: skip
    answer, rest = tls_exchange(aggregator.port, pki.ca, orjson.dumps(batch) + b"\n")
    assert answer == {"ok": False, "batch": "b-1", "code": "unauthorized",
                      "error": "bad token", "retry": False}  # fmt: skip
    assert rest == b"", "the connection is closed after a bad token"
    answer, _ = tls_exchange(aggregator.port, pki.ca, b"GET / HTTP/1.0\n")
    assert answer["code"] == "malformed" and answer["error"].startswith("not JSON")
    with socket.create_connection(("127.0.0.1", aggregator.port), timeout=10) as plain:
        plain.sendall(orjson.dumps(batch) + b"\n")  # no TLS: the handshake fails
        with contextlib.suppress(ConnectionResetError):
            assert b"let me in" not in plain.recv(100)

    def refusals() -> list[str]:
        return [line for line in aggregator.output().splitlines() if "refused" in line]

    wait_for(lambda: len(refusals()) == 2, 10, "the refusals logged")
    bad_token, malformed = refusals()
    assert bad_token.startswith("[WARN] Aggregator: refused batch b-1 from 127.0.0.1:")
    assert bad_token.endswith("(node 'intruder'): bad token (closing the connection)")
    assert malformed.startswith("[WARN] Aggregator: refused a line from 127.0.0.1:")
    assert TOKEN not in aggregator.output() and "guess" not in aggregator.output()
    wait_for(lambda: "TLS handshake with 127.0.0.1:" in aggregator.output(), 10)
    assert -1 not in aggregator.seqs()
