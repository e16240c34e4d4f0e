"""The demo producer of ``logloom up --demo``: realistic mixed-level logs at a steady rate.

About 40% DEBUG (which the default severity filter drops), a few with extra fields, and one in
a hundred malformed (an unknown level) so the ingest DLQ has something to show.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from pipeline.config import Config
from pipeline.embedded import resolve_url
from pipeline.producer import Producer
from pipeline.streams import connect

log = logging.getLogger("logloom.demo")

LEVEL_WEIGHTS = {"DEBUG": 40, "INFO": 35, "WARN": 15, "ERROR": 8, "FATAL": 2}
MESSAGES = {
    "AUTH": [
        "user {user} logged in",
        "bad password for {user} from {ip}",
        "token refreshed for {user}",
        "account {user} locked after 5 failures",
    ],
    "DB": [
        "query took {ms} ms: SELECT * FROM orders WHERE id = {n}",
        "connection pool exhausted ({n} waiting)",
        "replica lag {ms} ms",
    ],
    "HTTP": [
        "GET /api/orders/{n} 200 {ms}ms",
        "POST /api/login 401 {ms}ms",
        "GET /health 200 1ms",
        "upstream timeout after {ms} ms",
    ],
    "CACHE": ["miss for key order:{n}", "evicted {n} keys", "hit ratio {pct}%"],
    "PAYMENT": [
        "charge {n} succeeded",
        "charge {n} declined: insufficient funds",
        "webhook retry {n}/5",
    ],
}
USERS = ["alice", "bob", "carol", "dave", "erin", "mallory"]


def realistic_entries(
    count: int, seed: int = 7, malformed_every: int = 0
) -> Iterator[dict[str, Any]]:
    """``count`` entries with a realistic level mix and sizes of roughly 100–600 bytes as JSON."""
    rng = random.Random(seed)
    levels = list(LEVEL_WEIGHTS)
    weights = list(LEVEL_WEIGHTS.values())
    for index in range(count):
        module = rng.choice(list(MESSAGES))
        message = rng.choice(MESSAGES[module]).format(
            user=rng.choice(USERS),
            ip=f"192.168.0.{rng.randint(1, 254)}",
            ms=rng.randint(1, 5000),
            n=rng.randint(1, 99999),
            pct=rng.randint(50, 99),
        )
        entry: dict[str, Any] = {
            "level": rng.choices(levels, weights)[0],
            "module": module,
            "message": message,
            "host": f"web-{rng.randint(1, 8)}",
        }
        if rng.random() < 0.3:
            entry["trace_id"] = f"{rng.getrandbits(64):016x}"
            entry["params"] = {"user": rng.choice(USERS), "attempt": rng.randint(1, 5)}
        if rng.random() < 0.2:
            entry["detail"] = "x" * rng.randint(50, 350)
        if malformed_every and index % malformed_every == malformed_every - 1:
            entry["level"] = "VERBOSE"
        yield entry


def run_demo(config: Config) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    client = connect(resolve_url(config), config.redis.cluster)
    rate = max(1, config.demo.rate)
    producer = Producer.from_config(client, config)
    entries = realistic_entries(10**12, seed=int(time.time()), malformed_every=100)
    log.info("Demo producer: %d entries/s onto %s", rate, ", ".join(producer.streams))
    while not stop.is_set():
        started = time.monotonic()
        for _ in range(rate):
            producer.send(next(entries))
        producer.flush()
        stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))
    return 0
