"""Real worker processes against the benchmark's Redis, a paced producer, and /proc sampling.

Shared by the latency and memory figures: a filter worker and a sink worker run as
``logloom worker --stage filter|sink`` subprocesses with a config written for them (the
severity filter, and ``benchmarks/plugins/bench_latency_sink``: ``sink_jsonl`` plus a clock),
while this process offers entries at a fixed rate, each stamped with ``time.time_ns()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml

from benchmarks.figures import BenchmarkError, group_info
from pipeline.config import Config, parse_config
from workers.demo import realistic_entries

SINK = "bench_latency_sink"
PLUGIN_DIR = Path(__file__).resolve().parent / "plugins"
SEED = 7
BODIES = 20_000  # distinct entries, cycled
STOP_TIMEOUT_S = 30.0
# What would point the workers elsewhere than the benchmark's own Redis and config.
INHERITED_NOT = {"LOGLOOM_REDIS_URL", "REDIS_URL", "LOGLOOM_CONFIG", "PROMETHEUS_MULTIPROC_DIR"}


@dataclass(frozen=True)
class Bodies:
    """Entries as JSON, without their closing brace's opening: ``b'{"sent_ns":N,' + tail``."""

    tails: list[bytes]
    kept: list[bool]  # the severity filter keeps it (not DEBUG)


def make_bodies(count: int = BODIES) -> Bodies:
    tails, kept = [], []
    for entry in realistic_entries(count, SEED):
        tails.append(orjson.dumps(entry)[1:])
        kept.append(entry["level"] != "DEBUG")
    return Bodies(tails, kept)


def pipeline_config(
    url: str, workdir: Path, overrides: dict[str, Any], seconds_per_entry: float = 0.0
) -> dict[str, Any]:
    """The workers' config: defaults, the severity filter, the clocked sink, ``overrides``
    (``{"sink": {...}, "stages": {...}}``) on top."""
    config: dict[str, Any] = {
        "redis": {"url": url, "embedded": "never", "data_dir": str(workdir / "data")},
        "plugins": {
            "enabled": ["log_filter_severity", SINK],
            "paths": [str(PLUGIN_DIR)],
            "config": {
                SINK: {
                    "path": str(workdir / "out.jsonl"),
                    "times_path": str(workdir / "times"),
                    "seconds_per_entry": seconds_per_entry,
                }
            },
        },
    }
    for section, values in overrides.items():
        if values:
            config[section] = dict(values)
    return config


def logloom_command() -> list[str]:
    script = Path(sys.executable).parent / "logloom"
    if script.exists():
        return [str(script)]
    found = shutil.which("logloom")
    if found is None:
        raise BenchmarkError("no `logloom` command beside this Python or on PATH")
    return [found]


@dataclass
class Workers:
    """The running worker processes, by stage, and the config they run with."""

    config: Config
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def problem(self) -> str | None:
        """Which worker died, with the end of its log; None while all run."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = self.logs[name].read_text(errors="replace")[-2000:]
                return f"{name} worker exited with {process.returncode}; its log ends:\n{tail}"
        return None

    def check_alive(self) -> None:
        if found := self.problem():
            raise BenchmarkError(found)


def start_workers(raw: dict[str, Any], workdir: Path, names: Sequence[str]) -> Workers:
    """``logloom worker`` processes on ``raw`` (written as YAML to ``workdir``), one per name:
    ``<stage>`` or ``<stage>-<n>`` (``filter-2``), each logging to ``<name>.log``."""
    config_path = workdir / "logloom.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    env = {key: value for key, value in os.environ.items() if key not in INHERITED_NOT}
    workers = Workers(parse_config(raw))
    try:
        for name in names:
            log_path = workdir / f"{name}.log"
            workers.logs[name] = log_path
            with log_path.open("wb") as log_file:
                workers.processes[name] = subprocess.Popen(
                    [*logloom_command(), "--config", str(config_path), "worker",
                     "--stage", name.split("-")[0], "--metrics-port", "-1"],
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    cwd=workdir, env=env,
                )  # fmt: skip
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: Workers) -> None:
    """SIGTERM every worker, then wait for each (SIGKILL after STOP_TIMEOUT_S)."""
    for process in workers.processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in workers.processes.values():
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_workers(client: redis.Redis, raw: dict[str, Any], workdir: Path) -> Iterator[Workers]:
    """A filter and a sink worker on ``raw``, ready (groups created); stopped at the end."""
    workers = start_workers(raw, workdir, ["filter", "sink"])
    try:
        wait_ready(client, workers)
        yield workers
    finally:
        stop_workers(workers)


def wait_ready(client: redis.Redis, workers: Workers, timeout_s: float = 30.0) -> None:
    """Until both workers' consumer groups exist (each creates its own at start)."""
    keys = workers.config.keys
    wanted = [(keys.ingest, "filter"), (keys.filtered, keys.sink_group(SINK))]
    deadline = time.monotonic() + timeout_s
    while True:
        workers.check_alive()
        try:
            for stream, group in wanted:
                group_info(client, stream, group)
            return
        except (BenchmarkError, redis.ResponseError):
            if time.monotonic() > deadline:
                raise BenchmarkError(f"workers not ready after {timeout_s:.0f} s") from None
            time.sleep(0.1)


@dataclass(frozen=True)
class Offered:
    sent: int
    kept: int  # of those, entries the filter keeps
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds


def offer(
    client: redis.Redis,
    stream: str,
    bodies: Bodies,
    rate: float,
    seconds: float,
    tick_s: float = 0.002,
    workers: Workers | None = None,
) -> Offered:
    """XADD at ``rate`` entries/s for ``seconds``: every ``tick_s`` the entries now due, in
    one pipeline, each with ``sent_ns`` = ``time.time_ns()`` just before it is sent. A producer
    that falls behind sends what is due (up to 1000 per round trip) without sleeping."""
    count = len(bodies.tails)
    sent = kept = 0
    started = time.monotonic()
    next_check = started + 1.0
    while True:
        now = time.monotonic()
        elapsed = now - started
        if elapsed >= seconds:
            break
        due = min(int(rate * elapsed) - sent, 1000)
        if due > 0:
            pipe = client.pipeline(transaction=False)
            stamp = b'{"sent_ns":%d,' % time.time_ns()
            for index in range(sent, sent + due):
                pipe.xadd(stream, {b"entry": stamp + bodies.tails[index % count]})
                kept += bodies.kept[index % count]
            pipe.execute()
            sent += due
        if workers is not None and now >= next_check:
            workers.check_alive()
            next_check = now + 1.0
        if due < 1000:
            time.sleep(max(0.0, started + (int(elapsed / tick_s) + 1) * tick_s - time.monotonic()))
    return Offered(sent, kept, time.monotonic() - started)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchmarkError(f"no VmRSS for process {pid}")


class RssSampler(threading.Thread):
    """Every ``interval_s``, the RSS (KiB) of each worker and Redis's used_memory (bytes)."""

    def __init__(self, workers: Workers, client: redis.Redis, interval_s: float = 1.0) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids = {stage: process.pid for stage, process in workers.processes.items()}
        self.client = client
        self.interval_s = interval_s
        self.samples: dict[str, list[int]] = {stage: [] for stage in self.pids}
        self.samples["redis"] = []
        self.halt = threading.Event()

    def sample(self) -> None:
        for stage, pid in self.pids.items():
            self.samples[stage].append(rss_kib(pid))
        self.samples["redis"].append(int(self.client.info("memory")["used_memory"]))

    def run(self) -> None:
        while not self.halt.wait(self.interval_s):
            self.sample()
