"""What plugins in another process share: a link that can break, and the plugin adapter over it.

A :class:`Link` is one connection to a plugin — a host subprocess's pipes
(:mod:`pipeline.runtimes.process`) or a service's socket (:mod:`pipeline.runtimes.service`) —
that speaks its protocol. :class:`RemotePlugin` turns a link into a Plugin that survives it:
every call has a deadline that grows with the batch, a broken link (crash, hang, garbage, a
half line, an oversized answer) is logged once per incident as ``[ERROR] Plugin communication
failed: <plugin>: <cause>`` and opened again, with backoff when reopening fails. The entries of
a filter's batch that broke the link are retried one by one, so only the one that breaks it
again fails; a sink's batch fails whole, since it may have been delivered, and the sink stage
retries it.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import orjson

from pipeline.entry import Entry
from pipeline.errors import PluginCallError
from pipeline.metrics import PLUGIN_RESTARTS
from pipeline.plugin import Failure, PluginInfo

log = logging.getLogger("logloom.plugins")

MAX_ANSWER_BYTES = 8 * 1024 * 1024
"""A longer answer line is garbage: a runaway plugin must not eat the worker's memory."""
ENTRIES_PER_TIMEOUT = 100
"""A batch of n entries gets ``timeout × (1 + n / 100)``: a 500-entry batch, six timeouts."""
REOPEN_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)
"""Waits between attempts to restart or reconnect; entries meanwhile fail at once (the DLQ)."""
ISOLATION_GIVE_UP = 3
"""Entry-by-entry retries stop after this many broken links in a row: the plugin is down."""


class LinkError(PluginCallError):
    """The link to a plugin broke; the message is the cause, e.g. ``plugin process 4711 did not
    answer in time``."""


class Link(Protocol):
    """One connection to an out-of-process plugin."""

    def open(self, config: dict[str, Any]) -> PluginInfo:
        """Start or connect, hand over the config, and return the plugin's info."""

    def call(self, entries: Sequence[Entry], deadline: float) -> list[Any]:
        """One result or Failure per entry; LinkError if the link broke."""

    def close(self) -> None:
        """Let go of the plugin politely (shutdown request), then for sure."""


def write_all(fd: int, data: bytes, deadline: float, what: str) -> None:
    """Write to a non-blocking fd by ``deadline`` (a plugin that stops reading must not hang us)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            written = 0
        except OSError as exc:  # a closed pipe, a reset or unreachable peer
            raise LinkError(f"{what}: {exc.strerror or type(exc).__name__}") from None
        view = view[written:]
        if view:
            _wait(fd, select.POLLOUT, deadline, what)


def read_line(fd: int, buffer: bytearray, deadline: float, what: str) -> bytes:
    """The next line from a non-blocking fd, waiting until ``deadline``."""
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            return line
        if len(buffer) > MAX_ANSWER_BYTES:
            raise LinkError(
                f"answer over {MAX_ANSWER_BYTES // (1024 * 1024)} MiB without a newline"
            )
        if not _wait(fd, select.POLLIN, deadline, what):
            continue
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise LinkError(f"{what}: {exc.strerror or type(exc).__name__}") from None
        if not chunk:
            half = f" after half a line ({len(buffer)} bytes)" if buffer else ""
            raise LinkError(f"{what} closed the connection{half}")
        buffer += chunk


def _wait(fd: int, event: int, deadline: float, what: str) -> bool:
    """Wait for ``fd`` to be ready (poll: any fd number, unlike select); LinkError at the
    deadline. False if woken without it being ready."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise LinkError(f"{what} did not answer in time")
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(max(1, int(remaining * 1000))))


def entries_json(entries: Sequence[Entry]) -> bytes:
    """The entries as a comma-separated run of JSON objects, on one line whatever they hold.

    Each entry's own bytes are reused; one a producer sent pretty-printed (JSON may hold raw
    newlines between tokens) is encoded again, or it would split the protocol's line in two.
    A bare carriage return counts too: readers with universal newlines (Python's text-mode
    ``for line in sys.stdin``) end a line there.
    """
    body = b",".join([entry.to_json() for entry in entries])
    if b"\n" in body or b"\r" in body:
        parts = []
        for entry in entries:
            raw = entry.to_json()
            parts.append(orjson.dumps(entry) if b"\n" in raw or b"\r" in raw else raw)
        body = b",".join(parts)
    return body


def ids_json(entries: Sequence[Entry]) -> bytes:
    """``,"ids":[...]``: the stream IDs of entries a sink stage read (:attr:`Entry.id`), for
    sinks that deduplicate by them; empty where the entries have none."""
    if not entries or entries[0].id is None:
        return b""
    return b',"ids":' + orjson.dumps([entry.id for entry in entries])


