"""Partitioned streams, and the pipeline on a real 3-master Redis Cluster (issue 6 part 7).

The cluster test starts three ``redis-server --cluster-enabled yes`` on loopback, joins them
(CLUSTER ADDSLOTS / MEET, as ``redis-cli --cluster create`` would), and runs two filter and two
sink workers across 4 partitions, whose hash tags ({p0}..{p3}) land on all three masters.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from helpers import wait_for
from redis.cluster import RedisCluster
from redis.crc import key_slot

from benchmarks.cluster import Cluster
from benchmarks.figures import BenchmarkError
from pipeline import dlq, metrics, status, tap
from pipeline.config import parse_config
from pipeline.keys import Keys
from pipeline.producer import Producer
from pipeline.stages.filter import FilterStage
from pipeline.stages.runner import StageLoop
from pipeline.streams import connect

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
SOURCES = 40
ENTRIES = 10_000


def test_one_partition_keeps_the_single_redis_layout() -> None:
    """N = 1 (the default) names every key as before partitions existed, byte for byte."""
    for keys in (Keys(), Keys("logloom", 1), parse_config({}).keys):
        assert keys.partitions() == [keys]
        assert (keys.ingest, keys.filtered) == ("logloom:ingest", "logloom:filtered")
        assert keys.sink_replay("sink_jsonl") == "logloom:sink:sink_jsonl:replay"
        assert keys.all_dlqs() == [
            "logloom:dlq:ingest", "logloom:dlq:filter", "logloom:dlq:sink", "logloom:dlq:ai"
        ]  # fmt: skip
        assert keys.dlqs("sink") == ["logloom:dlq:sink"]
        assert keys.sink_replays_pattern() == "logloom:sink:*:replay"
        assert (keys.ai_replay, keys.ai_results, keys.tap) == (
            "logloom:ai:replay", "logloom:ai:results", "logloom:tap"
        )  # fmt: skip
        assert (keys.control, keys.disabled_plugins, keys.worker_report("w")) == (
            "logloom:control", "logloom:plugins:disabled", "logloom:worker:w"
        )  # fmt: skip


def test_each_partition_keeps_its_keys_in_one_slot() -> None:
    keys = parse_config({"redis": {"partitions": PARTITIONS}}).keys
    parts = keys.partitions()
    assert [part.ingest for part in parts] == [f"logloom:{{p{n}}}:ingest" for n in range(4)]
    for part in parts:
        together = [part.ingest, part.filtered, part.sink_replay("s"), *(
            part.dlq(stage) for stage in ("ingest", "filter", "sink"))]  # fmt: skip
        assert len({key_slot(key.encode()) for key in together}) == 1, together
    assert len({key_slot(part.ingest.encode()) for part in parts}) == PARTITIONS
    # Global keys stay global; the deployment view refuses to name a per-partition one.
    assert (keys.control, keys.dlq("ai"), keys.ai_replay) == (
        "logloom:control", "logloom:dlq:ai", "logloom:ai:replay"
    )  # fmt: skip
    with pytest.raises(ValueError, match="4 partitions"):
        _ = keys.ingest


def test_producer_spreads_by_key_in_order_or_round_robin(client: redis.Redis) -> None:
    keys = Keys("logloom", 3)
    streams = [part.ingest for part in keys.partitions()]
    with Producer(client, keys, batch=7, partition_by="module") as producer:
        for seq in range(300):
            producer.send({"module": f"m{seq % 10}", "message": "x", "seq": seq})
        producer.send(b'{"module": "m3", "message": "as text", "seq": 300}')
    homes: dict[str, set[int]] = defaultdict(set)
    order: dict[str, list[int]] = defaultdict(list)
    for index, stream in enumerate(streams):
        for _, fields in client.xrange(stream):
            entry = json.loads(fields[b"entry"])
            homes[entry["module"]].add(index)
            order[entry["module"]].append(entry["seq"])
    assert all(homes[m] == {zlib.crc32(m.encode()) % 3} for m in homes), homes
    assert all(seqs == sorted(seqs) for seqs in order.values())
    assert len(order["m3"]) == 31 and order["m3"][-1] == 300
    client.delete(*streams)
    with Producer(client, keys, batch=10) as producer:  # no key: round robin
        producer.send_many({"message": "x"} for _ in range(30))
    assert [client.xlen(stream) for stream in streams] == [10, 10, 10]


def test_partitioned_dead_letters_are_named_by_partition(client: redis.Redis) -> None:
    keys = Keys("logloom", 2)
    for part in keys.partitions():  # the same stream ID in both partitions' DLQs
        letter = dlq.letter(b'{"message": "m"}', error="bad", plugin="p", stage="filter",
                            attempts=1, source_stream=part.ingest, source_id="1-0")  # fmt: skip
        client.xadd(part.dlq("filter"), letter, id="5-0")
    assert [one.ref for one in dlq.newest(client, keys, "filter")] == ["p0:5-0", "p1:5-0"]
    with pytest.raises(KeyError, match="several partitions"):
        dlq.get(client, keys, "filter", "5-0")
    found = dlq.get(client, keys, "filter", "p1:5-0")
    assert found is not None and found.fields["source_stream"] == "logloom:{p1}:ingest"
    assert dlq.replay(client, keys, "filter", ["p1:5-0"]) == 1
    assert client.xlen("logloom:{p1}:ingest") == 1 and client.xlen("logloom:{p0}:ingest") == 0
    assert [s.size for s in dlq.summaries(client, keys) if s.stage == "filter"] == [1, 0]


# --- a real Redis Cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        started = Cluster(tmp_path_factory.mktemp("cluster"))
    except BenchmarkError as exc:  # e.g. no redis-server
        pytest.fail(str(exc))
    yield started
    started.stop()


CAPTURE_SINK = """
import json, os
PLUGIN_INFO = {{"name": "{name}", "version": "1.0.0", "type": "sink"}}
settings = {{}}
def plugin_init(config):
    settings.update(config)
    return 0
