"""Helpers the tests share."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def start_redis_server(
    binary: str, directory: Path, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on ``port`` (default: a free one), without persistence; and its URL."""
    port = port or free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(directory / "redis.log"),
        ],
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{binary} did not start on port {port}") from None
            time.sleep(0.05)
    client.close()
    return process, url


QUICK_RETRYING_SINK = {
    "flush_interval_ms": 100,
    "batch_size": 500,
    "retry": {"max_attempts": 3, "backoff_initial_ms": 50, "backoff_max_ms": 300},
}
"""The ``sink`` section of the far-side-goes-away tests: batches of 500, retries in milliseconds."""


def produce_requests(client: redis.Redis, start: int, count: int, prefix: str = "logloom") -> None:
    """``count`` INFO entries ``request <seq>`` from module ``api``, each with its ``seq``, in one
    pipelined round trip: what the sink tests send through and look for on the far side."""
    import orjson

    pipe = client.pipeline(transaction=False)
    for seq in range(start, start + count):
        entry = {"level": "INFO", "module": "api", "message": f"request {seq}", "seq": seq}
        pipe.xadd(f"{prefix}:ingest", {"entry": orjson.dumps(entry)})
    pipe.execute()
