"""Per-plugin health: the one wrapper every loaded plugin runs in, whatever its runtime.

It times each call into the latency histogram, checks the answer's length and every result
against the plugin type's contract (:mod:`pipeline.outputs`: a filter's ``"yes"`` becomes a
Failure saying so, never a kept entry), counts calls and failures for ``logloom plugins list``,
and runs a circuit breaker (design §5.3): after ``circuit.failures`` calls in a row that failed
for every entry (a dead link, a plugin that raises on anything), the plugin is not called for
``circuit.cooldown_s`` and its entries fail at once with ``circuit open``; then one batch is let
through to probe it. A call that fails only
some entries is a plugin at work, not a broken one.
``on_failure: pass`` turns every failure into a pass (a filter keeps the entry, a sink counts it
delivered) for plugins whose loss is better than a DLQ entry. A disabled plugin is skipped by
its stage. A plugin whose p99 call time goes over its budget costs one ``[WARN]`` line
(design §5.5.5) until it is back under.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from pipeline import outputs
from pipeline.config import PluginSettings
from pipeline.entry import Entry
from pipeline.errors import PluginLoadError
from pipeline.metrics import CIRCUIT_OPEN, CIRCUIT_STATE, PLUGIN_CALL_SECONDS, CircuitState
from pipeline.plugin import Failure, Plugin, PluginInfo

log = logging.getLogger("logloom.plugins")

CIRCUIT_OPEN_ERROR = "circuit open"
LATENCY_WINDOW = 200
"""Calls in the window a p99 is taken over; it is checked once per window."""


class Unavailable:
    """Stands in for a plugin that could not be loaded again after it was shut down."""

    def __init__(self, plugin: Plugin, cause: str) -> None:
        self.info, self.origin, self.runtime = plugin.info, plugin.origin, plugin.runtime
        self.cause = cause

    @property
    def name(self) -> str:
        return self.info.name

    def call_batch(self, entries: Sequence[Entry]) -> list[Any]:
        return [Failure(f"not loaded: {self.cause}")] * len(entries)

    def shutdown(self) -> None:
        pass


def passing_result(plugin_type: str) -> Any:
    """What a failed call becomes under ``on_failure: pass``."""
    return True if plugin_type == "filter" else 0


class GuardedPlugin:
    """A Plugin with its health around it; itself a Plugin, so stages need not know."""

    def __init__(self, plugin: Plugin, settings: PluginSettings, budget_ms: float) -> None:
        self.plugin = plugin
        self.settings = settings
        self.budget_s = (settings.p99_budget_ms or budget_ms) / 1000
        self.enabled = True
        self.calls = 0
        self.entries = 0
        self.failures = 0
        self.failed_calls_in_a_row = 0
        self.open_until: float | None = None
        self.last_error = ""
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._over_budget = False
        self._pending_reload: Callable[[], Plugin | None] | None = None
        self._reload_lock = threading.Lock()
        # A worker serving several partitions calls one plugin from a thread per partition:
        # calls (and reloads) take turns, as plugins and their host pipes expect.
        self._call_lock = threading.RLock()
        self.reloads = 0
        self._circuit_gauge = CIRCUIT_STATE.labels(self.name)
        self._circuit_gauge.set(CircuitState.CLOSED)

    @property
    def info(self) -> PluginInfo:
        return self.plugin.info

    @property
    def origin(self) -> str:
        return self.plugin.origin

    @property
    def runtime(self) -> str:
        return self.plugin.runtime

    @property
    def name(self) -> str:
        return self.plugin.name

    @property
    def restarts(self) -> int:
        return int(getattr(self.plugin, "restarts", 0))

    @property
    def state(self) -> str:
        if not self.enabled:
            return "disabled"
        if self.open_until is None:
            return "ok"
        return "open" if time.monotonic() < self.open_until else "half-open"

    def request_reload(self, load: Callable[[], Plugin | None]) -> None:
        """Reload with ``load`` before the next call, in the thread that makes the calls."""
        with self._reload_lock:
            self._pending_reload = load

    def apply_pending(self) -> None:
        """Carry out a requested reload: the new plugin replaces the old one only once it has
        loaded; if it cannot, the running one stays, with a ``[WARN]`` saying why.

        An in-process C library is the exception: opened again it is the same copy in memory,
        so it is shut down first and then configured and initialised anew (new code needs
        ``mode: isolated``, where a reload starts a new host process).
        """
        with self._reload_lock:
            load, self._pending_reload = self._pending_reload, None
        if load is None:
            return
        with self._call_lock:
            self._reload(load)

    def _reload(self, load: Callable[[], Plugin | None]) -> None:
        same_copy = self.plugin.runtime == "c"
        if same_copy:
            self._shutdown_quietly(self.plugin)
        try:
            fresh = load()
        except PluginLoadError as exc:
            # A library shut down already is not called again: its entries fail until it loads.
            outcome = "calls fail until it loads" if same_copy else "the running version stays"
            log.warning("Plugin '%s': reload failed, %s: %s", self.name, outcome, exc)
            if same_copy:
                self.plugin = Unavailable(self.plugin, str(exc))
            return
        if fresh is None:
            if same_copy:
                self.plugin = Unavailable(self.plugin, "no longer of this stage's type")
            return
        old, self.plugin = self.plugin, fresh
        self.open_until, self.failed_calls_in_a_row, self.reloads = None, 0, self.reloads + 1
        self._circuit_gauge.set(CircuitState.CLOSED)
        if not same_copy:
            self._shutdown_quietly(old)
        log.info("Plugin '%s' reloaded (version %s)", self.name, fresh.info.version)

    def _shutdown_quietly(self, plugin: Plugin) -> None:
        try:
            plugin.shutdown()
        except Exception as exc:  # it is being replaced either way
            log.warning("Plugin '%s': shutdown of the old version raised %s", self.name, exc)

    def call_batch(self, entries: Sequence[Entry], retry: bool = False) -> list[Any]:
        """``retry``: the stage is trying these entries again (a sink's flush); such a call does
        not count for the breaker, so one entry a sink cannot take does not open it."""
        with self._call_lock:
            return self._call_batch(entries, retry)

    def _call_batch(self, entries: Sequence[Entry], retry: bool) -> list[Any]:
        if self._pending_reload is not None:
            self.apply_pending()
        if self.open_until is not None:
            if time.monotonic() < self.open_until:
                refused = [Failure(CIRCUIT_OPEN_ERROR)] * len(entries)
                return self._settle(refused, refused, called=False)
            self._circuit_gauge.set(CircuitState.HALF_OPEN)  # this call is the probe
        started = time.perf_counter()
        results = self.plugin.call_batch(entries)
        elapsed = time.perf_counter() - started
        PLUGIN_CALL_SECONDS.labels(self.name, self.info.type).observe(elapsed)
        self.calls += 1
        self.entries += len(entries)
        self._watch_latency(elapsed)
        if len(results) != len(entries):
            results = [
                Failure(f"answered {len(results)} results for {len(entries)} entries")
            ] * len(entries)
        results, failures = outputs.screen(results, self.info.type)
        return self._settle(results, failures, called=True, retry=retry)

    def _settle(
        self,
        results: list[Any],
        failures: Sequence[Failure],
        called: bool,
        retry: bool = False,
    ) -> list[Any]:
        """Count ``failures`` (the Failures among ``results``), move the breaker, and apply
        ``on_failure``."""
        if called:
            self.failures += len(failures)
        if called and (not retry or self.open_until is not None):  # a probe always counts
            self._track(len(failures), len(results), failures[-1].error if failures else "")
        if not failures or self.settings.on_failure == "dlq":
            return results
        passing = passing_result(self.info.type)
        return [passing if isinstance(result, Failure) else result for result in results]

    def _track(self, failed: int, total: int, last_error: str) -> None:
        if failed < total:
            if self.open_until is not None:
                log.info("Plugin '%s': circuit closed, the plugin answers again", self.name)
            self.failed_calls_in_a_row = 0
            self.open_until = None
            self._circuit_gauge.set(CircuitState.CLOSED)
            return
        if not failed:
            return
        self.last_error = last_error
        self.failed_calls_in_a_row += 1
        half_open = self.open_until is not None
        if half_open or self.failed_calls_in_a_row >= self.settings.circuit.failures:
            cooldown = self.settings.circuit.cooldown_s
            self.open_until = time.monotonic() + cooldown
            CIRCUIT_OPEN.labels(self.name).inc()
            self._circuit_gauge.set(CircuitState.OPEN)
            log.warning(
                "Plugin '%s': circuit open after %d failed calls in a row (last: %s); "
                "its entries %s for %.0f s",
                self.name,
                self.failed_calls_in_a_row,
                last_error,
                "pass"
                if self.settings.on_failure == "pass"
                else "wait in its group"
                if self.info.type == "sink"  # the sink stage holds them (pipeline.stages.sink)
                else "go to the DLQ",
                cooldown,
            )

    def _watch_latency(self, elapsed: float) -> None:
        self._latencies.append(elapsed)
        if self.calls % LATENCY_WINDOW:
            return
        p99 = sorted(self._latencies)[int(len(self._latencies) * 0.99) - 1]
        over = p99 > self.budget_s
        if over and not self._over_budget:
            log.warning(
                "Plugin '%s': p99 call time %.1f ms is over its %.0f ms budget",
                self.name,
                p99 * 1000,
                self.budget_s * 1000,
            )
        self._over_budget = over

    def snapshot(self) -> dict[str, Any]:
        """What ``logloom plugins list`` shows of this plugin in this worker."""
        return {
            "name": self.name,
            "type": self.info.type,
            "runtime": self.runtime,
            "version": self.info.version,
            "state": self.state,
            "calls": self.calls,
            "entries": self.entries,
            "failures": self.failures,
            "restarts": self.restarts,
            "reloads": self.reloads,
            "last_error": self.last_error,
            "p50_ms": self.latency_ms(0.50),
            "p99_ms": self.latency_ms(0.99),
            "stats": self.stats(),
        }

    def stats(self) -> dict[str, Any]:
        """The plugin's own figures (``plugin_stats()`` of an in-process Python plugin), or {}."""
        figures = getattr(self.plugin, "stats", None)
        return figures() if callable(figures) else {}

    def latency_ms(self, quantile: float) -> float | None:
        """Call time at ``quantile`` over the last LATENCY_WINDOW calls (ms); None before any.

        Read by the report thread while the stage thread appends: ``deque.copy`` is one step
        under the GIL, where iterating the deque itself could fail mid-append."""
        window = sorted(self._latencies.copy())
        if not window:
            return None
        return round(window[min(len(window) - 1, int(len(window) * quantile))] * 1000, 3)

    def shutdown(self) -> None:
        self.plugin.shutdown()
