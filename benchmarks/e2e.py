"""End to end against rsyslog: produce → filter → JSON-lines file, the same entries both ways.

Logloom: real worker processes (``logloom worker --stage filter`` ×N and ``--stage sink`` with
the bundled ``log_filter_severity`` and ``sink_jsonl``) against the benchmark's Redis, started
and ready (each blocked in its first read) before the clock; the clock runs from the first XADD
until the sink's file holds every non-DEBUG entry. This process produces every entry as fast as
it can, in pipelines of 1000: with Logloom's ``Producer`` (redis-py), or with XADDs packed by hand
on a bare socket (the "bare producer" figure, which takes the client library out of the way).

rsyslog: Debian's ``rsyslogd`` as a private instance (``-n -f CONF -i PIDFILE``, its own work
directory, no ``imuxsock``, no system log socket) with ``imfile`` reading the same entries as JSON
lines from a file written before the clock, ``mmjsonparse`` (``cookie=""``), DEBUG dropped, and
``omfile`` writing the parsed entries as JSON lines (``%$!%``); the clock runs from starting
``rsyslogd`` until its file holds every non-DEBUG entry. Installed with ``apt-get`` when missing
(as root); if it cannot be, the figures are skipped and the benchmark says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.figures import (
    NO_ROTATION,
    Bench,
    BenchmarkError,
    RespConnection,
    Workload,
    pack,
    stop_process,
)
from benchmarks.live import Workers, start_workers, stop_workers
from pipeline.config import Config
from pipeline.producer import Producer

FILTER_WORKERS = 1  # the "e2e" figure: one filter and one sink worker for 2 cores
SINK = "sink_jsonl"
BATCH = 1000  # XADDs per round trip, as Logloom's producer (ingest.producer_batch)
SINK_FLUSH_INTERVAL_MS = 50  # not the default 1000: the last, partial batch would wait for it
POLL_S = 0.005
TIMEOUT_S = 300.0
READY_TIMEOUT_S = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPU: dict[str, list[dict[str, float]]] = {
    key: [] for key in ("rsyslog", "e2e", "e2e_2f", "e2e_bare", "e2e_direct", "e2e_direct_2")
}
"""Per run: CPU seconds by process (user + system, from /proc), and the producer's wall time:
where the two cores went."""

RSYSLOG_CONF = """\
global(workDirectory="{work}")
module(load="imfile")
module(load="mmjsonparse")
template(name="jsonl" type="string" string="%$!%\\n")
input(type="imfile" file="{source}" tag="bench" addMetadata="off" ruleset="bench")
ruleset(name="bench") {{
  action(type="mmjsonparse" cookie="")
  if $parsesuccess != "OK" then {{
    action(type="omfile" file="{bad}")
    stop
  }}
  if $!level == "DEBUG" then stop
  action(type="omfile" file="{output}" template="jsonl")
}}
"""


# --- rsyslog ------------------------------------------------------------------------------


def rsyslogd_path() -> str | None:
    return shutil.which("rsyslogd") or next(
        (path for path in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd") if os.access(path, os.X_OK)),
        None,
    )


def ensure_rsyslog() -> tuple[str | None, str]:
    """``(path to rsyslogd, "")``, installing Debian's ``rsyslog`` if it is missing; else
    ``(None, why not)``. Its ``imfile`` and ``mmjsonparse`` modules are in the base package."""
    found = rsyslogd_path()
    if found:
        return found, ""
    if shutil.which("apt-get") is None:
        return None, "rsyslogd is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return None, "rsyslogd is not installed (run `apt-get install rsyslog` as root)"
    print("rsyslogd not found: apt-get install -y --no-install-recommends rsyslog ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "rsyslog"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # maybe no package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    found = rsyslogd_path()
    if found is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
        return None, f"installing rsyslog failed: {tail[0]}"
    return found, ""


def rsyslog_version(rsyslogd: str) -> str:
    result = subprocess.run([rsyslogd, "-v"], capture_output=True, text=True, check=False)
    words = result.stdout.split()  # "rsyslogd  8.2302.0 (aka 2023.02) compiled with: ..."
    return words[1] if len(words) > 1 else "?"


def write_input(workload: Workload, path: Path) -> None:
    path.write_bytes(b"".join(payload + b"\n" for payload in workload.payloads))


def rsyslog_pipeline(bench: Bench, workload: Workload) -> float:
    """Seconds from starting a private rsyslogd to its file holding every non-DEBUG entry."""
    rsyslogd = rsyslogd_path()
    if rsyslogd is None:
        raise BenchmarkError("rsyslog: rsyslogd is not installed")
    root = bench.workdir / "rsyslog"
    shutil.rmtree(root, ignore_errors=True)
    (root / "work").mkdir(parents=True)
    source, output, bad = root / "in.jsonl", root / "out.jsonl", root / "unparsed.log"
    write_input(workload, source)
    conf = root / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(work=root / "work", source=source, output=output, bad=bad))
    command = [rsyslogd, "-n", "-f", str(conf), "-i", str(root / "rsyslogd.pid")]
    with (root / "rsyslogd.log").open("wb") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=root
        )
        try:
            wait_lines(output, workload.kept, "rsyslog", lambda: exited(process, root))
            elapsed = time.perf_counter() - started
            CPU["rsyslog"].append({"rsyslogd": cpu_seconds(process.pid)})
        finally:
            stop_process(process)
    if bad.exists() and bad.stat().st_size:
        raise BenchmarkError(f"rsyslog: mmjsonparse could not parse some entries ({bad})")
    check_output(output, workload, "rsyslog")
    return elapsed


def exited(process: subprocess.Popen[bytes], root: Path) -> str | None:
    if process.poll() is None:
        return None
    log = (root / "rsyslogd.log").read_text(errors="replace")[-2000:]
    return f"rsyslogd exited with {process.returncode}: {log}"


# --- Logloom ------------------------------------------------------------------------------


def logloom_config(url: str, workdir: Path, output: Path) -> dict[str, Any]:
    return {
        "redis": {"url": url, "embedded": "never", "data_dir": str(workdir / "data")},
        "plugins": {
            "enabled": ["log_filter_severity", SINK],
            "config": {SINK: {"path": str(output), "max_bytes": NO_ROTATION}},
        },
        "sink": {"flush_interval_ms": SINK_FLUSH_INTERVAL_MS},
    }


def worker_names(filters: int, direct: int = 0) -> list[str]:
    """``filters`` filter workers and a sink worker; or, with ``direct``, that many direct
    workers (filter and sink in one process) alone."""
    if direct:
        return [f"direct-{index}" for index in range(1, direct + 1)]
    return [f"filter-{index}" for index in range(1, filters + 1)] + ["sink"]


def readers(client: redis.Redis) -> int:
    """Connections whose last command was XREADGROUP: workers started up and reading (Redis
    7.0 makes a blocked reader a consumer of its group only once it is served)."""
    return sum(1 for info in client.client_list() if info.get("cmd") == "xreadgroup")


def wait_ready(client: redis.Redis, workers: Workers) -> None:
    """Until every worker is blocked reading its stream: all started up."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while readers(client) < len(workers.processes):
        workers.check_alive()
        if time.monotonic() > deadline:
            raise BenchmarkError(f"workers not ready after {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def produce(client: redis.Redis, config: Config, payloads: list[bytes]) -> None:
    """Logloom's own producer API, as an application would send: pipelined XADDs of
    ``ingest.producer_batch`` (1000), the payloads as they are."""
    with Producer.from_config(client, config) as producer:
        producer.send_many(payloads)


def produce_bare(bench: Bench, config: Config, payloads: list[bytes]) -> None:
    """The cheapest producer this machine has: XADDs packed in RESP by hand, 1000 per write on a
    plain socket, replies parsed by ``hiredis.Reader`` (the bare hiredis loop's way)."""
    stream = config.keys.ingest.encode()
    conn = RespConnection(bench.host, bench.port)
    try:
        for start in range(0, len(payloads), BATCH):
            chunk = payloads[start : start + BATCH]
            conn.send(b"".join(pack(b"XADD", stream, b"*", b"entry", p) for p in chunk))
            conn.replies(len(chunk))
    finally:
        conn.close()


def logloom_pipeline(
    bench: Bench,
    workload: Workload,
    filters: int = FILTER_WORKERS,
    bare: bool = False,
    direct: int = 0,
    figure: str = "e2e",
) -> float:
    """Seconds from the first XADD to the sink's file holding every non-DEBUG entry."""
    root = bench.workdir / "e2e"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    output = root / "out.jsonl"
    raw = logloom_config(bench.url, root, output)
    client = redis.Redis(host=bench.host, port=bench.port)
    workers = start_workers(raw, root, worker_names(filters, direct))
    try:
        wait_ready(client, workers)
        redis_pid = int(client.info("server")["process_id"])
        pids = {name: process.pid for name, process in workers.processes.items()}
        pids["redis-server"] = redis_pid
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        cpu_started = time.process_time()
        started = time.perf_counter()
        if bare:
            produce_bare(bench, workers.config, workload.payloads)
        else:
            produce(client, workers.config, workload.payloads)
        produced = time.perf_counter() - started
        producer_cpu = time.process_time() - cpu_started
        wait_lines(output, workload.kept, "logloom end to end", workers.problem)
        elapsed = time.perf_counter() - started
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        cpu["producer"] = producer_cpu
        cpu["producer wall"] = produced
        CPU[figure].append(cpu)
    finally:
        stop_workers(workers)
    keys = workers.config.keys
    dead = sum(int(client.xlen(keys.dlq(stage))) for stage in ("ingest", "filter", "sink"))
    if dead:
        raise BenchmarkError(f"logloom end to end: {dead} entries dead-lettered")
    check_output(output, workload, "logloom end to end")
    client.close()
    return elapsed


def logloom_pipeline_two_filters(bench: Bench, workload: Workload) -> float:
    return logloom_pipeline(bench, workload, filters=2, figure="e2e_2f")


def logloom_pipeline_bare_producer(bench: Bench, workload: Workload) -> float:
    """2 filter workers: with the producer out of the way the filter stage is the bottleneck."""
    return logloom_pipeline(bench, workload, filters=2, bare=True, figure="e2e_bare")


def logloom_pipeline_direct(bench: Bench, workload: Workload) -> float:
    """One direct worker (`--stage direct`): filter and sink in one process, no filtered
    stream."""
    return logloom_pipeline(bench, workload, direct=1, figure="e2e_direct")


def logloom_pipeline_two_direct(bench: Bench, workload: Workload) -> float:
    return logloom_pipeline(bench, workload, direct=2, figure="e2e_direct_2")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# --- both ---------------------------------------------------------------------------------


def wait_lines(path: Path, expected: int, figure: str, failed: Any) -> None:
    """Until ``path`` holds ``expected`` complete lines, counting only what was appended
    since the last look."""
    deadline = time.monotonic() + TIMEOUT_S
    lines = offset = 0
    checks = 0
    while True:
        if path.exists():
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            lines += chunk.count(b"\n")
            if lines >= expected:
                return
        checks += 1
        if checks % 20 == 0:
            problem = failed()
            if problem:
                raise BenchmarkError(f"{figure}: {problem}")
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"{figure}: {path} has {lines} of {expected} lines after {TIMEOUT_S:.0f} s"
                )
        time.sleep(POLL_S)


def check_output(path: Path, workload: Workload, figure: str) -> None:
    """Exactly the non-DEBUG entries: as many lines, none of them DEBUG."""
    data = path.read_bytes()
    lines = data.count(b"\n")
    if lines != workload.kept:
        raise BenchmarkError(f"{figure}: {path} has {lines} lines, expected {workload.kept}")
    debug = data.count(b'"level":"DEBUG"') + data.count(b'"level": "DEBUG"')
    if debug:
        raise BenchmarkError(f"{figure}: {debug} DEBUG entries in {path}")
