"""The bundled ai plugins on a realistic generated log with planted patterns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.entry import Entry
from pipeline.runtimes.python import PythonPlugin, load_python_plugin
from workers.demo import realistic_entries

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.plugins


def load(name: str, **config: Any) -> PythonPlugin:
    plugin = load_python_plugin(ROOT / "plugins" / "python" / f"{name}.py", config)
    assert plugin is not None and plugin.entry_hook is not None
    return plugin


def run(plugin: PythonPlugin, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert plugin.entry_hook is not None
    return [r for r in (plugin.entry_hook(Entry(e)) for e in entries) if r]


def planted_log() -> list[dict[str, Any]]:
    """A steady realistic log, then auth failures from one IP and a new error template."""
    entries = list(realistic_entries(3000, seed=11))
    for n in range(300):
        entries.insert(1000 + 5 * n, {
            "level": "ERROR", "module": "AUTH",
            "message": f"bad password for {['root', 'admin'][n % 2]} from 192.168.0.5",
        })  # fmt: skip
    disk = "disk /dev/sdb1 failed: I/O error at sector 88123"
    entries.insert(2600, {"level": "FATAL", "module": "DISK", "message": disk})
    return entries


def test_the_template_summary_finds_the_planted_patterns() -> None:
    plugin = load("ai_log_templates", summary_every=3301, warmup=200)
    results = run(plugin, planted_log())
    alerts = [r for r in results if r["kind"] == "new_template"]
    assert [a["template"] for a in alerts] == ["disk /dev/sdb1 failed: I/O error at sector <NUM>"]
    assert alerts[0]["level"] == "FATAL" and alerts[0]["module"] == "DISK"
    (summary,) = [r for r in results if r["kind"] == "template_summary"]
    assert summary["entries"] == 3301
    top_error = summary["top_error_templates"][0]
    assert top_error["template"] == "bad password for <*> from <IP>"
    assert top_error["values"]["IP"][0] == ["192.168.0.5", 300]
    assert {value for value, _ in top_error["values"]["*"]} >= {"root", "admin"}
    assert sum(summary["levels"].values()) == 3301


def test_a_steady_stream_raises_no_new_template_alerts() -> None:
    plugin = load("ai_log_templates", summary_every=1000, warmup=200)
    results = run(plugin, list(realistic_entries(5000, seed=3)))
    assert [r for r in results if r["kind"] == "new_template"] == []
    summaries = [r for r in results if r["kind"] == "template_summary"]
    assert len(summaries) == 5 and summaries[-1]["new_templates"] == []


def anomaly_log(steady: int) -> list[dict[str, Any]]:
    entries = list(realistic_entries(steady, seed=21))
    for n in range(15):  # auth failures from one IP, among normal traffic
        entries.insert(2000 + 7 * n, {
            "level": "WARN", "module": "AUTH",
            "message": f"bad password for {['root', 'admin', 'guest'][n % 3]} from 192.168.0.5",
        })  # fmt: skip
    crash = {"level": "ERROR", "module": "KERNEL", "message": "segfault at 0x7f3a in worker 4"}
    entries.insert(2500, crash)
    pool = {"level": "ERROR", "module": "DB", "message": "connection pool exhausted (50 waiting)"}
    burst = [pool] * 150
    return entries[:3000] + burst + entries[3000:]


def test_the_anomaly_detector_finds_the_planted_anomalies_with_evidence() -> None:
    plugin = load("ai_anomaly", window=200, warmup=1000, failures_threshold=10)
    alerts = []
    for result in run(plugin, anomaly_log(4000)):
        alerts += result.get("alerts", [result])
    kinds = {alert["type"] for alert in alerts}
    assert kinds == {"repeated_failures", "new_error_template", "error_burst"}, alerts
    (failures,) = [a for a in alerts if a["type"] == "repeated_failures"]
    assert failures["summary"] == "Multiple auth failures from IP 192.168.0.5"
    assert failures["evidence"]["count"] == 10 and len(failures["evidence"]["examples"]) == 3
    (new,) = [a for a in alerts if a["type"] == "new_error_template"]
    assert new["evidence"]["template"] == "segfault at <HEX> in worker <N>"
    bursts = [a for a in alerts if a["type"] == "error_burst"]
    assert bursts and bursts[0]["evidence"]["share"] > 0.5 > bursts[0]["evidence"]["baseline"]


def test_the_anomaly_detector_is_quiet_on_a_steady_stream() -> None:
    plugin = load("ai_anomaly", window=200, warmup=1000, failures_threshold=10)
    assert run(plugin, list(realistic_entries(8000, seed=4))) == []
