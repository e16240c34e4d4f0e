"""The private Redis, the stream loader and one function per measured figure.

Every figure function gets a Redis emptied with FLUSHALL, loads its input stream (pipelined
XADDs of 1000, field ``entry`` = JSON bytes) before starting the clock, processes it to the
end, stops the clock, then checks the output and raises :class:`BenchmarkError` if it is wrong.
It returns the seconds the processing took.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import orjson
import redis

from pipeline.config import Config, parse_config
from pipeline.discovery import load_plugins
from pipeline.health import GuardedPlugin
from pipeline.stages.direct import DirectStage
from pipeline.stages.filter import FilterStage
from pipeline.stages.runner import StageLoop
from pipeline.stages.sink import SinkStage
from pipeline.streams import connect, ensure_group

LOAD_BATCH = 1000
READ_COUNT = 500
CHECK_EVERY = 20  # steps between "done yet?" checks, until the last expected batch is near
TIMEOUT_S = 600.0
RAW_SOURCE = "bench:source"
RAW_OUTPUT = "bench:output"
RAW_GROUP = "bench"
RAW_CONSUMER = "bench-1"


class BenchmarkError(Exception):
    """A figure produced a wrong result (or never finished); the benchmark must fail."""


@dataclass(frozen=True)
class Workload:
    """The entries, generated once: as producers send them, and as the filter stage forwards them.

    Sinks read forwarded entries (normalised: timestamp, level and module filled in), so both
    sink figures are loaded with ``forwarded``.
    """

    payloads: list[bytes]
    forwarded: list[bytes]
    kept: int  # entries the severity filter keeps (level is not DEBUG)

    @property
    def count(self) -> int:
        return len(self.payloads)


@dataclass(frozen=True)
class Bench:
    """What every figure needs: a client, the server's URL and address, a scratch directory."""

    client: redis.Redis
    url: str
    host: str
    port: int
    workdir: Path


# --- the private redis-server -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """A throw-away redis-server on a free loopback port, without persistence."""
    port = free_port()
    command = [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(workdir / "redis.log"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        probe = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                error = process.stderr.read().decode() if process.stderr else ""
                raise BenchmarkError(f"redis-server exited with {process.returncode}: {error}")
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise BenchmarkError("redis-server did not answer within 10 s") from None
                time.sleep(0.05)
        probe.close()
        yield "127.0.0.1", port
    finally:
        stop_process(process)
        if process.stderr is not None:
            process.stderr.close()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if that is not enough within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- helpers ------------------------------------------------------------------------------


def load_stream(client: redis.Redis, stream: str, payloads: Sequence[bytes]) -> bytes:
    """XADD every payload as field ``entry``, 1000 per pipeline; the last ID added."""
    last = b""
    for start in range(0, len(payloads), LOAD_BATCH):
        pipe = client.pipeline(transaction=False)
        for payload in payloads[start : start + LOAD_BATCH]:
            pipe.xadd(stream, {b"entry": payload})
        last = pipe.execute()[-1]
    return last


def group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any]:
    for info in client.xinfo_groups(stream):
        name = info["name"]
        if (name.decode() if isinstance(name, bytes) else name) == group:
            return dict(info)
    raise BenchmarkError(f"no group {group!r} on {stream}")


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    problem: Callable[[], str | None] = lambda: None,
    poll_s: float = 0.01,
) -> None:
    """Poll ``condition`` until it holds; BenchmarkError after ``timeout`` or as soon as
    ``problem()`` names one (a process died), checked every 50 polls."""
    deadline = time.monotonic() + timeout
    polls = 0
    while not condition():
        polls += 1
        if polls % 50 == 0:
            if found := problem():
                raise BenchmarkError(found)
            if time.monotonic() > deadline:
                raise BenchmarkError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll_s)


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def read_all(client: redis.Redis, stream: str, group: str, last_id: bytes) -> bool:
    """Has ``group`` read up to ``last_id`` (acknowledged, in hand or buffered)?"""
    return as_bytes(group_info(client, stream, group)["last-delivered-id"]) == last_id


def time_stage(loop: StageLoop, stream: str, last_id: bytes, entries: int) -> float:
    """Seconds to create the groups, step until the stage's group has read ``stream`` up to
    ``last_id``, and finish (the batch in hand handled, a sink flushed, the last writes sent).
    Nothing may be left unacknowledged after that."""
    client, group = loop.client, loop.stage.group
    started = time.perf_counter()
    loop.ensure_groups()
    run_steps(loop, lambda: read_all(client, stream, group, last_id), entries, loop.batch_size)
    loop.finish()
    elapsed = time.perf_counter() - started
    pending = int(group_info(client, stream, group)["pending"])
    if pending:
        raise BenchmarkError(f"{loop.stage.name}: {pending} entries left unacknowledged")
    return elapsed


