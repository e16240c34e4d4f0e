"""The metric catalog (CONTRACT §9): queue figures read at scrape time, the circuit state gauge,
and several worker processes on one machine summed into one /metrics."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import free_port, wait_for
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from rq.queue import Queue

from pipeline import control
from pipeline.config import CircuitConfig, PluginSettings
from pipeline.entry import Entry
from pipeline.health import GuardedPlugin
from pipeline.keys import Keys
from pipeline.metrics import CircuitState, QueueCollector
from pipeline.plugin import Failure, PluginInfo
from pipeline.producer import Producer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples_of(text: str) -> Samples:
    """Every sample of a /metrics page, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        return samples_of(page.read().decode())


def registry_with(collector: QueueCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_queue_figures_per_group_lag_pending_oldest_age_and_active_consumers(
    client: redis.Redis,
) -> None:
    keys = Keys()
    for n in range(5):
        client.xadd(keys.ingest, {"entry": f'{{"message": "m{n}"}}'})
    client.xgroup_create(keys.ingest, "filter", id="0")
    client.xreadgroup("filter", "gone-worker", {keys.ingest: ">"}, count=1)
    time.sleep(0.4)
    client.xreadgroup("filter", "live-worker", {keys.ingest: ">"}, count=2)
    client.xadd(keys.dlq("filter"), {"entry": "{}", "error": "ValueError: x"})
    client.xadd(keys.dlq("filter"), {"entry": "{}", "error": "ValueError: y"})
    Queue(keys.ai_queue, connection=client).enqueue("builtins.len", "abc")

    registry = registry_with(QueueCollector(client, keys, active_idle_ms=300))
    group = {"stream": keys.ingest, "group": "filter"}
    assert registry.get_sample_value("logloom_redis_up") == 1
    assert registry.get_sample_value("logloom_stream_length", {"stream": keys.ingest}) == 5
    assert registry.get_sample_value("logloom_group_lag", group) == 2
    assert registry.get_sample_value("logloom_group_pending", group) == 3
    oldest = registry.get_sample_value("logloom_group_oldest_pending_seconds", group)
    assert oldest is not None and 0.3 < oldest < 30
    assert registry.get_sample_value("logloom_group_consumers", group) == 2
    assert registry.get_sample_value("logloom_group_consumers_active", group) == 1, (
        "the consumer idle past the threshold is not counted"
    )
    assert registry.get_sample_value("logloom_dlq_size", {"stage": "filter"}) == 2
    assert registry.get_sample_value("logloom_dlq_size", {"stage": "sink"}) == 0
    rq = {"queue": keys.ai_queue}
    assert registry.get_sample_value("logloom_rq_jobs", {**rq, "state": "queued"}) == 1
    assert registry.get_sample_value("logloom_rq_jobs", {**rq, "state": "failed"}) == 0
    assert registry.get_sample_value("logloom_rq_workers", rq) == 0
    results = {"stream": keys.ai_results}
    assert registry.get_sample_value("logloom_stream_length", results) == 0


def test_a_scrape_with_redis_down_says_so_instead_of_failing() -> None:
    down = redis.Redis(port=free_port(), socket_connect_timeout=1)
    registry = registry_with(QueueCollector(down, Keys()))
    assert registry.get_sample_value("logloom_redis_up") == 0
    names = {family.name for family in registry.collect()}
    assert names == {"logloom_redis_up"}, "no stale or half-read queue figures"


class Answering:
    """A filter plugin whose answer the test sets; it notes the circuit gauge while called."""

    runtime = "python"
    origin = "test"

    def __init__(self, name: str) -> None:
        self.info = PluginInfo(name=name, version="1.0.0", type="filter")
        self.answer: Any = Failure("ValueError: broken")
        self.gauge_seen: list[float | None] = []

    @property
    def name(self) -> str:
        return self.info.name

    def call_batch(self, entries: Sequence[Entry]) -> list[Any]:
        self.gauge_seen.append(circuit_state(self.name))
        return [self.answer] * len(entries)

    def shutdown(self) -> None:
        pass


def circuit_state(plugin: str) -> float | None:
    return REGISTRY.get_sample_value("logloom_plugin_circuit_state", {"plugin": plugin})


def test_the_circuit_state_gauge_follows_the_breaker() -> None:
    plugin = Answering("circuit_gauge_probe")
    settings = PluginSettings(circuit=CircuitConfig(failures=2, cooldown_s=0.2))
    guard = GuardedPlugin(plugin, settings, budget_ms=500)
    batch = [Entry({"level": "INFO", "message": "m"})] * 2
    assert circuit_state(plugin.name) == CircuitState.CLOSED, "a loaded plugin has a series"

    guard.call_batch(batch)
    assert circuit_state(plugin.name) == CircuitState.CLOSED
    guard.call_batch(batch)
    assert circuit_state(plugin.name) == CircuitState.OPEN
    guard.call_batch(batch)  # refused without a call
    assert len(plugin.gauge_seen) == 2
    assert circuit_state(plugin.name) == CircuitState.OPEN

    time.sleep(0.25)
    plugin.answer = True
    guard.call_batch(batch)
    assert plugin.gauge_seen[-1] == CircuitState.HALF_OPEN, "half-open during the probe"
    assert circuit_state(plugin.name) == CircuitState.CLOSED


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOGLOOM_REDIS_URL", "REDIS_URL")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return {**env, **extra}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``logloom ARGS…`` processes (logs in tmp_path); SIGKILLed when the test ends."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{args[0]}-{len(started)}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "--config", str(config), *args],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()


