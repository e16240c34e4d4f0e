"""Fixtures: a private redis-server per session, fresh data per test, worker processes, plugins."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from helpers import start_redis_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port for the whole session; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH (.ci/run installs it; apt-get install redis-server)"
        )
    process, url = start_redis_server(binary, tmp_path_factory.mktemp("redis"))
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


FAST_STAGES = {
    "block_ms": 100,
    "claim_idle_ms": 1500,
    "claim_interval_s": 0.5,
    "trim_interval_s": 1.0,
    "batch_size": 200,
}


@pytest.fixture
def write_config(tmp_path: Path, redis_url: str) -> Callable[..., Path]:
    """Write a config file for worker processes: fast timings, plugins from tmp_path/plugins."""

    def write(**sections: Any) -> Path:
        data: dict[str, Any] = {
            "redis": {"url": redis_url, "data_dir": str(tmp_path / "data")},
            "stages": dict(FAST_STAGES),
            "sink": {
                "flush_interval_ms": 200,
                "batch_size": 200,
                "retry": {"backoff_initial_ms": 50, "backoff_max_ms": 200},
            },
            "plugins": {"paths": [str(tmp_path / "plugins")], "enabled": [], "config": {}},
        }
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section].update(values)
            else:
                data[section] = values
        path = tmp_path / "logloom.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    (tmp_path / "plugins").mkdir(exist_ok=True)
    return write


@pytest.fixture
def write_plugin(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a Python plugin file into tmp_path/plugins (the directory write_config searches)."""

    def write(name: str, source: str) -> Path:
        directory = tmp_path / "plugins"
        directory.mkdir(exist_ok=True)
        path = directory / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    return write


class Workers:
    """Worker processes started by a test, stopped (SIGKILL) when it ends."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, config: Path, stage: str, *extra: str) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / f"{stage}-{len(self.processes)}.log", "wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.cli",
                    "--config",
                    str(config),
                    "worker",
                    "--stage",
                    stage,
                    "--metrics-port",
                    "-1",
                    *extra,
                ],
                cwd=self.tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    k: v
                    for k, v in os.environ.items()
                    if k not in ("LOGLOOM_REDIS_URL", "REDIS_URL")
                },
            )
        self.processes.append(process)
        return process

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("*.log")))

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.stop_all()


ATTACK_MATRIX: list[tuple[str, str]] = []


@pytest.fixture(scope="session")
def attack_matrix() -> list[tuple[str, str]]:
    """Rows (attack, outcome) that security tests add once they have checked the outcome;
    printed at the end of the run (issue 5: the suite prints the matrix)."""
    return ATTACK_MATRIX


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ATTACK_MATRIX:
        terminalreporter.section("attack matrix (checked by the tests above)")
        for attack, outcome in ATTACK_MATRIX:
            terminalreporter.write_line(f"{attack:<32} {outcome}")
