"""What every dashboard route shares: the config, one Redis client, and the sampler's snapshots.

The sampler runs as one task of the server's event loop: it reads Redis in a worker thread, then
publishes the snapshot and wakes every open event stream (:meth:`Dashboard.wait_newer`). Shared
state is changed only on the event loop, so routes read it without locks.
"""

from __future__ import annotations

import asyncio
import logging
import time

import anyio.to_thread
import redis

from pipeline.config import Config
from pipeline.dashboard.sampler import Sampler
from pipeline.keys import Keys
from pipeline.log import redact, redact_url
from pipeline.plugin import describe_exception
from pipeline.streams import connect

log = logging.getLogger("logloom.dashboard")


class Dashboard:
    """The state of one dashboard server; route providers get it (see :mod:`.server`)."""

    def __init__(self, config: Config, url: str) -> None:
        self.config = config
        self.keys: Keys = config.keys
        self.client = connect(url, config.redis.cluster)
        self.redis_shown = redact_url(url)  # the only form of the URL a page ever sees
        self.interval_s = config.dashboard.refresh_ms / 1000
        self.sampler = Sampler(
            self.client,
            self.keys,
            self.redis_shown,
            self.interval_s,
            config.dashboard.history_minutes,
        )
        self.closing = False  # set on SIGTERM/SIGINT: event streams end so the server can stop
        self._changed: asyncio.Condition | None = None

    def redis_error(self, exc: redis.RedisError) -> str:
        """Why Redis failed, as a page or a log line may show it (the password masked)."""
        return f"Redis at {self.redis_shown}: {redact(str(exc)) or type(exc).__name__}"

    async def run_sampler(self) -> None:
        """Sample every ``refresh_ms`` until cancelled. A failed sample (Redis down, or a report
        the sampler cannot read) is shown on the page and logged once per distinct cause, never
        fatal: the next sample may succeed."""
        self._changed = asyncio.Condition()
        down: str | None = None
        while True:
            started = time.monotonic()
            try:
                snapshot, results = await anyio.to_thread.run_sync(self.sampler.sample)
                self.sampler.publish(snapshot, results)
                if down:
                    log.info("Dashboard: sampling works again (it failed with: %s)", down)
                down = None
            except Exception as exc:
                outage = isinstance(exc, redis.RedisError)
                if isinstance(exc, redis.RedisError):
                    error = self.redis_error(exc)
                else:  # a bug, or a worker report it cannot read: its traceback, once
                    error = f"sampling failed: {redact(describe_exception(exc))}"
                if error != down:
                    log.warning(
                        "Dashboard: %s; showing the last figures", error, exc_info=not outage
                    )
                down = error
                self.sampler.failed(error)
            async with self._changed:
                self._changed.notify_all()
            await asyncio.sleep(max(0.05, self.interval_s - (time.monotonic() - started)))

    async def wait_newer(self, seq: int, timeout_s: float) -> bool:
        """Wait until a snapshot newer than ``seq`` is published; False after ``timeout_s``."""
        if self.sampler.seq > seq:
            return True
        if self._changed is None:  # the sampler has not started yet
            await asyncio.sleep(min(timeout_s, self.interval_s))
            return self.sampler.seq > seq
        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.sampler.seq > seq), timeout_s
                )
        except asyncio.TimeoutError:
            return False
        return True
