"""``python -m benchmarks.runtimes``: one filter worker, the severity filter in every runtime.

The same logic (keep level >= INFO) runs through the real ``FilterStage`` — loaded with
``load_plugins(config, types=["filter"])``, so the runtime adapters and the health wrapper are
in the measurement — as in-process Python, C in process (per entry and batched), C isolated,
a Python subprocess and a Unix-socket service. One private redis-server, the workload of
``python -m benchmarks``, runs interleaved ``--repeats`` times; prints best and median entries/s
and the ratio to in-process Python. Exits 1 if any run's output is wrong.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks.__main__ import machine_facts, make_workload
from benchmarks.figures import (
    Bench,
    BenchmarkError,
    Workload,
    check_filtered,
    load_stream,
    raw_filter_loop,
    redis_server,
    run_and_report,
    stop_process,
    time_stage,
)
from pipeline.config import Config, parse_config
from pipeline.discovery import load_plugins
from pipeline.health import GuardedPlugin
from pipeline.stages.filter import FilterStage
from pipeline.stages.runner import StageLoop
from pipeline.streams import connect

ROOT = Path(__file__).resolve().parent.parent
C_SOURCE = ROOT / "plugins" / "c" / "filter_severity.c"
C_SETTINGS = ROOT / "plugins" / "c" / "filter_severity.yaml"
SERVICE = ROOT / "plugins" / "services" / "severity_service.py"
SERVICE_START_TIMEOUT_S = 15.0
BATCH_SYMBOL = b"plugin_process_batch"


@dataclass(frozen=True)
class Setup:
    """What the runtimes need besides Redis: the two builds of the C plugin, the service."""

    per_entry_dir: Path  # filter_severity.so without plugin_process_batch
    batched_dir: Path  # filter_severity.so as is
    service_address: str  # unix:///.../sev.sock


@dataclass(frozen=True)
class Runtime:
    key: str
    label: str
    plugin: str  # the name the loaded plugin must have
    runtime: str  # what GuardedPlugin.runtime must say
    config: Callable[[Setup], dict[str, Any]]  # the ``plugins`` section
    origin_dir: Callable[[Setup], Path | None] = lambda setup: None  # where the plugin must be


def settings(name: str, mode: str) -> dict[str, Any]:
    return {name: {"mode": mode}}


RUNTIMES = [
    Runtime(
        "python",
        "in-process Python",
        "log_filter_severity",
        "python",
        lambda setup: {
            "enabled": ["log_filter_severity"],
            "settings": settings("log_filter_severity", "inprocess"),
        },
    ),
    Runtime(
        "c_per_entry",
        "C in-process, per entry",
        "filter_severity",
        "c",
        lambda setup: {
            "enabled": ["filter_severity"],
            "paths": [str(setup.per_entry_dir)],
            "settings": settings("filter_severity", "inprocess"),
        },
        lambda setup: setup.per_entry_dir,
    ),
    Runtime(
        "c_batched",
        "C in-process, batched",
        "filter_severity",
        "c",
        lambda setup: {
            "enabled": ["filter_severity"],
            "paths": [str(setup.batched_dir)],
            "settings": settings("filter_severity", "inprocess"),
        },
        lambda setup: setup.batched_dir,
    ),
    Runtime(
        "c_isolated",
        "C isolated (host subprocess)",
        "filter_severity",
        "c-isolated",
        lambda setup: {
            "enabled": ["filter_severity"],
            "paths": [str(setup.batched_dir)],
            "settings": settings("filter_severity", "isolated"),
        },
        lambda setup: setup.batched_dir,
    ),
    Runtime(
        "python_subprocess",
        "Python subprocess, batched",
        "log_filter_severity",
        "python-subprocess",
        lambda setup: {
            "enabled": ["log_filter_severity"],
            "settings": settings("log_filter_severity", "isolated"),
        },
    ),
    Runtime(
        "service",
        "Unix-socket service, batched",
        "severity_service",
        "service",
        lambda setup: {
            "enabled": ["severity_service"],
            "services": {"severity_service": {"address": setup.service_address, "type": "filter"}},
        },
    ),
]
RAW_KEY = "raw_filter"
RAW_LABEL = "raw redis-py loop (context)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runtimes", description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000, help="entries per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per runtime")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rates here")
    args = parser.parse_args(argv)
    if args.entries < 1 or args.repeats < 1:
        parser.error("--entries and --repeats must be at least 1")
    return args


# --- the two builds of plugins/c/filter_severity.c ----------------------------------------


def run_tool(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BenchmarkError(f"cannot run {command[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        raise BenchmarkError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
    return done.stdout


def plugin_cflags() -> list[str]:
    """``logloom plugins cflags``: the script beside this Python, else the module."""
    script = Path(sys.executable).parent / "logloom"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]
    return run_tool([*command, "plugins", "cflags"]).split()


def exports_batch(library: Path) -> bool:
    return hasattr(ctypes.CDLL(str(library)), BATCH_SYMBOL.decode())


def build_c_plugins(workdir: Path) -> tuple[Path, Path]:
    """A per-entry and a batched ``filter_severity.so`` from the bundled source, each in a
    directory of its own (with the plugin's YAML), for ``plugins.paths``.

    The source has no switch to leave the batch entry point out, so the per-entry build is the
    same object file with ``plugin_process_batch`` made local (``objcopy --localize-symbol``):
    the code is identical, but ``dlsym`` no longer finds the symbol.
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    objcopy = shutil.which("objcopy")
    if cc is None or objcopy is None:
        raise BenchmarkError("needs a C compiler (cc) and objcopy on PATH")
    flags = [*plugin_cflags(), "-fPIC", "-O2", "-Wall", "-Wextra"]
    build = workdir / "build"
    per_entry, batched = workdir / "c-per-entry", workdir / "c-batched"
    for directory in (build, per_entry, batched):
        directory.mkdir()
        if directory is not build:
            shutil.copy(C_SETTINGS, directory / C_SETTINGS.name)
    source = build / C_SOURCE.name  # a copy: the checkout is only read
    shutil.copy(C_SOURCE, source)
    shutil.copy(C_SOURCE.with_name("config_json.h"), build)  # the source includes it
    run_tool([cc, *flags, "-shared", "-o", str(batched / "filter_severity.so"), str(source)])
    obj, hidden = build / "filter_severity.o", build / "filter_severity.nobatch.o"
    run_tool([cc, *flags, "-c", "-o", str(obj), str(source)])
    run_tool([objcopy, f"--localize-symbol={BATCH_SYMBOL.decode()}", str(obj), str(hidden)])
    run_tool([cc, "-shared", "-o", str(per_entry / "filter_severity.so"), str(hidden)])
    if not exports_batch(batched / "filter_severity.so"):
        raise BenchmarkError("the batched build does not export plugin_process_batch")
    if exports_batch(per_entry / "filter_severity.so"):
        raise BenchmarkError("the per-entry build still exports plugin_process_batch")
    return per_entry, batched


# --- the severity service -----------------------------------------------------------------


@contextmanager
def severity_service(workdir: Path) -> Iterator[str]:
    """``severity_service.py --unix <workdir>/sev.sock``, up until its "listening on" line;
    yields its ``unix://`` address and terminates it at the end."""
    socket_path = workdir / "sev.sock"
    stderr_path = workdir / "service.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(SERVICE), "--unix", str(socket_path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([process.stdout], [], [], remaining)[0]:
                raise BenchmarkError(
                    f"severity service: no ready line in {SERVICE_START_TIMEOUT_S} s"
                )
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise BenchmarkError(
                    f"severity service exited ({process.wait()}): {stderr_path.read_text().strip()}"
                )
            line += chunk
        if not line.startswith(b"listening on unix:"):
            raise BenchmarkError(f"severity service said {line!r}, expected 'listening on ...'")
        yield f"unix://{socket_path}"
    finally:
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()


# --- one measured run ---------------------------------------------------------------------


def runtime_config(runtime: Runtime, setup: Setup) -> Config:
    return parse_config({"plugins": runtime.config(setup), "stages": {"block_ms": 10}})


def check_loaded(filters: list[GuardedPlugin], runtime: Runtime, setup: Setup) -> GuardedPlugin:
    """The one plugin, of the right name and runtime, from the right file."""
    found = [(plugin.name, plugin.runtime) for plugin in filters]
    if found != [(runtime.plugin, runtime.runtime)]:
        raise BenchmarkError(
            f"{runtime.label}: loaded {found}, expected [({runtime.plugin!r}, {runtime.runtime!r})]"
        )
    (plugin,) = filters
    where = runtime.origin_dir(setup)
    if where is not None and Path(plugin.origin).parent != where:
        raise BenchmarkError(f"{runtime.label}: loaded {plugin.origin}, expected one in {where}")
    return plugin


def filter_run(bench: Bench, workload: Workload, runtime: Runtime, setup: Setup) -> float:
    """The real filter worker over the ingest stream, as ``figures.filter_worker`` runs it."""
    config = runtime_config(runtime, setup)
    client = connect(bench.url)
    filters = load_plugins(config, types=["filter"])
    try:
        plugin = check_loaded(filters, runtime, setup)
        last_id = load_stream(client, config.keys.ingest, workload.payloads)
        stage = FilterStage(config, filters)
        elapsed = time_stage(
            StageLoop(client, stage, config.stages, config.stages.batch_size),
            config.keys.ingest,
            last_id,
            workload.count,
        )
    finally:
        for one in filters:
            one.shutdown()
    check_filtered(client, config.keys.filtered, workload, runtime.label)
    dead = int(client.xlen(config.keys.dlq("ingest"))) + int(client.xlen(config.keys.dlq("filter")))
    if dead:
        raise BenchmarkError(f"{runtime.label}: {dead} entries dead-lettered")
    if plugin.entries != workload.count or plugin.failures or plugin.restarts:
        raise BenchmarkError(
            f"{runtime.label}: the plugin saw {plugin.entries} of {workload.count} entries, "
            f"{plugin.failures} failures, {plugin.restarts} restarts"
        )
    client.close()
    return elapsed


# --- the run and the table ----------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    workload = make_workload(args.entries)
    keys = [runtime.key for runtime in RUNTIMES] + [RAW_KEY]
    rates: dict[str, list[float]] = {key: [] for key in keys}
    with tempfile.TemporaryDirectory(prefix="logloom-bench-runtimes-") as tmp:
        workdir = Path(tmp)
        per_entry, batched = build_c_plugins(workdir)
        with redis_server(workdir) as (host, port), severity_service(workdir) as address:
            setup = Setup(per_entry, batched, address)
            client = redis.Redis(host=host, port=port)
            for name, value in machine_facts(client).items():
                print(f"{name + ':':17} {value}")
            print(
                f"{'workload:':17} {workload.count} entries, {workload.kept} kept "
                f"(level >= INFO), {args.repeats} repeat(s), batch 500"
            )
            print()
            bench = Bench(client, f"redis://{host}:{port}/0", host, port, workdir)
            labels = {runtime.key: runtime.label for runtime in RUNTIMES} | {RAW_KEY: RAW_LABEL}
            for round_ in range(1, args.repeats + 1):
                for key in keys:
                    client.flushall()
                    if key == RAW_KEY:
                        seconds = raw_filter_loop(bench, workload)
                    else:
                        runtime = next(one for one in RUNTIMES if one.key == key)
                        seconds = filter_run(bench, workload, runtime, setup)
                    rates[key].append(workload.count / seconds)
                    print(
                        f"  run {round_}/{args.repeats}  {labels[key]:30} {seconds:7.3f} s  "
                        f"{workload.count / seconds:>10,.0f} entries/s",
                        flush=True,
                    )
            client.close()
    return rates


def print_table(rates: dict[str, list[float]]) -> None:
    labels = {runtime.key: runtime.label for runtime in RUNTIMES} | {RAW_KEY: RAW_LABEL}
    best_ref = max(rates["python"])
    median_ref = statistics.median(rates["python"])
    print()
    print(
        "| runtime | best entries/s | median entries/s "
        "| best / in-process Python | median / in-process Python |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for key, values in rates.items():
        best, median = max(values), statistics.median(values)
        print(
            f"| {labels[key]} | {best:,.0f} | {median:,.0f} | {best / best_ref:.2f} "
            f"| {median / median_ref:.2f} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_and_report(parse_args(argv), run, print_table)


if __name__ == "__main__":
    sys.exit(main())
