"""sink_http against a real HTTP server started by the test, which checks every body it gets."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import QUICK_RETRYING_SINK, free_port, produce_requests, wait_for
from plugin_kit import ROOT

from pipeline.entry import Entry, with_stream_id
from pipeline.keys import Keys
from pipeline.plugin import Failure
from pipeline.runtimes import load_plugin

pytestmark = pytest.mark.plugins


class Collector:
    """An HTTP server on loopback that records each request (body un-gzipped) and answers from
    a script: ``answers`` holds (status, headers, body) for the next requests, then 200."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> Collector:
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if collector.server is None:  # stopped: a kept-alive connection dies unanswered
                    self.close_connection = True
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with collector.lock:
                    status, headers, answer = (
                        collector.answers.pop(0) if collector.answers else (200, {}, b"{}")
                    )
                    collector.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body,
                         "status": status, "at": time.monotonic()}
                    )  # fmt: skip
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def delivered(self) -> list[dict[str, Any]]:
        """Every NDJSON entry of every request answered 2xx."""
        with self.lock:
            bodies = [r["body"] for r in self.requests if 200 <= r["status"] < 300]
        return [orjson.loads(line) for body in bodies for line in body.splitlines() if line]


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector().start()
    yield server
    server.stop()


def entries(count: int) -> list[Entry]:
    return [
        with_stream_id(Entry(level="WARN" if i % 2 else "INFO", module=f"m{i % 3}",
                             message=f"line {i}", timestamp="2025-04-30T12:00:00Z"), f"9-{i}")
        for i in range(count)
    ]  # fmt: skip


def sink(collector: Collector, **config: Any) -> Any:
    url = config.pop("url", f"http://127.0.0.1:{collector.port}/ingest")
    return load_plugin(ROOT / "plugins/python/sink_http.py", {"url": url, **config})


def test_ndjson_gzip_with_auth_headers_and_ids(collector: Collector) -> None:
    plugin = sink(collector, gzip=True, basic_auth={"user": "ops", "password": "pw"},
                  headers={"X-Scope-OrgID": "team-a"})  # fmt: skip
    try:
        assert plugin.call_batch(entries(5)) == [0] * 5
        (request,) = collector.requests
        assert request["path"] == "/ingest"
        assert request["headers"]["Authorization"] == "Basic b3BzOnB3"
        assert request["headers"]["X-Scope-OrgID"] == "team-a"
        assert request["headers"]["Content-Type"] == "application/x-ndjson"
        lines = [orjson.loads(line) for line in request["body"].splitlines()]
        assert [line["message"] for line in lines] == [f"line {i}" for i in range(5)]
        assert [line["logloom_id"] for line in lines] == [f"9-{i}" for i in range(5)]
    finally:
        plugin.shutdown()


def test_presets_shape_loki_and_elasticsearch_bodies(collector: Collector) -> None:
    loki = sink(collector, format="loki", labels={"job": "api"})
    try:
        assert loki.call_batch(entries(4)) == [0] * 4
    finally:
        loki.shutdown()
    pushed = json.loads(collector.requests[0]["body"])
    streams = {(s["stream"]["level"], s["stream"]["module"]): s for s in pushed["streams"]}
    assert set(streams) == {("INFO", "m0"), ("WARN", "m1"), ("INFO", "m2"), ("WARN", "m0")}
    assert all(s["stream"]["job"] == "api" for s in streams.values())
    nanoseconds, line = streams[("INFO", "m0")]["values"][0]
    assert nanoseconds == "1746014400000000000" and json.loads(line)["message"] == "line 0"

    bulk_answer = {"errors": True, "items": [{"index": {"status": 201}},
                                             {"index": {"status": 400, "error": "mapping"}},
                                             {"index": {"status": 201}}]}  # fmt: skip
    collector.answers.append((200, {}, orjson.dumps(bulk_answer)))
    elastic = sink(collector, format="elasticsearch", index="logs")
    try:
        assert elastic.call_batch(entries(3)) == [0, 400, 0], "only the refused item fails"
    finally:
        elastic.shutdown()
    lines = collector.requests[1]["body"].splitlines()
    assert orjson.loads(lines[0]) == {"index": {"_index": "logs", "_id": "9-0"}}
    assert orjson.loads(lines[1])["message"] == "line 0"


