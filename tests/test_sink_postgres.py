"""sink_postgres against a private PostgreSQL server started by the test: 10,000 entries through
real workers, the server stopped mid-stream and started again, every entry in the table once."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import QUICK_RETRYING_SINK, free_port, produce_requests, wait_for
from plugin_kit import LOGLOOM, ROOT

from pipeline.entry import Entry, with_json, with_stream_id
from pipeline.keys import Keys

pytestmark = [pytest.mark.slow, pytest.mark.plugins]
psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")


class PrivatePostgres:
    """initdb + pg_ctl in a temporary directory, on a free loopback port; run as the
    ``postgres`` user when the tests run as root (PostgreSQL refuses to run as root)."""

    def __init__(self, directory: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or [
            shutil.which("pg_ctl") or ""
        ]
        if not found[-1]:
            pytest.skip("no PostgreSQL server binaries (pg_ctl) on this machine")
        self.bin = Path(found[-1]).parent
        self.directory = directory
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres")
        self.run("initdb", "-D", str(directory / "data"), "-A", "trust", "-U", "postgres")

    def run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run("pg_ctl", "-D", str(self.directory / "data"), "-o", options,
                 "-l", str(self.directory / "log"), "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        """The table's rows; none before the sink has created it."""
        with psycopg.connect(self.dsn) as connection:
            try:
                return connection.execute(f"SELECT stream_id, level, entry FROM {table}").fetchall()
            except psycopg.errors.UndefinedTable:
                return []


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    # Not under tmp_path: pytest's base directory is private to root, closed to ``postgres``.
    directory = Path(tempfile.mkdtemp(prefix="logloom-pg-"))
    try:
        server = PrivatePostgres(directory)
        server.start()
        yield server
        with contextlib.suppress(subprocess.CalledProcessError):  # stopped by the test already
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def load_sink(dsn: str, table: str) -> Any:
    from pipeline.runtimes import load_plugin

    return load_plugin(ROOT / "plugins/python/sink_postgres.py", {"dsn": dsn, "table": table})


def test_a_batch_delivered_twice_is_written_once(postgres: PrivatePostgres) -> None:
    sink = load_sink(postgres.dsn, "twice")
    try:
        entries = [
            with_stream_id(Entry(level="INFO", module="M", message=f"m{i}",
                                 timestamp="2025-04-30T12:00:00Z"), f"1-{i}")
            for i in range(50)
        ]  # fmt: skip
        assert sink.call_batch(entries) == [0] * 50
        assert sink.call_batch(entries[10:]) == [0] * 40, "a redelivery is not an error"
        rows = postgres.rows("twice")
        assert sorted(row[0] for row in rows) == sorted(f"1-{i}" for i in range(50))
        assert rows[0][2]["module"] == "M", "the whole entry, as jsonb"
    finally:
        sink.shutdown()


def numbered(count: int, **fields: Any) -> list[Entry]:
    return [
        with_stream_id(Entry(level="INFO", module="M", message=f"m{i}", **fields), f"1-{i}")
        for i in range(count)
    ]


def test_a_nul_anywhere_in_an_entry_is_stored_as_a_replacement_character(
    postgres: PrivatePostgres,
) -> None:
    sink = load_sink(postgres.dsn, "nul")
    try:
        entries = numbered(20)
        raw = b'{"level":"INFO","module":"M\\u0000","message":"a\\u0000b",'
        raw += b'"ctx":{"k\\u0000":["v\\u0000"]}}'
        entries[7] = with_stream_id(with_json(orjson.loads(raw), raw), "1-7")
        assert sink.call_batch(entries) == [0] * 20, "valid JSON: stored, not refused"
        with psycopg.connect(postgres.dsn) as connection:
            row = connection.execute(
                "SELECT module, message, entry FROM nul WHERE stream_id = '1-7'"
            ).fetchone()
        assert row == ("M\ufffd", "a\ufffdb", {
            "level": "INFO", "module": "M\ufffd", "message": "a\ufffdb",
            "ctx": {"k\ufffd": ["v\ufffd"]},
        })  # fmt: skip
        assert len(postgres.rows("nul")) == 20
    finally:
        sink.shutdown()


def test_a_row_postgres_refuses_fails_alone_and_the_rest_of_its_batch_is_stored(
    postgres: PrivatePostgres,
) -> None:
    with psycopg.connect(postgres.dsn) as connection:  # a table made by hand: module up to 8
        connection.execute(
            "CREATE TABLE narrow (stream_id text PRIMARY KEY, ts timestamptz, level text,"
            " module varchar(8), message text, lang_key text, entry jsonb NOT NULL,"
            " written_at timestamptz NOT NULL DEFAULT now())"
        )
    sink = load_sink(postgres.dsn, "narrow")
    try:
        entries = numbered(10)
        for i in (3, 8):
            entries[i] = with_stream_id(Entry(level="INFO", module="M" * 9, message="x"), f"1-{i}")
        results = sink.call_batch(entries)
        assert [result == 0 for result in results] == [i not in (3, 8) for i in range(10)]
        stored = sorted(row[0] for row in postgres.rows("narrow"))
        assert stored == sorted(f"1-{i}" for i in range(10) if i not in (3, 8))
        assert sink.call_batch(numbered(10)[:3]) == [0] * 3, "the next batch takes the fast path"
    finally:
        sink.shutdown()


def test_ten_thousand_entries_survive_a_database_restart(
    postgres: PrivatePostgres,
    client: redis.Redis,
    write_config: Callable[..., Path],
    workers: Any,
    tmp_path: Path,
) -> None:
    config = write_config(
        plugins={
            "enabled": ["sink_postgres"],
            "config": {"sink_postgres": {"dsn": postgres.dsn, "table": "flow"}},
        },
        sink=QUICK_RETRYING_SINK,
    )
    keys = Keys()

    workers.start(config, "filter")
    sink = workers.start(config, "sink")
    produce_requests(client, 0, 4000)
    wait_for(lambda: len(postgres.rows("flow")) >= 1000, 60, "the first rows")
    postgres.stop()
    produce_requests(client, 4000, 6000)

    def backlog() -> int:
        command = [*LOGLOOM, "--config", str(config), "status", "--json"]
        status = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=60)
        data = json.loads(status.stdout)
        groups = [
            g for s in data["streams"] for g in s["groups"] if g["group"] == "sink:sink_postgres"
        ]
        return sum(g["pending"] + (g["lag"] or 0) for g in groups)

    wait_for(lambda: backlog() > 1000, 30, "the backlog to show in status")
    postgres.start()
    rows = wait_for(lambda: (r := postgres.rows("flow")) and len(r) >= 10_000 and r, 120)
    seqs = sorted(row[2]["seq"] for row in rows)
    assert seqs == list(range(10_000)), "every entry once: none lost, none doubled"
    assert client.xlen(keys.dlq("sink")) == 0, "an outage is not the entries' fault"
    assert sink.poll() is None
    log = workers.output()
    assert "Sink 'sink_postgres': destination unavailable: ConnectionError: PostgreSQL:" in log
    assert "Sink 'sink_postgres': destination back after" in log