def produce_in_chunks(client: redis.Redis, count: int) -> int:
    """``count`` entries, a third of them DEBUG (dropped by log_filter_severity), in small
    chunks so both workers' blocked reads get some; returns how many are DEBUG."""
    with Producer(client, batch=50) as producer:
        for n in range(count):
            producer.send({"level": "DEBUG" if n % 3 == 0 else "ERROR", "message": f"m{n}"})
            if n % 50 == 49:
                producer.flush()
                time.sleep(0.02)
    return len(range(0, count, 3))


def wait_for_filter_workers(client: redis.Redis, count: int) -> None:
    """Until ``count`` filter workers have reported in: a worker still starting when the entries
    come would leave them all to the other, and the test would check nothing."""
    wait_for(
        lambda: (
            sum(r["stage"] == "filter" for r in control.worker_reports(client, Keys())) == count
        ),
        60,
        f"{count} filter workers",
    )


def per_process(directory: Path, tmp_path: Path, name: str, **labels: str) -> dict[int, float]:
    """What each process wrote to a multiprocess directory, read file by file."""
    found = {}
    for file in directory.glob("counter_*.db"):
        alone = tmp_path / f"alone-{file.stem}"
        alone.mkdir()
        shutil.copy(file, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        count = registry.get_sample_value(name, labels)
        if count:
            found[int(file.stem.rsplit("_", 1)[1])] = count
    return found


@pytest.mark.slow
def test_up_sums_two_filter_workers_into_one_metrics(
    tmp_path: Path,
    client: redis.Redis,
    write_config: Callable[..., Path],
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    out = tmp_path / "out.jsonl"
    config = write_config(
        filter={"workers": 2},
        metrics={"port": port},
        plugins={
            "enabled": ["log_filter_severity", "sink_jsonl"],
            "config": {"sink_jsonl": {"path": str(out)}},
        },
    )
    up = processes(config, "up", env=child_env())
    wait_for_filter_workers(client, 2)
    group = {"stream": "logloom:ingest", "group": "filter"}
    dropped = produce_in_chunks(client, 3000)

    def settled() -> Samples | None:
        samples = scrape(port)
        out_total = value(samples, "logloom_entries_out_total", stage="sink:sink_jsonl")
        return samples if out_total == 3000 - dropped else None

    samples = wait_for(settled, 60, "every kept entry delivered")
    assert value(samples, "logloom_entries_in_total", stage="filter") == 3000
    assert value(samples, "logloom_entries_out_total", stage="filter") == 3000 - dropped
    assert (
        value(
            samples, "logloom_entries_dropped_total", stage="filter", plugin="log_filter_severity"
        )
        == dropped
    )
    assert value(samples, "logloom_group_lag", **group) == 0
    assert value(samples, "logloom_group_pending", **group) == 0
    assert value(samples, "logloom_group_consumers_active", **group) == 2
    assert value(samples, "logloom_plugin_circuit_state", plugin="log_filter_severity") == 0
    batches = value(samples, "logloom_batch_size_count", stage="filter")
    assert batches is not None and batches >= 2
    calls = value(
        samples, "logloom_plugin_call_seconds_count", plugin="log_filter_severity", type="filter"
    )
    assert calls is not None and calls >= 2

    each = per_process(
        tmp_path / "data" / "metrics", tmp_path, "logloom_entries_in_total", stage="filter"
    )
    assert len(each) == 2, f"both filter workers took entries: {each}"
    assert sum(each.values()) == 3000
    up.send_signal(signal.SIGTERM)
    assert up.wait(timeout=30) == 0


@pytest.mark.slow
def test_metrics_command_sums_the_workers_sharing_its_directory(
    tmp_path: Path,
    client: redis.Redis,
    write_config: Callable[..., Path],
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """Workers started one by one on a machine (no `up`), one `logloom metrics` for them all;
    a killed worker's counters stay in the sum, its live-only gauges go."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    env = child_env(PROMETHEUS_MULTIPROC_DIR=str(directory))
    config = write_config(plugins={"enabled": ["log_filter_severity"]})
    workers = [processes(config, "worker", "--stage", "filter", env=env) for _ in range(2)]
    port = free_port()
    exporter = processes(config, "metrics", "--host", "127.0.0.1", "--port", str(port), env=env)
    wait_for_filter_workers(client, 2)
    dropped = produce_in_chunks(client, 1500)
    samples = wait_for(
        lambda: (
            (s := scrape(port))
            and value(s, "logloom_entries_in_total", stage="filter") == 1500
            and s
        ),
        30,
        "every entry counted",
    )
    assert value(samples, "logloom_stream_length", stream="logloom:filtered") == 1500 - dropped
    assert value(samples, "logloom_redis_up") == 1
    group = {"stream": "logloom:ingest", "group": "filter"}
    assert value(samples, "logloom_group_consumers_active", **group) == 2
    each = per_process(directory, tmp_path, "logloom_entries_in_total", stage="filter")
    assert sorted(each) == sorted(w.pid for w in workers), "each worker counted its own"

    victim = workers[0]
    live_gauge = directory / f"gauge_livemax_{victim.pid}.db"
    assert live_gauge.exists(), "the worker's circuit state is a live-only gauge"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    after = scrape(port)
    assert not live_gauge.exists(), "a dead worker's live-only gauges are forgotten at scrape"
    assert value(after, "logloom_entries_in_total", stage="filter") == 1500, "counters stay"
    assert value(after, "logloom_plugin_circuit_state", plugin="log_filter_severity") == 0

    exporter.send_signal(signal.SIGTERM)
    assert exporter.wait(timeout=10) == 0


WORDS_PLUGIN = """
PLUGIN_INFO = {"name": "ai_words", "version": "1.0.0", "type": "ai"}
def plugin_init(): return 0
def analyze(entry):
    words = entry["message"].split()
    for n in range(1, len(words) + 1):
        yield {"summary": " ".join(words[:n])}
def plugin_shutdown(): pass
"""


@pytest.mark.slow
def test_a_standalone_ai_worker_serves_its_jobs_figures(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """compose.yaml scrapes each ai replica: the RQ jobs run in that process, so their figures
    (results streamed, job time, plugin errors) are on its own /metrics."""
    write_plugin("ai_words", WORDS_PLUGIN)
    config = write_config(
        ai={"batch_size": 10, "flush_interval_ms": 100},
        plugins={"enabled": ["ai_words"]},
    )
    port = free_port()
    processes(config, "worker", "--stage", "ai", "--metrics-port", str(port), env=child_env())
    keys = Keys()

    def ai_group_ready() -> bool:
        try:
            return any(g["name"] == b"ai" for g in client.xinfo_groups(keys.filtered))
        except redis.ResponseError:
            return False

    wait_for(ai_group_ready, 30, "the ai stage's group")
    client.xadd(keys.filtered, {"entry": '{"level": "ERROR", "message": "three words here"}'})
    results = {"plugin": "ai_words"}
    samples = wait_for(
        lambda: (
            (s := scrape(port))
            and value(s, "logloom_ai_results_total", **results, final="1") == 1
            and s
        ),
        30,
        "the job's results counted",
    )
    assert value(samples, "logloom_ai_results_total", **results, final="0") == 2
    assert value(samples, "logloom_ai_job_seconds_count", **results) == 1
    assert value(samples, "logloom_entries_in_total", stage="ai") == 1
    assert len(client.xrange(keys.ai_results)) == 3