def test_bulk_items_throttled_hold_the_batch_only_when_no_item_is_refused_for_good(
    collector: Collector,
) -> None:
    def bulk(*statuses: int) -> bytes:
        return orjson.dumps({"errors": True, "items": [{"index": {"status": s}} for s in statuses]})

    elastic = sink(collector, format="elasticsearch", index="logs")
    try:
        collector.answers.append((200, {}, bulk(201, 429, 503)))
        results = elastic.call_batch(entries(3))
        assert all(isinstance(r, Failure) and r.unavailable for r in results), results
        collector.answers.append((200, {}, bulk(201, 429, 400)))
        ok, throttled, refused = elastic.call_batch(entries(3))
        assert ok == 0 and refused == 400, "a 400 fails its entry alone"
        assert isinstance(throttled, Failure) and throttled.unavailable, "a 429 beside it waits"
    finally:
        elastic.shutdown()


def test_429_and_5xx_are_unavailable_and_retry_after_is_honoured(collector: Collector) -> None:
    plugin = sink(collector)
    try:
        collector.answers.append((429, {"Retry-After": "1"}, b"slow down"))
        results = plugin.call_batch(entries(2))
        assert all(isinstance(r, Failure) and r.unavailable for r in results), results
        assert "HTTP 429, retry after 1 s" in results[0].error
        assert plugin.call_batch(entries(2)) == [0, 0]
        waited = collector.requests[1]["at"] - collector.requests[0]["at"]
        assert waited >= 0.9, f"sent again after {waited:.2f} s despite Retry-After: 1"

        collector.answers.append((503, {}, b"down"))
        (failure, _) = plugin.call_batch(entries(2))
        assert isinstance(failure, Failure) and failure.unavailable
        collector.answers.append((400, {}, b'{"error": "bad field"}'))
        (refused, _) = plugin.call_batch(entries(2))
        assert isinstance(refused, Failure) and not refused.unavailable
        assert refused.error == 'ValueError: HTTP 400: {"error": "bad field"}'
    finally:
        plugin.shutdown()


@pytest.mark.slow
def test_ten_thousand_entries_through_a_server_that_goes_away(
    client: redis.Redis,
    write_config: Callable[..., Path],
    workers: Any,
    collector: Collector,
) -> None:
    config = write_config(
        plugins={
            "enabled": ["sink_http"],
            "config": {"sink_http": {"url": f"http://127.0.0.1:{collector.port}/x", "gzip": True}},
        },
        sink=QUICK_RETRYING_SINK,
    )
    keys = Keys()

    workers.start(config, "filter")
    worker = workers.start(config, "sink")
    produce_requests(client, 0, 4000)
    wait_for(lambda: len(collector.delivered()) >= 1000, 60, "the first batches")
    collector.stop()
    produce_requests(client, 4000, 6000)
    wait_for(lambda: client.xpending(keys.filtered, "sink:sink_http")["pending"] > 0, 30)
    time.sleep(1.0)  # down for a while: several retries fail meanwhile
    collector.start()  # the same port
    wait_for(lambda: len({e["seq"] for e in collector.delivered()}) >= 10_000, 120, "all")
    seqs = {entry["seq"] for entry in collector.delivered()}
    assert seqs == set(range(10_000)), "none lost (duplicates allowed: at least once)"
    assert client.xlen(keys.dlq("sink")) == 0
    assert worker.poll() is None
    assert "Sink 'sink_http': destination unavailable: ConnectionError:" in workers.output()