def run_steps(loop: StageLoop, done: Callable[[], bool], entries: int, batch: int) -> int:
    """``loop.step()`` until ``done()``; checked every CHECK_EVERY steps, then every step
    once the last batch may have been read (so no empty, blocking steps are timed)."""
    expected = math.ceil(entries / batch)
    deadline = time.monotonic() + TIMEOUT_S
    steps = 0
    while True:
        loop.step()
        steps += 1
        if steps >= expected or steps % CHECK_EVERY == 0:
            if done():
                return steps
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{loop.stage.name}: not done after {TIMEOUT_S:.0f} s")


def check_filtered(client: redis.Redis, stream: str, workload: Workload, figure: str) -> None:
    length = int(client.xlen(stream))
    if length != workload.kept:
        raise BenchmarkError(
            f"{figure}: {stream} holds {length} entries, expected {workload.kept} "
            f"(the non-DEBUG entries of {workload.count})"
        )


def check_lines(path: Path, expected: int, figure: str) -> None:
    with path.open("rb") as handle:
        lines = sum(1 for _ in handle)
    if lines != expected:
        raise BenchmarkError(f"{figure}: {path} has {lines} lines, expected {expected}")


# --- (a) raw redis-py filter loop ---------------------------------------------------------


def raw_filter_loop(bench: Bench, workload: Workload) -> float:
    client = redis.Redis(host=bench.host, port=bench.port)
    load_stream(client, RAW_SOURCE, workload.payloads)
    started = time.perf_counter()
    ensure_group(client, RAW_SOURCE, RAW_GROUP)
    while True:
        reply = client.xreadgroup(RAW_GROUP, RAW_CONSUMER, {RAW_SOURCE: ">"}, count=READ_COUNT)
        if not reply:
            break
        messages = reply[0][1]
        pipe = client.pipeline(transaction=False)  # the plain pipeline the issue describes
        for _message_id, fields in messages:
            payload = fields[b"entry"]
            if orjson.loads(payload)["level"] != "DEBUG":
                pipe.xadd(RAW_OUTPUT, {b"entry": payload})
        pipe.xack(RAW_SOURCE, RAW_GROUP, *(message_id for message_id, _ in messages))
        pipe.execute()
    elapsed = time.perf_counter() - started
    check_filtered(client, RAW_OUTPUT, workload, "raw redis-py loop")
    client.close()
    return elapsed


# --- (b) the logloom filter worker --------------------------------------------------------


def filter_config() -> Config:
    return parse_config(
        {"plugins": {"enabled": ["log_filter_severity"]}, "stages": {"block_ms": 10}}
    )


def filter_worker(bench: Bench, workload: Workload) -> float:
    config = filter_config()
    client = connect(bench.url)
    filters = load_enabled(config, ["filter"])
    last_id = load_stream(client, config.keys.ingest, workload.payloads)
    stage = FilterStage(config, filters)
    elapsed = time_stage(
        StageLoop(client, stage, config.stages, config.stages.batch_size),
        config.keys.ingest,
        last_id,
        workload.count,
    )
    for plugin in filters:
        plugin.shutdown()
    check_filtered(client, config.keys.filtered, workload, "logloom filter worker")
    dead = int(client.xlen(config.keys.dlq("ingest"))) + int(client.xlen(config.keys.dlq("filter")))
    if dead:
        raise BenchmarkError(f"logloom filter worker: {dead} entries dead-lettered")
    client.close()
    return elapsed


# --- (d) bare hiredis filter loop ---------------------------------------------------------


