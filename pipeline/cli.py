"""The ``logloom`` command (also ``logloom-cli``). Exit 0 ok, 2 usage/config error, 1 otherwise.

Every failure is one line on stderr naming the thing at fault.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import redis

from pipeline import ai, control, dlq, signing
from pipeline.config import Config, load_config
from pipeline.discovery import find_candidates, load_plugins, plugin_config
from pipeline.embedded import resolve_url
from pipeline.errors import ConfigError, LogloomError, PluginLoadError
from pipeline.keys import DLQ_STAGES
from pipeline.log import redact, redact_url, setup_logging
from pipeline.producer import Producer
from pipeline.runtimes import open_plugin_file
from pipeline.runtimes.c import HEADER_DIR
from pipeline.status import collect, render, table
from pipeline.streams import connect


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="config file (default: "
        "$LOGLOOM_CONFIG or ./config/logloom.yaml, else built-in defaults)",
    )
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        help="DEBUG, INFO, WARNING or ERROR (default: $LOG_LEVEL or INFO)",
    )
    parser = argparse.ArgumentParser(
        prog="logloom",
        parents=[common],
        description="A plugin-driven log pipeline on Redis Streams.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    original_add_parser = commands.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return original_add_parser(name, parents=[common], **kwargs)

    commands.add_parser = add_parser  # type: ignore[method-assign]

    up = commands.add_parser("up", help="run the whole pipeline, supervised (the main job)")
    up.add_argument("--demo", action="store_true", help="also run a producer of demo logs")

    worker = commands.add_parser("worker", help="run one stage worker; start more to scale out")
    worker.add_argument(
        "--stage",
        required=True,
        choices=["filter", "sink", "ai", "direct"],
        help="direct: the filter chain and each sink in one worker, reading the ingest stream "
        "(no filtered stream; see README)",
    )
    worker.add_argument(
        "--sink",
        action="append",
        default=[],
        metavar="NAME",
        help="only these sinks (repeatable; default: every enabled sink)",
    )
    worker.add_argument(
        "--partitions",
        type=_partition_list,
        metavar="N,M",
        help="serve only these partitions, e.g. 0,2 (default: all of redis.partitions; "
        "filter, sink and direct stages)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve /metrics here (0: a free port, logged; -1: off)",
    )
    worker.add_argument("--metrics-host", help="address /metrics binds to (default: metrics.host)")

    exporter = commands.add_parser(
        "metrics",
        help="serve the queue figures read from Redis (and the sum of the workers sharing "
        "$PROMETHEUS_MULTIPROC_DIR) on /metrics; one per deployment",
    )
    exporter.add_argument("--port", type=int, help="port (default: metrics.port)")
    exporter.add_argument("--host", help="address to bind (default: metrics.host)")

    commands.add_parser("validate", help="check the config and load every enabled plugin")

    dashboard = commands.add_parser("dashboard", help="serve the live web dashboard")
    dashboard.add_argument("--host", help="address to listen on (default: dashboard.host)")
    dashboard.add_argument("--port", type=int, help="port (default: dashboard.port; 0: a free one)")

    produce = commands.add_parser(
        "produce", help="XADD JSON lines or text lines to the ingest stream"
    )
    produce.add_argument("file", nargs="?", default="-", help="file to read (default: stdin)")
    produce.add_argument(
        "--format",
        choices=["auto", "json", "text"],
        default="auto",
        help="auto: lines starting with '{' are JSON entries, others text",
    )
    produce.add_argument("--level", default="INFO", help="level of text lines (default INFO)")
    produce.add_argument("--module", default="", help="module of text lines")

    status = commands.add_parser("status", help="streams, groups, lag, pending and DLQ sizes")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.add_argument(
        "--watch",
        "-w",
        action="store_true",
        help="refresh the tables in place, with rates, until Ctrl-C",
    )
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    status.add_argument("--count", type=int, help="with --watch: stop after this many")

    dead = commands.add_parser("dlq", help="inspect, replay and purge dead letters")
    dead_commands = dead.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = dead_commands.add_parser("list", help="DLQ sizes, or one stage's newest letters")
    listing.add_argument("stage", nargs="?", choices=DLQ_STAGES)
    listing.add_argument("--limit", type=int, default=20)
    show = dead_commands.add_parser("show", help="one dead letter, whole, as JSON")
    show.add_argument("stage", choices=DLQ_STAGES)
    show.add_argument("id")
    for action, text in (
        ("replay", "put dead letters back on their stream"),
        ("purge", "delete dead letters for good"),
    ):
        sub = dead_commands.add_parser(action, help=text)
        sub.add_argument("stage", choices=DLQ_STAGES)
        sub.add_argument("ids", nargs="*", metavar="ID")
        sub.add_argument("--all", action="store_true", help="every letter of the stage")

    plugins = commands.add_parser("plugins", help="list and validate plugins")
    plugin_commands = plugins.add_subparsers(
        dest="plugins_command", required=True, metavar="ACTION"
    )
    plugin_commands.add_parser("list", help="every plugin found, enabled or not")
    check = plugin_commands.add_parser(
        "validate", help="load every enabled plugin, or the one at PATH; exit 2 on failure"
    )
    check.add_argument(
        "path", nargs="?", help="one plugin: its project directory, plugin.yaml, .py or .so"
    )
    setup = plugin_commands.add_parser(
        "install", help="pip-install the plugin distribution logloom-plugin-NAME"
    )
    setup.add_argument("name", help="NAME or logloom-plugin-NAME")
    setup.add_argument("--find-links", "-f", action="append", default=[], metavar="DIR|URL")
    setup.add_argument("--index-url", "-i", metavar="URL", help="a package index (pip's)")
    setup.add_argument("--no-index", action="store_true", help="only --find-links (offline)")
    setup.add_argument("--upgrade", "-U", action="store_true", help="upgrade if installed")
    setup.add_argument(
        "--signature", metavar="FILE", help="the wheel's .sig (default: beside it in --find-links)"
    )
    run = plugin_commands.add_parser(
        "run", help="serve one plugin over the subprocess protocol on stdin/stdout"
    )
    run.add_argument("path", help="a Python plugin (.py or package) or a C plugin (.so)")
    trial = plugin_commands.add_parser(
        "test", help="check a plugin's contract, latency and memory in each runtime it runs in"
    )
    trial.add_argument("path", help="a Python plugin (.py or package) or a C plugin (.so)")
    trial.add_argument("--entries", help="FILE.jsonl: your own entries; shows each decision")
    trial.add_argument(
        "--runtime", default="all", choices=["inprocess", "isolated", "sandbox", "all"]
    )
    trial.add_argument("--calls", type=int, default=1000, help="calls timed per runtime")
    trial.add_argument("--budget-ms", type=float, help="p99 latency allowed (default: timeout)")
    trial.add_argument("--json", action="store_true", help="the report as JSON")
    plugin_commands.add_parser("cflags", help="compiler flags that find logloom_plugin.h")
    keygen = plugin_commands.add_parser("keygen", help="make an Ed25519 key pair for signing")
    keygen.add_argument("--out", default="logloom-plugins", help="PREFIX: writes .key and .pub")
    sign = plugin_commands.add_parser("sign", help="write PATH.sig: a signature of the plugin")
    sign.add_argument("--key", required=True, help="the private key (from keygen)")
    sign.add_argument("path", help="the plugin file or package")
    verify = plugin_commands.add_parser("verify", help="check a plugin's signature")
    verify.add_argument(
        "--key", action="append", default=[], help="a trusted public key (default: trusted_keys)"
    )
    verify.add_argument("path", help="the plugin file or package")
    for action, text in (
        ("disable", "skip a plugin in every running worker (a sink pauses), until enabled"),
        ("enable", "use a disabled plugin again in every running worker"),
        ("reload", "load a plugin again (new code and config) in every running worker"),
    ):
        order = plugin_commands.add_parser(action, help=text)
        order.add_argument("name", help="the plugin's name, as in plugins.enabled")

    analysis = commands.add_parser("ai", help="results of ai plugins")
    ai_commands = analysis.add_subparsers(dest="ai_command", required=True, metavar="ACTION")
    tail = ai_commands.add_parser("tail", help="the newest ai results, and new ones as they come")
    tail.add_argument("--plugin", help="only this plugin's results")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new results")
    tail.add_argument("--count", "-n", type=int, default=20, help="how many to show first")
    tail.add_argument("--json", action="store_true", help="one JSON object a line")

    tap = commands.add_parser(
        "tap", help="watch entries and each plugin's decision flow through a stage, live"
    )
    tap.add_argument(
        "--stage",
        default="filter",
        help="filter (default; a direct worker's chain too), sink:NAME, direct:NAME, or * for all",
    )
    tap.add_argument("--plugin", help="only entries this plugin decided on, and its decisions")
    tap.add_argument(
        "--from",
        dest="start",
        metavar="ID",
        help="replay the recorded tap history from this record ID (0: all of it)",
    )
    tap.add_argument(
        "--candidate",
        metavar="PATH",
        help="shadow test: run this plugin version "
        "on the tapped entries and show where it decides otherwise than production",
    )
    tap.add_argument("--count", "-n", type=int, help="stop after this many entries")
    tap.add_argument("--json", action="store_true", help="one JSON object a line")

    aggregator = commands.add_parser(
        "aggregator",
        help="the central receiver for remote Logloom nodes (their sink_aggregator): writes "
        "what they send into this config's Redis ingest stream",
    )
    aggregator.add_argument("--host", help="address to listen on (default: aggregator.host)")
    aggregator.add_argument(
        "--port", type=int, help="port (default: aggregator.port; 0: a free one)"
    )

    commands.add_parser("demo", help="produce demo logs until stopped (used by `up --demo`)")

    scaffold = commands.add_parser(
        "create-plugin", help="a new plugin project with working tests (design §9.2)"
    )
    scaffold.add_argument("--type", required=True, choices=["filter", "sink", "ai", "lang"])
    scaffold.add_argument("--name", required=True, help="filter_*, sink_*, ai_* or lang_*")
    scaffold.add_argument("--lang", default="python", choices=["python", "c", "service"])
    scaffold.add_argument("--dir", default=".", help="where to create NAME/ (default: here)")
    return parser


def _partition_list(text: str) -> list[int]:
    try:
        return [int(one) for one in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected partition numbers like 0,2, got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", None))
    config: Config | None = None
    try:
        config = load_config(getattr(args, "config", None))
        return _dispatch(args, config)
    except ConfigError as exc:
        print(f"logloom: {redact(str(exc))}", file=sys.stderr)
        return 2
    except redis.AuthenticationError as exc:
        print(f"logloom: {_redis(config)} refused the credentials: {redact(str(exc))}",
              file=sys.stderr)  # fmt: skip
        return 1
    except redis.exceptions.NoPermissionError as exc:
        print(f"logloom: {_redis(config)}: the ACL user lacks a permission: {redact(str(exc))}",
              file=sys.stderr)  # fmt: skip
        return 1
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"logloom: cannot reach {_redis(config)}: {redact(str(exc))}", file=sys.stderr)
        return 1
    except (LogloomError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"logloom: {redact(str(message))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _redis(config: Config | None) -> str:
    """``Redis at <url>`` with the URL redacted, for error lines."""
    return f"Redis at {redact_url(resolve_url(config))}" if config else "Redis"


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == "up":
        from workers.supervisor import up

        return up(config, demo=args.demo)
    if args.command == "worker":
        port = None if args.metrics_port < 0 else args.metrics_port
        if args.metrics_host:
            config.metrics.host = args.metrics_host
        if args.stage == "ai":
            from workers.ai_worker import run_ai_worker

            return run_ai_worker(config, port)
        from workers.stage_worker import run_worker

        return run_worker(config, args.stage, port, args.sink, args.partitions)
    if args.command == "metrics":
        from workers.exporter import run_exporter

        config.metrics.host = args.host or config.metrics.host
        config.metrics.port = config.metrics.port if args.port is None else args.port
        return run_exporter(config)
    if args.command == "dashboard":
        from pipeline.dashboard.server import serve

        return serve(config, resolve_url(config), args.host, args.port)
    if args.command == "aggregator":
        from pipeline import aggregator

        return aggregator.run(config, args.host, args.port)
    if args.command == "demo":
        from workers.demo import run_demo

        return run_demo(config)
    if args.command == "plugins" and args.plugins_command == "test":
        return _plugins_test(args, config)
    if args.command == "create-plugin":
        return _create_plugin(args)
    if args.command == "plugins" and args.plugins_command == "install":
        return _plugins_install(args, config)
    if args.command == "plugins" and args.plugins_command == "validate" and args.path:
        from pipeline.packaging import validate_path

        return validate_path(Path(args.path), config)
    if args.command == "plugins" and args.plugins_command == "run":
        from pipeline.runtimes.host import main as host_main

        return host_main([args.path])
    if args.command == "plugins" and args.plugins_command in ("keygen", "sign", "verify"):
        return _signing(args, config)
    if args.command == "plugins" and args.plugins_command == "cflags":
        print(f"-I{HEADER_DIR}")
        return 0
    if (
        args.command in ("validate", "plugins")
        and getattr(args, "plugins_command", "validate") == "validate"
    ):
        return _validate(config)
    if args.command == "plugins" and args.plugins_command == "list":
        return _plugins_list(config)
    url = resolve_url(config)
    client = connect(url, config.redis.cluster)
    if args.command == "plugins":
        return _plugins_order(args, config, client)
    if args.command == "ai":
        return _ai_tail(args, config, client)
    if args.command == "tap":
        return _tap(args, config, client)
    if args.command == "produce":
        return _produce(args, config, client)
    if args.command == "status" and args.watch:
        return _status_watch(args, config, client, redact_url(url))
    if args.command == "status":
        data = {"redis": redact_url(url), **collect(client, config.keys)}
        print(
            orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if args.json else render(data)
        )
        return 0
    return _dlq(args, config, client)


def _validate(config: Config) -> int:
    failures: list[str] = []
    loaded = load_plugins(config, failures=failures)
    for plugin in loaded:
        down = getattr(plugin.plugin, "down", None)  # a service that is not up (yet)
        print(
            f"{'down' if down else 'ok'}  {plugin.name} {plugin.info.version} "
            f"({plugin.info.type}, {plugin.runtime}) {plugin.origin}"
            + (f": {down}; its entries fail until it answers" if down else "")
        )
        plugin.shutdown()
    if failures:
        print(
            f"logloom: {config.source}: {len(failures)} plugin(s) failed to load", file=sys.stderr
        )
        return 2
    print(f"{config.source}: valid; {len(loaded)} plugin(s) loaded")
    return 0


def _status_watch(
    args: argparse.Namespace, config: Config, client: redis.Redis, shown_url: str
) -> int:
    """``status --watch``: the tables again every ``--interval`` seconds, in place on a
    terminal, with rates sampled the way the dashboard samples them."""
    from pipeline.dashboard.sampler import Sampler

    sampler = Sampler(client, config.keys, shown_url, args.interval, history_minutes=1)
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    frames = 0
    try:
        while args.count is None or frames < args.count:
            snapshot, results = sampler.sample()
            sampler.publish(snapshot, results)
            stamp = time.strftime("%H:%M:%S")
            frame = render(snapshot)
            if args.json:
                frame = orjson.dumps(snapshot).decode()
            print(f"{clear}logloom status, {stamp}, every {args.interval:g} s\n{frame}\n",
                  flush=True)  # fmt: skip
            frames += 1
            if args.count is None or frames < args.count:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0


def _tap(args: argparse.Namespace, config: Config, client: redis.Redis) -> int:
    from pipeline import tap
    from pipeline.runtimes import load_plugin

    candidate = None
    if args.candidate:
        try:
            candidate = load_plugin(args.candidate)
        except PluginLoadError as exc:
            print(f"logloom: tap: candidate {args.candidate}: {exc}", file=sys.stderr)
            return 2
    try:
        return tap.run(client, config.keys, args.stage, args.plugin, args.start, candidate,
                       args.count, args.json, threading.Event())  # fmt: skip
    finally:
        if candidate is not None:
            candidate.shutdown()


def _ai_tail(args: argparse.Namespace, config: Config, client: redis.Redis) -> int:
    """Print ai results oldest first, then (``--follow``) new ones as they are XADDed."""
    for item in ai.read_results(client, config.keys, args.count, args.plugin, args.follow):
        print(_ai_line(item, args.json), flush=True)
    return 0


def _ai_line(item: tuple[bytes, dict[bytes, bytes]], as_json: bool) -> str:
    data = ai.result_dict(item)
    if as_json:
        return orjson.dumps(data).decode()
    result = data["result"]
    text = result.get("summary") if isinstance(result, dict) and "summary" in result else result
    kind = "final" if data.get("final") == "1" else "partial"
    shown = text if isinstance(text, str) else orjson.dumps(text).decode()
    return (
        f"{data['id']}  {data.get('plugin')}  job {data.get('job', '')[:8]} "
        f"#{data.get('seq')} {kind}: {shown}"
    )


def _signing(args: argparse.Namespace, config: Config) -> int:
    if args.plugins_command == "keygen":
        private, public = signing.keygen(Path(args.out))
        print(f"private key: {private} (keep it secret)")
        print(f"public key:  {public} (list it in plugins.trusted_keys)")
        return 0
    if args.plugins_command == "sign":
        written = signing.sign(Path(args.key), Path(args.path))
        print(f"signed {args.path}: {written}")
        return 0
    keys = [Path(key) for key in args.key or config.plugins.trusted_keys]
    if not keys:
        print("logloom: plugins verify: no --key and no plugins.trusted_keys", file=sys.stderr)
        return 2
    try:
        signer = signing.check_signature(Path(args.path), keys)
    except PluginLoadError as exc:
        print(f"logloom: {args.path}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.path}: signature ok (key {signer})")
    return 0


def _plugins_test(args: argparse.Namespace, config: Config) -> int:
    from pipeline import harness

    try:
        report = harness.check_plugin(
            args.path, config, args.runtime, args.entries, max(args.calls, 1), args.budget_ms
        )
    except harness.UsageError as exc:
        print(f"logloom: plugins test: {exc}", file=sys.stderr)
        return 2
    print(report.to_json().decode() if args.json else harness.render(report))
    return 1 if report.failures else 0


def _plugins_order(args: argparse.Namespace, config: Config, client: redis.Redis) -> int:
    if args.name not in config.enabled_plugins():
        print(f"logloom: plugin '{args.name}' is not in plugins.enabled", file=sys.stderr)
        return 2
    listening = control.send(client, config.keys, args.plugins_command, args.name)
    print(f"{args.plugins_command} '{args.name}': sent to {listening} running worker(s)")
    return 0


def _plugins_list(config: Config) -> int:
    """The plugins found on disk, then what running workers report of theirs (if Redis is up)."""
    _plugins_found(config)
    try:
        client = connect(resolve_url(config), config.redis.cluster)
        reports = control.worker_reports(client, config.keys)
        disabled = control.disabled_plugins(client, config.keys)
    except (redis.ConnectionError, redis.TimeoutError, LogloomError) as exc:
        print(f"\n(running workers not shown: Redis unreachable: {redact(str(exc))})")
        return 0
    rows = [
        [
            report["worker"],
            one["name"],
            one["runtime"],
            one["version"],
            one["state"],
            one["calls"],
            one["entries"],
            one["failures"],
            one["restarts"],
            (one["last_error"] or "-")[:60],
        ]
        for report in reports
        for one in report["plugins"]
    ]
    print()
    if rows:
        header = ["WORKER", "PLUGIN", "RUNTIME", "VERSION", "STATE", "CALLS", "ENTRIES"]
        print(table([*header, "FAILURES", "RESTARTS", "LAST ERROR"], rows))
    else:
        print("(no running workers)")
    if disabled:
        print(f"disabled at run time: {', '.join(sorted(disabled))}")
    return 0


def _plugins_found(config: Config) -> None:
    enabled = config.enabled_plugins()
    rows = []
    for name, candidate in sorted(find_candidates(config).items()):
        try:
            info = open_plugin_file(candidate.path, plugin_config(candidate, config)).info
            kind, version = info.type, info.version
        except PluginLoadError as exc:
            kind, version = "?", f"invalid: {exc}"
        state = f"enabled #{enabled.index(name) + 1}" if name in enabled else "-"
        rows.append([name, kind, version, state, candidate.source or "dir", candidate.path])
    for name, service in sorted(config.plugins.services.items()):
        state = f"enabled #{enabled.index(name) + 1}" if name in enabled else "-"
        rows.append([name, service.type, "(service)", state, "service", service.address])
    print(table(["NAME", "TYPE", "VERSION", "ENABLED", "FROM", "PATH"], rows))


def _create_plugin(args: argparse.Namespace) -> int:
    from pipeline import scaffold

    try:
        made = scaffold.create(args.type, args.name, args.lang, Path(args.dir))
    except scaffold.ScaffoldError as exc:
        print(f"logloom: create-plugin: {exc}", file=sys.stderr)
        return 2
    first = "make && " if args.lang == "c" else ""
    article = "an" if args.type == "ai" else "a"
    print(f"created {made}: {article} {args.type} plugin ({args.lang}) with its tests")
    print(f"next: cd {made} && {first}python -m pytest   (README.md says the rest)")
    return 0


def _plugins_install(args: argparse.Namespace, config: Config) -> int:
    from pipeline.packaging import install

    pip_args = [arg for link in args.find_links for arg in ("--find-links", link)]
    pip_args += ["--index-url", args.index_url] if args.index_url else []
    pip_args += ["--no-index"] if args.no_index else []
    pip_args += ["--upgrade"] if args.upgrade else []
    signature = Path(args.signature) if args.signature else None
    return install(args.name, config, pip_args, signature)


def _lines(args: argparse.Namespace) -> Iterator[bytes]:
    handle: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    with handle:
        for raw in handle:
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            as_json = args.format == "json" or (args.format == "auto" and line.lstrip()[:1] == b"{")
            if as_json:
                yield line
            else:
                text = line.decode(errors="replace")
                yield orjson.dumps({"level": args.level, "module": args.module, "message": text})


def _produce(args: argparse.Namespace, config: Config, client: redis.Redis) -> int:
    with Producer.from_config(client, config) as producer:
        for payload in _lines(args):
            producer.send(payload)
    streams = ", ".join(part.ingest for part in config.keys.partitions())
    print(f"produced {producer.sent} entries to {streams}", file=sys.stderr)
    return 0


def _dlq(args: argparse.Namespace, config: Config, client: redis.Redis) -> int:
    keys = config.keys
    if args.dlq_command == "list" and args.stage is None:
        rows = [
            [s.stage, s.key, s.size, s.newest_plugin or "-", (s.newest_error or "-")[:80]]
            for s in dlq.summaries(client, keys)
        ]
        print(table(["STAGE", "STREAM", "SIZE", "NEWEST PLUGIN", "NEWEST ERROR"], rows))
        return 0
    if args.dlq_command == "list":
        letters = dlq.newest(client, keys, args.stage, args.limit)
        print(
            table(
                ["ID", "FAILED AT", "PLUGIN", "ATTEMPTS", "ERROR"],
                [
                    [
                        one.ref,
                        one.fields.get("failed_at", ""),
                        one.fields.get("plugin") or "-",
                        one.fields.get("attempts", ""),
                        one.error[:100],
                    ]
                    for one in letters
                ],
            )
        )
        return 0
    if args.dlq_command == "show":
        found = dlq.get(client, keys, args.stage, args.id)
        if found is None:
            print(f"logloom: no dead letter {args.id} in {dlq.where(keys, args.stage)}",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(orjson.dumps(dlq.as_dict(found), option=orjson.OPT_INDENT_2).decode())
        return 0
    if not args.ids and not args.all:
        print(f"logloom: dlq {args.dlq_command}: name letter IDs or pass --all", file=sys.stderr)
        return 2
    ids = None if args.all else args.ids
    if args.dlq_command == "replay":
        count = dlq.replay(client, keys, args.stage, ids)
        print(f"replayed {count} dead letters from {dlq.where(keys, args.stage)}")
    else:
        count = dlq.purge(client, keys, args.stage, ids)
        print(f"purged {count} dead letters from {dlq.where(keys, args.stage)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
