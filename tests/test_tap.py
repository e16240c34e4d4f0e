"""``logloom tap`` against real workers: decisions as they happen, acks undisturbed, nothing
recorded when no tap is attached, and a shadow test of a candidate plugin on tapped traffic."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import wait_for
from plugin_kit import LOGLOOM
from test_plugins_e2e import delivered

from pipeline.keys import FILTER_GROUP, Keys

pytestmark = pytest.mark.slow

KEYWORD = """
PLUGIN_INFO = {"name": "keyword", "version": "1.0.0", "type": "filter"}
def plugin_init(config): return 0
def plugin_shutdown(): pass
def plugin_process(entry):
    return "secret" not in entry["message"]
"""
CANDIDATE = KEYWORD.replace('"1.0.0"', '"1.1.0"').replace(
    'return "secret" not in entry["message"]',
    'return "secret" not in entry["message"] and "password" not in entry["message"]',
)
MESSAGES = ["user login ok", "a secret leaked", "password reset for bob", "cache warm"]


def produce_until(client: redis.Redis, keys: Keys, done: threading.Event) -> list[int]:
    """Entries every 50 ms until ``done``: a tap attached meanwhile sees them flow."""
    sent: list[int] = []
    seq = 0
    while not done.wait(0.05):
        pipe = client.pipeline(transaction=False)
        for _ in range(8):
            level = "DEBUG" if seq % 8 == 7 else "INFO"
            entry = {"level": level, "module": "web", "message": MESSAGES[seq % 4], "seq": seq}
            pipe.xadd(keys.ingest, {"entry": orjson.dumps(entry)})
            sent.append(seq)
            seq += 1
        pipe.execute()
    return sent


def tap(config: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOGLOOM, "--config", str(config), "tap", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=60)  # fmt: skip


def test_tap_shows_each_plugins_decision_without_disturbing_acks(
    client: redis.Redis,
    write_config: Callable[..., Path],
    write_plugin: Callable[[str, str], Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    write_plugin("keyword", KEYWORD)
    out = tmp_path / "out.jsonl"
    config = write_config(
        plugins={
            "enabled": ["log_filter_severity", "keyword", "sink_jsonl"],
            "config": {"sink_jsonl": {"path": str(out)}},
        }
    )
    keys = Keys()
    workers.start(config, "filter")
    workers.start(config, "sink")
    wait_for(lambda: "Filter worker" in workers.output(), 30, "the filter worker")
    done = threading.Event()
    sent: list[int] = []
    producer = threading.Thread(target=lambda: sent.extend(produce_until(client, keys, done)))
    producer.start()
    try:
        wait_for(lambda: len(delivered(out)) > 20, 30, "traffic")
        assert client.xlen(keys.tap) == 0, "no tap attached: nothing recorded"
        tapped = tap(config, tmp_path, "--count", "40", "--json")
        sink_tapped = tap(config, tmp_path, "--stage", "sink:sink_jsonl", "--count", "5")
    finally:
        done.set()
        producer.join()
    assert tapped.returncode == 0, tapped.stderr
    items = [json.loads(line) for line in tapped.stdout.splitlines()]
    assert len(items) >= 40
    for item in items:
        names = [decision[0] for decision in item["decisions"]]
        message, level = item["entry"]["message"], item["entry"]["level"]
        if level == "DEBUG":
            assert item["decisions"][0][:2] == ["log_filter_severity", "drop"]
            assert names == ["log_filter_severity"], "a dropped entry goes no further"
            assert item["outcome"] == "dropped"
        else:
            assert names == ["log_filter_severity", "keyword"]
            expected = "drop" if "secret" in message else "keep"
            assert item["decisions"][1][1] == expected, item
            assert item["outcome"] == ("dropped" if expected == "drop" else "forwarded")
        assert all(decision[2] >= 0 for decision in item["decisions"]), "a time per decision"
    assert " → delivered" in sink_tapped.stdout and "sink_jsonl=delivered(" in sink_tapped.stdout

    # Acks undisturbed: every entry decided, forwarded ones delivered once, nothing pending.
    forwarded = {s for s in sent if s % 8 != 7 and "secret" not in MESSAGES[s % 4]}
    wait_for(lambda: set(delivered(out)) == forwarded, 30, "every forwarded entry")
    wait_for(lambda: client.xpending(keys.ingest, FILTER_GROUP)["pending"] == 0, 10)

    # Shadow test on the recorded history: the candidate also drops "password" entries.
    shadow = tap(config, tmp_path, "--from", "0", "--candidate",
                 str(tmp_path / "candidate.py"), "--plugin", "keyword")  # fmt: skip
    assert shadow.returncode == 2 and "candidate" in shadow.stderr, "no such file: one line"
    (tmp_path / "candidate.py").write_text(CANDIDATE)
    shadow = tap(config, tmp_path, "--from", "0", "--candidate", str(tmp_path / "candidate.py"))
    assert shadow.returncode == 0, shadow.stderr
    differs = [line for line in shadow.stdout.splitlines() if line.startswith("differs")]
    assert differs and all("production=keep candidate=drop" in line for line in differs)
    summary = shadow.stdout.splitlines()[-1]
    assert summary.startswith("candidate keyword 1.1.0: ") and f"{len(differs)} decided" in summary
    password_items = [i for i in items if i["entry"]["message"].startswith("password")]
    assert len(differs) >= len(password_items) > 0