def flush(entries):
    path = os.path.join(settings["dir"], "{name}-%d.jsonl" % os.getpid())
    with open(path, "a") as out:
        out.writelines(json.dumps([e["source"], e["n"], e.id]) + "\\n" for e in entries)
    return 0
def plugin_shutdown(): pass
"""

KEEP_ALL = """
PLUGIN_INFO = {"name": "filter_keep", "version": "1.0.0", "type": "filter"}
def plugin_init(): return 0
def plugin_process(entry): return True
def plugin_shutdown(): pass
"""


def _write_config(tmp_path: Path, url: str) -> Path:
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "filter_keep.py").write_text(KEEP_ALL)
    for name in ("sink_a", "sink_b"):
        (plugins / f"{name}.py").write_text(textwrap.dedent(CAPTURE_SINK.format(name=name)))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    data: dict[str, Any] = {
        "redis": {"url": url, "cluster": True, "partitions": PARTITIONS},
        "ingest": {"partition_by": "source"},
        "stages": {"block_ms": 100, "batch_size": 200, "claim_interval_s": 0.5},
        "sink": {"flush_interval_ms": 100, "batch_size": 200},
        "plugins": {
            "paths": [str(plugins)],
            "enabled": ["filter_keep", "sink_a", "sink_b"],
            "config": {name: {"dir": str(out)} for name in ("sink_a", "sink_b")},
        },
    }
    path = tmp_path / "logloom.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _delivered(out: Path, sink: str) -> dict[Path, list[tuple[str, int]]]:
    """What each sink worker process wrote, in order: (source, n) per entry."""
    return {
        path: [tuple(json.loads(line)[:2]) for line in path.read_text().splitlines()]
        for path in sorted(out.glob(f"{sink}-*.jsonl"))
    }


def _count(out: Path, sink: str) -> int:
    return sum(len(rows) for rows in _delivered(out, sink).values())


def test_the_pipeline_spreads_over_a_three_master_cluster(
    cluster: Cluster, workers: Any, tmp_path: Path
) -> None:
    config = _write_config(tmp_path, cluster.url)
    keys = Keys("logloom", PARTITIONS)
    parts = keys.partitions()
    owners = {part.partition: cluster.owner(part.ingest) for part in parts}
    assert set(owners.values()) == set(cluster.ports), f"partitions must use every master {owners}"
    for node in cluster.nodes:
        node.config_resetstat()

    # Two filter workers splitting the partitions, two sink workers sharing all of them.
    workers.start(config, "filter", "--partitions", "0,1")
    workers.start(config, "filter", "--partitions", "2,3")
    workers.start(config, "sink")
    workers.start(config, "sink")
    lines = tmp_path / "entries.jsonl"
    per_source: Counter[str] = Counter()
    with lines.open("w") as handle:
        for seq in range(ENTRIES):
            source = f"src-{seq % SOURCES:02d}"
            per_source[source] += 1
            entry = {"level": "INFO", "module": "test", "message": f"entry {seq}",
                     "source": source, "n": per_source[source]}  # fmt: skip
            handle.write(json.dumps(entry) + "\n")
    produced = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "produce", str(lines)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    assert f"produced {ENTRIES} entries to logloom:{{p0}}:ingest" in produced.stderr

    out = tmp_path / "out"
    for sink in ("sink_a", "sink_b"):
        wait_for(lambda s=sink: _count(out, s) >= ENTRIES, 60, f"{sink} to get every entry")
    time.sleep(0.5)  # anything more (a duplicate) would have arrived by now

    expected = {(source, n) for source, count in per_source.items() for n in range(1, count + 1)}
    for sink in ("sink_a", "sink_b"):
        by_worker = _delivered(out, sink)
        assert len(by_worker) == 2, f"both sink workers delivered to {sink}"
        everything = Counter(row for rows in by_worker.values() for row in rows)
        assert set(everything) == expected, f"{sink}: entries lost"
        assert max(everything.values()) == 1, f"{sink}: entries delivered twice"
        for rows in by_worker.values():  # one source: one partition, read in order
            seen: dict[str, int] = {}
            for source, n in rows:
                assert n > seen.get(source, 0), f"{sink}: {source} out of order"
                seen[source] = n

    # Spread: every master holds its partitions' entries and served reads and scripts.
    client = connect(cluster.url, cluster=True)
    assert isinstance(client, RedisCluster)
    added: Counter[int] = Counter()
    for part in parts:
        assert part.partition is not None
        added[owners[part.partition]] += int(client.xinfo_stream(part.ingest)["entries-added"])
    assert sum(added.values()) == ENTRIES
    for port in cluster.ports:
        assert added[port] >= ENTRIES // 10, f"master {port} holds {added[port]} of {ENTRIES}"
    stats = {
        port: node.info("commandstats")
        for port, node in zip(cluster.ports, cluster.nodes, strict=True)
    }
    for port, figures in stats.items():
        for command in ("cmdstat_xadd", "cmdstat_xreadgroup", "cmdstat_eval", "cmdstat_xack"):
            assert figures.get(command, {}).get("calls", 0) > 0, f"no {command} on {port}"
    # Reads name their node: no COMMAND GETKEYS round trip per batch.
    reads = sum(figures["cmdstat_xreadgroup"]["calls"] for figures in stats.values())
    lookups = sum(f.get("cmdstat_command|getkeys", {}).get("calls", 0) for f in stats.values())
    assert lookups < reads / 20, (lookups, reads)

    # status, DLQ summaries and the metrics list every partition's streams.
    data = status.collect(client, keys)
    listed = {row["stream"] for row in data["streams"]}
    assert {part.ingest for part in parts} | {part.filtered for part in parts} <= listed
    assert {row["stream"] for row in data["dlq"]} == set(keys.all_dlqs())
    groups = {(row["stream"], g["group"]): g for row in data["streams"] for g in row["groups"]}
    for part in parts:
        assert groups[(part.ingest, "filter")]["lag"] == 0
        assert groups[(part.filtered, "sink:sink_a")]["consumers"] == 2
    families = {family.name: family for family in metrics.QueueCollector(client, keys).collect()}
    lengths = {sample.labels["stream"] for sample in families["logloom_stream_length"].samples}
    assert {part.ingest for part in parts} <= lengths
    assert {s.labels["stage"] for s in families["logloom_dlq_size"].samples} == {
        "ingest", "filter", "sink", "ai"
    }  # fmt: skip
    shown = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "status"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert shown.returncode == 0 and "logloom:{p3}:filtered" in shown.stdout, shown.stderr


def test_the_ai_stage_refuses_a_cluster(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "logloom.yaml"
    config.write_text(yaml.safe_dump({"redis": {"url": cluster.url, "cluster": True}}))
    one = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "status"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert one.returncode == 2 and "redis.cluster: needs redis.partitions of 2" in one.stderr
    config.write_text(
        yaml.safe_dump({"redis": {"url": cluster.url, "cluster": True, "partitions": 2}})
    )
    ran = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "worker", "--stage", "ai"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ran.returncode == 2
    assert "the ai stage needs a plain Redis" in ran.stderr


def test_partitions_on_one_redis(
    client: redis.Redis, write_config: Any, workers: Any, tmp_path: Path
) -> None:
    """Partitions need no cluster: one worker of each stage serves them all, a thread each."""
    config = _write_config(tmp_path, "unused")
    data = yaml.safe_load(config.read_text())
    sinks = data["plugins"]
    config = write_config(redis={"partitions": 3}, ingest={"partition_by": "source"}, plugins=sinks)
    keys = Keys("logloom", 3)
    with Producer(client, keys, partition_by="source") as producer:
        for seq in range(1, 1001):
            producer.send({"message": "m", "source": f"s{seq % 7}", "n": seq})
        producer.send(b"not json")  # dead-lettered in its own partition
    workers.start(config, "filter")
    workers.start(config, "sink", "--sink", "sink_a")
    out = tmp_path / "out"
    wait_for(lambda: _count(out, "sink_a") >= 1000, 30, "every entry at sink_a")
    (rows,) = _delivered(out, "sink_a").values()
    assert sorted(n for _, n in rows) == list(range(1, 1001))
    assert [client.xlen(part.dlq("ingest")) for part in keys.partitions()] == [1, 0, 0]
    assert "reading logloom:{p0}:ingest, logloom:{p1}:ingest, logloom:{p2}:ingest" in (
        workers.output()
    )


def _move_slot(cluster: Cluster, slot: int, source_port: int, target_port: int) -> None:
    """Move ``slot`` and its keys to another master, as resharding does: IMPORTING/MIGRATING,
    MIGRATE of every key in one command, then SETSLOT NODE on every master."""
    by_port = dict(zip(cluster.ports, cluster.nodes, strict=True))
    source, target = by_port[source_port], by_port[target_port]
    source_id = source.execute_command("CLUSTER MYID").decode()
    target_id = target.execute_command("CLUSTER MYID").decode()
    target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
    keys = source.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
    source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
    for node in cluster.nodes:
        node.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)


def test_a_filter_loop_follows_its_partition_to_another_master(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The filter loop talks to its partition's master directly (overlapping its round trips).
    When the partition's slot moves mid-stream, the master answers MOVED or ASK: the loop reads
    the slot table again and goes on at the new master, each entry forwarded once."""
    config = parse_config(
        {
            "redis": {"url": cluster.url, "cluster": True, "partitions": 2, "prefix": "moving"},
            "stages": {"block_ms": 20, "batch_size": 50},
        }
    )
    part = config.keys.partitions()[1]
    client = connect(cluster.url, cluster=True)

    def produce(numbers: range) -> None:
        pipe = client.pipeline(transaction=False)
        for n in numbers:
            pipe.xadd(part.ingest, {"entry": json.dumps({"message": f"m{n}", "n": n})})
        pipe.execute()

    produce(range(1500))
    stage = FilterStage(config, filters=[], keys=part)
    handle = stage.handle

    def slowly(stream: str, messages: list[Any]) -> None:
        time.sleep(0.01)  # 50 entries a batch: the stream lasts long enough to move it
        handle(stream, messages)

    stage.handle = slowly  # type: ignore[method-assign]
    loop = StageLoop(client, stage, config.stages, config.stages.batch_size)
    loop.ensure_groups()
    stop = threading.Event()
    worker = threading.Thread(target=loop.run, args=(stop,))
    source_port = cluster.owner(part.ingest)
    target_port = next(port for port in cluster.ports if port != source_port)
    with caplog.at_level(logging.ERROR, "logloom.stage"):
        worker.start()
        try:
            wait_for(lambda: client.xlen(part.filtered) >= 300, 15, "the first entries")
            _move_slot(cluster, key_slot(part.ingest.encode()), source_port, target_port)
            produce(range(1500, 3000))
            wait_for(lambda: client.xlen(part.filtered) >= 3000, 30, "every entry, moved")
            wait_for(lambda: client.xpending(part.ingest, "filter")["pending"] == 0, 10, "the acks")
        finally:
            stop.set()
            worker.join(10)
    assert cluster.owner(part.ingest) == target_port
    assert "hash slot moved" in caplog.text, "the loop met the move"
    numbers = [json.loads(fields[b"entry"])["n"] for _, fields in client.xrange(part.filtered)]
    assert sorted(numbers) == list(range(3000)), "each entry forwarded exactly once"
    client.close()


