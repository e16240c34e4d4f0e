"""Producing entries: pipelined XADDs onto the ingest stream, with backpressure.

Any Redis client can produce (``XADD logloom:ingest * level ERROR message "..."``); this API adds
batching (one round trip per ``batch`` entries, never one per entry) and backpressure: while the
ingest stream holds more than ``max_len`` entries, :meth:`Producer.flush` waits for the workers
to catch up, or raises BackpressureError (``backpressure: fail``, or after the timeout). Nothing
is ever trimmed to make room.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson
import redis

from pipeline.config import Config
from pipeline.entry import ENTRY_FIELD
from pipeline.errors import BackpressureError
from pipeline.keys import Keys


class Producer:
    """Buffers entries and XADDs them in pipelined batches. Use as a context manager."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys | None = None,
        *,
        batch: int = 1000,
        max_len: int = 1_000_000,
        backpressure: Literal["wait", "fail"] = "wait",
        backpressure_timeout_s: float = 30.0,
    ) -> None:
        self.client = client
        self.stream = (keys or Keys()).ingest
        self.batch = batch
        self.max_len = max_len
        self.backpressure = backpressure
        self.backpressure_timeout_s = backpressure_timeout_s
        self._buffer: list[bytes] = []
        self.sent = 0

    @classmethod
    def from_config(cls, client: redis.Redis, config: Config) -> Producer:
        return cls(
            client,
            config.keys,
            batch=config.ingest.producer_batch,
            max_len=config.ingest.max_len,
            backpressure=config.ingest.backpressure,
            backpressure_timeout_s=config.ingest.backpressure_timeout_s,
        )

    def send(self, entry: Mapping[str, Any] | bytes | str) -> None:
        """Queue one entry: a dict, or JSON text/bytes sent as is (the pipeline validates it)."""
        if isinstance(entry, Mapping):
            payload = orjson.dumps(entry)
        elif isinstance(entry, str):
            payload = entry.encode()
        else:
            payload = entry
        self._buffer.append(payload)
        if len(self._buffer) >= self.batch:
            self.flush()

    def send_many(self, entries: Iterable[Mapping[str, Any] | bytes | str]) -> int:
        count = 0
        for entry in entries:
            self.send(entry)
            count += 1
        self.flush()
        return count

    def flush(self) -> None:
        """XADD everything buffered in one round trip, once the stream has room."""
        if not self._buffer:
            return
        self._wait_for_room()
        pipe = self.client.pipeline(transaction=False)
        for payload in self._buffer:
            pipe.xadd(self.stream, {ENTRY_FIELD: payload})
        pipe.execute()
        self.sent += len(self._buffer)
        self._buffer.clear()

    def _wait_for_room(self) -> None:
        deadline = time.monotonic() + self.backpressure_timeout_s
        delay = 0.05
        while True:
            length = int(self.client.xlen(self.stream))
            if length < self.max_len:
                return
            if self.backpressure == "fail" or time.monotonic() >= deadline:
                raise BackpressureError(
                    f"{self.stream} holds {length} entries, over ingest.max_len={self.max_len}: "
                    "the workers are behind (start more, or raise ingest.max_len)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()
