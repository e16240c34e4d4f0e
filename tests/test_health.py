"""The health guard around every plugin: circuit breaker, on_failure, latency budget, reloads."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest

from pipeline.config import CircuitConfig, PluginSettings
from pipeline.entry import Entry
from pipeline.errors import PluginLoadError
from pipeline.health import LATENCY_WINDOW, GuardedPlugin
from pipeline.plugin import Failure, PluginInfo

pytestmark = pytest.mark.plugins


class Scripted:
    """A plugin whose answers the test sets; counts the calls that reached it."""

    runtime = "python"
    origin = "test"

    def __init__(self, kind: str = "filter", answer: Any = True, name: str = "scripted") -> None:
        self.info = PluginInfo(name=name, version="1.0.0", type=kind)
        self.answer = answer
        self.calls = 0
        self.delay_s = 0.0
        self.stopped = False

    @property
    def name(self) -> str:
        return self.info.name

    def call_batch(self, entries: Sequence[Entry]) -> list[Any]:
        self.calls += 1
        time.sleep(self.delay_s)
        return [self.answer] * len(entries)

    def shutdown(self) -> None:
        self.stopped = True


BATCH = [Entry({"level": "INFO", "message": "m"})] * 3


def guarded(plugin: Scripted, **settings: Any) -> GuardedPlugin:
    circuit = CircuitConfig(failures=3, cooldown_s=0.3)
    return GuardedPlugin(plugin, PluginSettings(circuit=circuit, **settings), budget_ms=500)


def test_the_circuit_opens_after_failed_calls_in_a_row_and_probes_after_the_cooldown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin = Scripted(answer=Failure("ValueError: broken"))
    guard = guarded(plugin)
    with caplog.at_level(logging.WARNING, "logloom.plugins"):
        for _ in range(3):
            assert guard.call_batch(BATCH) == [Failure("ValueError: broken")] * 3
    assert guard.state == "open" and plugin.calls == 3
    assert guard.call_batch(BATCH) == [Failure("circuit open")] * 3
    assert plugin.calls == 3, "not called while open"
    opened = [r.message for r in caplog.records if "circuit open" in r.message]
    assert opened == [
        "Plugin 'scripted': circuit open after 3 failed calls in a row "
        "(last: ValueError: broken); its entries go to the DLQ for 0 s"
    ]
    time.sleep(0.35)
    assert guard.state == "half-open"
    guard.call_batch(BATCH)
    assert plugin.calls == 4 and guard.state == "open", "a failed probe opens it again"
    time.sleep(0.35)
    plugin.answer = True
    assert guard.call_batch(BATCH) == [True] * 3
    assert guard.state == "ok" and guard.failures == 12


def test_a_call_failing_only_some_entries_keeps_the_circuit_closed() -> None:
    plugin = Scripted()
    guard = guarded(plugin)
    answers = iter([[True, Failure("x"), True]] * 10)
    plugin.call_batch = lambda entries: next(answers)  # type: ignore[method-assign]
    for _ in range(10):
        guard.call_batch(BATCH)
    assert guard.state == "ok" and guard.failures == 10


@pytest.mark.parametrize(("kind", "passing"), [("filter", True), ("sink", 0)])
def test_on_failure_pass_lets_entries_through(kind: str, passing: object) -> None:
    plugin = Scripted(kind=kind, answer=Failure("down"))
    guard = guarded(plugin, on_failure="pass")
    for _ in range(5):
        assert guard.call_batch(BATCH) == [passing] * 3
    assert guard.state == "open" and guard.failures == 9


def test_a_wrong_number_of_answers_fails_the_whole_call() -> None:
    plugin = Scripted()
    plugin.call_batch = lambda entries: [True]  # type: ignore[method-assign]
    (first, *_) = guarded(plugin).call_batch(BATCH)
    assert first == Failure("answered 1 results for 3 entries")


def test_a_p99_over_budget_costs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    plugin = Scripted()
    guard = guarded(plugin, p99_budget_ms=1)
    plugin.delay_s = 0.002
    with caplog.at_level(logging.WARNING, "logloom.plugins"):
        for _ in range(2 * LATENCY_WINDOW):
            guard.call_batch(BATCH[:1])
    warned = [r.message for r in caplog.records if "budget" in r.message]
    assert len(warned) == 1 and warned[0].startswith("Plugin 'scripted': p99 call time")
    assert warned[0].endswith("is over its 1 ms budget")


def test_a_reload_swaps_the_plugin_between_calls_or_keeps_the_old_one() -> None:
    old, new = Scripted(answer=False), Scripted(answer=True)
    guard = guarded(old)
    guard.request_reload(lambda: new)
    assert guard.call_batch(BATCH) == [True] * 3
    assert old.stopped and guard.reloads == 1

    def broken() -> Scripted:
        raise PluginLoadError("import failed: SyntaxError")

    guard.request_reload(broken)
    assert guard.call_batch(BATCH) == [True] * 3 and not new.stopped and guard.reloads == 1


def test_a_sinks_retries_and_its_error_codes_count_as_they_should() -> None:
    """A sink retrying one entry it cannot take does not open the breaker; an int other than 0
    from a sink is a failure like an exception."""
    plugin = Scripted(kind="sink", answer=-1)
    guard = guarded(plugin)
    guard.call_batch(BATCH)
    for _ in range(10):
        guard.call_batch(BATCH, retry=True)
    assert guard.state == "ok" and guard.failures == 33
    for _ in range(2):
        guard.call_batch(BATCH)
    assert guard.state == "open", "three first attempts in a row failed outright"


def test_a_c_library_whose_reload_fails_is_not_called_after_its_shutdown() -> None:
    old = Scripted(answer=True)
    old.runtime = "c"  # type: ignore[misc]
    guard = guarded(old)

    def broken() -> Scripted:
        raise PluginLoadError("plugin_init() returned -1, expected 0")

    guard.request_reload(broken)
    calls = old.calls
    (result,) = guard.call_batch(BATCH[:1])
    assert old.stopped and old.calls == calls
    assert result == Failure("not loaded: plugin_init() returned -1, expected 0")
    guard.request_reload(lambda: Scripted(answer=True))
    assert guard.call_batch(BATCH[:1]) == [True]