def test_a_tapped_filter_loop_sends_tap_records_to_their_own_master(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tap record goes to ``<prefix>:tap``, a key of no partition, here served by another
    master than the partition's. It leaves through the cluster client, not in the exchange with
    the partition's master (which would answer MOVED: an error logged and the batch read again,
    for every batch): each entry forwarded once, each batch recorded once, no error logged."""
    monkeypatch.setattr(tap, "REQUEST_TTL_S", 60.0)  # the tap stays on however slow the machine
    config = parse_config(
        {
            "redis": {"url": cluster.url, "cluster": True, "partitions": 2, "prefix": "tapped"},
            "stages": {"block_ms": 20, "batch_size": 50},
        }
    )
    client = connect(cluster.url, cluster=True)
    assert isinstance(client, RedisCluster)
    tap_key = config.keys.tap
    part = config.keys.partitions()[0]
    tap_port = cluster.owner(tap_key)
    assert cluster.owner(part.ingest) != tap_port, "the tap must live on another master"
    assert client.keyslot(part.ingest) != client.keyslot(tap_key)
    assert client.get_node_from_key(part.ingest).port != client.get_node_from_key(tap_key).port
    count = 3000
    client.delete(tap_key, part.ingest, part.filtered)  # nothing left by an earlier run
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(part.ingest, {"entry": json.dumps({"message": f"m{n}", "n": n})})
    pipe.execute()

    switch = tap.TapSwitch(worker="tapped-worker")
    switch.request("filter")
    stage = FilterStage(config, filters=[], tap=switch, keys=part)
    loop = StageLoop(client, stage, config.stages, config.stages.batch_size)
    loop.ensure_groups()
    stop = threading.Event()
    worker = threading.Thread(target=loop.run, args=(stop,))

    def forwarded() -> bool:
        errors = [r for r in caplog.records if r.name == "logloom.stage"]
        assert not errors, f"the loop logged errors: {caplog.text}"  # fail at the first one
        return client.xlen(part.filtered) >= count

    with caplog.at_level(logging.ERROR, "logloom.stage"):
        worker.start()
        try:
            wait_for(forwarded, 20, "every entry forwarded")
            wait_for(lambda: client.xpending(part.ingest, "filter")["pending"] == 0, 10, "the acks")
        finally:
            stop.set()
            worker.join(10)
    assert not worker.is_alive()
    assert "slot moved" not in caplog.text and "Redis unavailable" not in caplog.text
    assert not caplog.records, caplog.text
    numbers = [json.loads(fields[b"entry"])["n"] for _, fields in client.xrange(part.filtered)]
    assert sorted(numbers) == list(range(count)), "each entry forwarded exactly once"

    # Every batch recorded once (50 entries a batch: a record holds them all), on the tap's master.
    by_port = dict(zip(cluster.ports, cluster.nodes, strict=True))
    assert by_port[tap_port].xlen(tap_key) == client.xlen(tap_key) > 0
    records = [json.loads(fields[b"record"]) for _, fields in client.xrange(tap_key)]
    assert {(r["stage"], r["worker"]) for r in records} == {("filter", "tapped-worker")}
    assert sum(r["batch"] for r in records) == count, "each batch recorded once"
    tapped = Counter(item["entry"]["n"] for r in records for item in r["entries"])
    assert set(tapped) == set(range(count)) and max(tapped.values()) == 1
    assert {item["outcome"] for r in records for item in r["entries"]} == {"forwarded"}
    client.delete(tap_key, part.ingest, part.filtered)
    client.close()
