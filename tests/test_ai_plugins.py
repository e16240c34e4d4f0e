"""The bundled ai plugins on a realistic generated log with planted patterns."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

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


class FakeLlm(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions endpoint that streams a fixed answer as SSE."""

    requests: ClassVar[list[dict[str, Any]]] = []
    answer = ("Multiple", " auth", " failures", " from", " IP", " 192.168.0.5.")

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        FakeLlm.requests.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for token in self.answer:
            chunk = {"choices": [{"index": 0, "delta": {"content": token}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def llm_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeLlm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeLlm.requests.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_llm_summary_streams_tokens_as_partials_then_the_summary(llm_endpoint: str) -> None:
    plugin = load("ai_llm_summary", endpoint=llm_endpoint, model="tiny", batch_entries=3)
    assert plugin.entry_hook is not None
    entries = [
        Entry({"level": "WARN", "module": "AUTH", "message": f"bad password {n}"}) for n in range(3)
    ]
    assert plugin.entry_hook(entries[0]) is None and plugin.entry_hook(entries[1]) is None
    results = list(plugin.entry_hook(entries[2]))
    assert [r["delta"] for r in results[:-1]] == list(FakeLlm.answer)
    assert results[-2]["text"] == "Multiple auth failures from IP 192.168.0.5."
    assert results[-1]["summary"] == "Multiple auth failures from IP 192.168.0.5."
    assert results[-1]["entries"] == 3 and results[-1]["model"] == "tiny"
    (sent,) = FakeLlm.requests
    assert sent["model"] == "tiny" and sent["stream"] is True
    assert "WARN AUTH: bad password 2" in sent["messages"][1]["content"]


def test_the_llm_summary_without_an_endpoint_says_so_once_and_stays_idle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        plugin = load("ai_llm_summary", endpoint=None, batch_entries=1)
        assert plugin.entry_hook is not None
        assert [plugin.entry_hook(Entry({"message": "m"})) for _ in range(5)] == [None] * 5
    said = [r.message for r in caplog.records if "no endpoint" in r.message]
    assert said == ["ai_llm_summary: no endpoint configured (set endpoint in its YAML); idle"]