def pack(*args: bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class RespConnection:
    """A socket, a hiredis.Reader, and nothing else: send packed commands, read N replies."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int) -> list[Any]:
        replies: list[Any] = []
        while len(replies) < count:
            reply = self.reader.gets()
            if reply is False:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise BenchmarkError("bare hiredis loop: Redis closed the connection")
                self.reader.feed(chunk)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise BenchmarkError(f"bare hiredis loop: Redis answered {reply}")
            replies.append(reply)
        return replies

    def close(self) -> None:
        self.sock.close()


def hiredis_filter_loop(bench: Bench, workload: Workload) -> float:
    client = redis.Redis(host=bench.host, port=bench.port)
    load_stream(client, RAW_SOURCE, workload.payloads)
    source, output, group = RAW_SOURCE.encode(), RAW_OUTPUT.encode(), RAW_GROUP.encode()
    read = pack(
        b"XREADGROUP", b"GROUP", group, RAW_CONSUMER.encode(), b"COUNT", b"%d" % READ_COUNT,
        b"STREAMS", source, b">",
    )  # fmt: skip
    conn = RespConnection(bench.host, bench.port)
    started = time.perf_counter()
    conn.send(pack(b"XGROUP", b"CREATE", source, group, b"0", b"MKSTREAM"))
    conn.replies(1)
    while True:
        conn.send(read)
        (reply,) = conn.replies(1)
        if not reply:
            break
        messages = reply[0][1]
        commands = []
        ids = []
        for message_id, fields in messages:
            ids.append(message_id)
            payload = fields[1]
            if fields[0] != b"entry" or len(fields) != 2:
                raise BenchmarkError(f"bare hiredis loop: unexpected fields {fields[::2]}")
            if orjson.loads(payload)["level"] != "DEBUG":
                commands.append(pack(b"XADD", output, b"*", b"entry", payload))
        commands.append(pack(b"XACK", source, group, *ids))
        conn.send(b"".join(commands))
        acked = conn.replies(len(commands))[-1]
        if acked != len(ids):
            raise BenchmarkError(f"bare hiredis loop: XACK answered {acked!r:.200}")
    elapsed = time.perf_counter() - started
    conn.close()
    check_filtered(client, RAW_OUTPUT, workload, "bare hiredis loop")
    client.close()
    return elapsed


# --- sinks: raw redis-py sink loop and the logloom sink stage -----------------------------


def raw_sink_loop(bench: Bench, workload: Workload) -> float:
    client = redis.Redis(host=bench.host, port=bench.port)
    load_stream(client, RAW_SOURCE, workload.forwarded)
    path = bench.workdir / "raw-sink.jsonl"
    path.unlink(missing_ok=True)
    with path.open("ab") as out:
        started = time.perf_counter()
        ensure_group(client, RAW_SOURCE, RAW_GROUP)
        while True:
            reply = client.xreadgroup(RAW_GROUP, RAW_CONSUMER, {RAW_SOURCE: ">"}, count=READ_COUNT)
            if not reply:
                break
            messages = reply[0][1]
            out.write(
                b"".join(
                    orjson.dumps(orjson.loads(fields[b"entry"]), option=orjson.OPT_APPEND_NEWLINE)
                    for _message_id, fields in messages
                )
            )
            out.flush()
            client.xack(RAW_SOURCE, RAW_GROUP, *(message_id for message_id, _ in messages))
        elapsed = time.perf_counter() - started
    check_lines(path, workload.count, "raw redis-py sink loop")
    client.close()
    return elapsed


NO_ROTATION = 1 << 50
"""``sink_jsonl``'s ``max_bytes`` for every figure: the output is checked as one file, and a
million entries pass its default 100 MiB."""


def jsonl_stage_config(path: Path, *filters: str) -> Config:
    """The sink figures' config: ``filters``, then ``sink_jsonl`` writing ``path``, batches of
    500 flushed at least every 50 ms."""
    return parse_config(
        {
            "plugins": {
                "enabled": [*filters, "sink_jsonl"],
                "config": {"sink_jsonl": {"path": str(path), "max_bytes": NO_ROTATION}},
            },
            "sink": {"batch_size": 500, "flush_interval_ms": 50},
            "stages": {"block_ms": 10},
        }
    )


def load_enabled(config: Config, types: list[str]) -> list[GuardedPlugin]:
    """The enabled plugins of ``types``, loaded; BenchmarkError unless they all are."""
    plugins = load_plugins(config, types=types)
    if [plugin.name for plugin in plugins] != config.plugins.enabled:
        raise BenchmarkError(f"{', '.join(config.plugins.enabled)} did not load")
    return plugins


def sink_stage(bench: Bench, workload: Workload) -> float:
    path = bench.workdir / "out.jsonl"
    path.unlink(missing_ok=True)
    config = jsonl_stage_config(path)
    client = connect(bench.url)
    (plugin,) = load_enabled(config, ["sink"])
    last_id = load_stream(client, config.keys.filtered, workload.forwarded)
    stage = SinkStage(config, plugin, threading.Event())
    elapsed = time_stage(
        StageLoop(client, stage, config.stages, config.sink.batch_size),
        config.keys.filtered,
        last_id,
        workload.count,
    )
    plugin.shutdown()
    check_lines(path, workload.count, "logloom sink stage (sink_jsonl)")
    client.close()
    return elapsed


def direct_stage(bench: Bench, workload: Workload) -> float:
    """The real DirectStage (log_filter_severity, then sink_jsonl) on the ingest stream, as
    ``logloom worker --stage direct`` runs it; the file must hold the non-DEBUG entries."""
    path = bench.workdir / "direct.jsonl"
    path.unlink(missing_ok=True)
    config = jsonl_stage_config(path, "log_filter_severity")
    client = connect(bench.url)
    severity, plugin = load_enabled(config, ["filter", "sink"])
    last_id = load_stream(client, config.keys.ingest, workload.payloads)
    stage = DirectStage(config, [severity], [], plugin, threading.Event())
    elapsed = time_stage(
        StageLoop(client, stage, config.stages, config.sink.batch_size),
        config.keys.ingest,
        last_id,
        workload.count,
    )
    severity.shutdown()
    plugin.shutdown()
    check_lines(path, workload.kept, "logloom direct stage (filter, sink)")
    client.close()
    return elapsed


def run_and_report(
    args: Any, run: Callable[[Any], dict[str, Any]], report: Callable[[dict[str, Any]], None]
) -> int:
    """A benchmark command's end: run it, print its figures, write ``--json``; the exit code
    (1 when a figure failed its own checks)."""
    try:
        results = run(args)
    except BenchmarkError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0