def batch_results(answer: Any, count: int) -> list[Any]:
    """Results from a §5 batch answer ``{"status", "results", "errors"}``; LinkError if garbage."""
    if not isinstance(answer, dict) or "status" not in answer:
        raise LinkError(f"answered {str(answer)[:80]!r}, not a status object")
    if answer["status"] != 0:
        return [Failure(str(answer.get("error") or f"status {answer['status']}"))] * count
    results = answer.get("results")
    if not isinstance(results, list) or len(results) != count:
        got = len(results) if isinstance(results, list) else "no"
        raise LinkError(f"answered {got} results for {count} entries")
    errors = answer.get("errors") or {}
    if not isinstance(errors, dict):
        raise LinkError("answered 'errors' that is not an object")
    unavailable = answer.get("unavailable")
    down = {i for i in unavailable if type(i) is int} if isinstance(unavailable, list) else set()
    for index, error in errors.items():
        # An index past the batch is ignored, also one too long for int() to read (4300 digits).
        digits = str(index)
        if digits.isdecimal() and digits.isascii():
            position = int(digits.lstrip("0")[:20] or "0")
            if position < count:
                results[position] = Failure(str(error), position in down)
    return results


class RemotePlugin:
    """A plugin behind a :class:`Link`, adapted onto the Plugin protocol."""

    def __init__(
        self,
        link: Link,
        info: PluginInfo,
        origin: str,
        runtime: str,
        config: dict[str, Any],
        timeout_ms: int,
    ) -> None:
        self.link = link
        self.info = info
        self.origin = origin
        self.runtime = runtime
        self.config = config
        self.timeout_s = timeout_ms / 1000
        self.restarts = 0
        self._incident: str | None = None  # the cause, logged once, until the plugin answers
        self._needs_open = False
        self._reopen_at = 0.0
        self._failed_reopens = 0

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def down(self) -> str | None:
        """Why the plugin cannot be reached right now, or None."""
        return self._incident

    def budget_s(self, count: int) -> float:
        return self.timeout_s * (1 + count / ENTRIES_PER_TIMEOUT)

    def call_batch(self, entries: Sequence[Entry]) -> list[Any]:
        if not entries:
            return []
        try:
            results = self._call(entries)
        except LinkError as exc:
            self.mark_broken(str(exc))
            if len(entries) == 1 or self.info.type == "sink":
                # A sink's batch may have been delivered before the link broke: the sink stage
                # retries it whole, rather than this sending it once more entry by entry.
                return [Failure(str(exc))] * len(entries)
            results, healthy = self._one_by_one(entries)
            if not healthy:
                return results
        if self._incident is not None:
            log.info("Plugin '%s' answers again", self.name)
            self._incident = None
        return results

    def _call(self, entries: Sequence[Entry]) -> list[Any]:
        exiting = getattr(self.link, "exiting", None)
        if exiting:  # it answered its last call, then left: a new one, and no error for this
            log.warning("Plugin '%s': %s; its host is started again", self.name, exiting)
            self._needs_open = True
            self.link.close()
        if self._needs_open:
            self._reopen()
        return self.link.call(entries, time.monotonic() + self.budget_s(len(entries)))

    def _one_by_one(self, entries: Sequence[Entry]) -> tuple[list[Any], bool]:
        """After a broken batch, each entry alone: only the entries that break it again fail.
        Also says whether the plugin answered the last one."""
        results: list[Any] = []
        broken_in_a_row = 0
        for entry in entries:
            if broken_in_a_row >= ISOLATION_GIVE_UP:
                results.append(Failure(f"plugin unavailable: {self._incident}"))
                continue
            try:
                results += self._call([entry])
                broken_in_a_row = 0
            except LinkError as exc:
                self.mark_broken(str(exc))
                results.append(Failure(str(exc)))
                broken_in_a_row += 1
        return results, broken_in_a_row == 0

    def stream(self, entry: Entry) -> Iterator[tuple[Any, bool]]:
        """An ai plugin's ``(result, final)`` pairs for one entry as they arrive, where the link
        can stream (a plugin host); else its one answer. PluginCallError if it fails."""
        stream = getattr(self.link, "stream", None)
        if stream is None:
            (answer,) = self.call_batch([entry])
            if isinstance(answer, Failure):
                raise PluginCallError(answer.error)
            yield answer, True
            return
        try:
            if self._needs_open:
                self._reopen()
            yield from stream(entry, self.timeout_s)
        except LinkError as exc:
            self.mark_broken(str(exc))
            raise PluginCallError(str(exc)) from None
        self._incident = None

    def mark_broken(self, cause: str) -> None:
        """Close the link so the next call reopens it; log the first failure of an incident."""
        if self._incident is None:
            log.error("Plugin communication failed: %s: %s", self.name, cause)
            self._incident = cause
        self._needs_open = True
        self.link.close()

    def _reopen(self) -> None:
        now = time.monotonic()
        if now < self._reopen_at:
            raise LinkError(
                f"still down, next try in {self._reopen_at - now:.1f} s: {self._incident}"
            )
        try:
            self.info = self.link.open(self.config)
        except LinkError as exc:
            self._failed_reopens += 1
            step = min(self._failed_reopens, len(REOPEN_BACKOFF_S) - 1)
            self._reopen_at = now + REOPEN_BACKOFF_S[step]
            raise LinkError(f"cannot restart: {exc}") from None
        self._failed_reopens = 0
        self._needs_open = False
        self.restarts += 1
        PLUGIN_RESTARTS.labels(self.name, self.runtime).inc()

    def shutdown(self) -> None:
        self.link.close()
