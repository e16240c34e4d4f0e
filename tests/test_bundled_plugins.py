"""The bundled plugins, loaded through the same loader the workers use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from pipeline.config import parse_config
from pipeline.discovery import load_plugins
from pipeline.entry import Entry, decode
from pipeline.plugin import Plugin

pytestmark = pytest.mark.plugins


def load(name: str, **settings: Any) -> Plugin:
    (plugin,) = load_plugins(
        parse_config({"plugins": {"enabled": [name], "config": {name: settings}}})
    )
    return plugin


def entries(count: int, size: int = 10) -> list[Entry]:
    return [
        decode(
            b"1-0",
            {b"level": b"ERROR", b"module": b"AUTH", b"message": f"{n}:".encode() + b"x" * size},
            65536,
        )[0]
        for n in range(count)
    ]


@pytest.mark.parametrize(
    ("min_level", "kept"), [("DEBUG", 5), ("INFO", 4), ("warn", 3), ("ERROR", 2), ("FATAL", 1)]
)
def test_severity_filter_keeps_levels_at_or_above_min_level(min_level: str, kept: int) -> None:
    plugin = load("log_filter_severity", min_level=min_level)
    batch = [
        decode(b"1-0", {b"level": level.encode(), b"message": b"m"}, 65536)[0]
        for level in ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")
    ]
    assert sum(plugin.call_batch(batch)) == kept


def test_severity_filter_refuses_an_unknown_min_level() -> None:
    failures: list[str] = []
    config = parse_config(
        {
            "plugins": {
                "enabled": ["log_filter_severity"],
                "config": {"log_filter_severity": {"min_level": "LOUD"}},
            }
        }
    )
    assert load_plugins(config, failures=failures) == []
    assert "min_level 'LOUD' is not one of" in failures[0]


def test_jsonl_sink_rotates_by_size_and_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    plugin = load("sink_jsonl", path=str(path), max_bytes=2000, backups=2)
    written = []
    for batch_number in range(8):
        batch = entries(5, size=60)
        written += [orjson.dumps(e) for e in batch]
        assert plugin.call_batch(batch) == [0] * 5, batch_number
    plugin.shutdown()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["out.jsonl", "out.jsonl.1", "out.jsonl.2"]
    assert all(f.stat().st_size <= 2000 for f in files)
    kept = (
        path.with_suffix(".jsonl.2").read_bytes()
        + path.with_suffix(".jsonl.1").read_bytes()
        + path.read_bytes()
    ).splitlines()
    assert kept == written[-len(kept) :], "newest lines in order, oldest rotated away"


def test_jsonl_sink_writes_each_entry_as_carried_and_always_one_line(tmp_path: Path) -> None:
    """The bytes the pipeline carried (a large integer stays exact, key order kept); JSON a
    producer pretty-printed over several lines is re-encoded onto one; plain dicts too."""
    path = tmp_path / "out.jsonl"
    plugin = load("sink_jsonl", path=str(path))
    carried = b'{"message":"m","n":123456789012345678901234567890,"level":"INFO"}'
    pretty = b'{\n  "message": "pretty",\r\n  "level": "WARN"\n}'
    batch: list[Any] = [
        decode(b"1-0", {b"entry": carried}, 65536)[0],
        decode(b"1-0", {b"entry": pretty}, 65536)[0],
        {"message": "plain", "level": "INFO"},
    ]
    assert plugin.call_batch(batch) == [0, 0, 0]
    plugin.shutdown()
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == carried[:-1] + b',"module":"","timestamp":"1970-01-01T00:00:00.001Z"}'
    assert orjson.loads(lines[1]) == batch[1] and b"\r" not in lines[1]
    assert orjson.loads(lines[2]) == batch[2]
    assert lines[3:] == [b""], "three lines, each ended by a newline"


def test_jsonl_sink_failure_is_reported_for_the_whole_batch(tmp_path: Path) -> None:
    plugin = load("sink_jsonl", path=str(tmp_path / "out.jsonl"))
    plugin.plugin.module.state["file"].close()  # type: ignore[attr-defined]
    results = plugin.call_batch(entries(3))
    assert len(results) == 3 and all("closed file" in r.error for r in results)


def test_console_sink_prints_readable_lines(capsys: pytest.CaptureFixture[str]) -> None:
    plugin = load("sink_console")
    entry = decode(
        b"1714478400123-0",
        {b"level": b"ERROR", b"module": b"AUTH", b"message": b"bad password"},
        65536,
    )[0]
    assert plugin.call_batch([entry]) == [0]
    assert capsys.readouterr().out == "2024-04-30T12:00:00.123Z ERROR [AUTH] bad password\n"


def test_redis_stream_sink_forwards_in_one_round_trip(redis_url: str) -> None:
    plugin = load("sink_redis_stream", url=redis_url, stream="downstream")
    batch = entries(250)
    assert plugin.call_batch(batch) == [0] * 250
    plugin.shutdown()
    with redis.Redis.from_url(redis_url) as client:
        forwarded = client.xrange("downstream")
    assert [orjson.loads(f[b"entry"]) for _, f in forwarded] == batch
