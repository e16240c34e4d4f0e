"""``logloom up``: the whole pipeline in one supervised run.

Starts (or finds) Redis, then every stage worker and the dashboard as child processes,
restarting any that dies with exponential backoff, and serves one ``/metrics`` for all of them.
With no Redis configured, or the configured one unreachable and ``redis.embedded: auto``, it
starts an embedded ``redis-server`` (:mod:`pipeline.embedded`) and stops it on the way out.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from prometheus_client.multiprocess import mark_process_dead

from pipeline import metrics
from pipeline.config import Config
from pipeline.dashboard.server import available_port, page_url
from pipeline.embedded import EmbeddedRedis, configured_url, die_with_parent, ping_error
from pipeline.errors import LogloomError
from pipeline.log import redact, redact_url
from pipeline.streams import connect
from workers.ai_worker import ai_plugin_names

log = logging.getLogger("logloom.up")

RESTART_BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 30.0
STOP_GRACE_S = 15.0
EXIT_REFUSED = 2
"""A worker's exit code for a configuration it cannot run (a bad config, a direct worker
that is not the ingest stream's only reader): starting it again would not help."""


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = 1.0
    restart_at: float | None = field(default=0.0)
    url: str | None = None  # where it serves people (the dashboard), for the banner


def choose_redis(config: Config) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to run on, and the embedded server if one had to be started."""
    wanted = config.redis.embedded
    url = configured_url(config)
    if url and wanted != "always":
        error = ping_error(url)
        if error is None:
            return url, None
        shown, why = redact_url(url), redact(str(error))
        if isinstance(error, redis.AuthenticationError):  # it is there: no embedded stand-in
            raise LogloomError(f"Redis at {shown} refused the credentials: {why}")
        if wanted == "never" or config.redis.cluster:
            setting = "redis.cluster: true" if config.redis.cluster else "redis.embedded: never"
            raise LogloomError(f"Redis at {shown} is unreachable: {why} ({setting})")
        log.warning("Redis at %s is unreachable (%s); starting an embedded one instead", shown, why)
    elif wanted == "never":
        raise LogloomError("no redis.url configured and redis.embedded is 'never'")
    server = EmbeddedRedis(config.redis.data_dir)
    return server.start(), server


def _children(config: Config, demo: bool) -> list[Child]:
    base = [sys.executable, "-m", "pipeline.cli"]
    config_args = ["--config", config.source] if Path(config.source).is_file() else []
    if config.direct.workers:  # the filter chain and the one sink in each (README "Performance")
        children = [
            Child(f"direct-{n + 1}", [*base, "worker", "--stage", "direct", *config_args])
            for n in range(config.direct.workers)
        ]
    else:
        children = [
            Child(f"filter-{n + 1}", [*base, "worker", "--stage", "filter", *config_args])
            for n in range(config.filter.workers)
        ]
        children += [
            Child(f"sink-{n + 1}", [*base, "worker", "--stage", "sink", *config_args])
            for n in range(config.sink.workers)
        ]
    if config.direct.workers and ai_plugin_names(config):
        log.warning("ai plugins not run: with direct workers no entry reaches the filtered stream")
    elif config.ai.workers and config.redis.cluster and ai_plugin_names(config):
        log.warning("ai plugins not run: the ai stage needs a plain Redis (redis.cluster: true)")
    elif config.ai.workers and ai_plugin_names(config):
        children += [
            Child(f"ai-{n + 1}", [*base, "worker", "--stage", "ai", *config_args])
            for n in range(config.ai.workers)
        ]
    if demo:
        children.append(Child("demo", [*base, "demo", *config_args]))
    host = config.dashboard.host
    port = available_port(host, config.dashboard.port)
    children.append(
        Child(
            "dashboard",
            [*base, "dashboard", *config_args, "--port", str(port)],
            url=page_url(host, port),
        )
    )
    return children


class Supervisor:
    def __init__(self, config: Config, url: str, demo: bool) -> None:
        self.config = config
        self.url = url
        self.children = _children(config, demo)
        self.stop = threading.Event()
        self.refused: str | None = None  # a worker that refused its configuration
        self.metrics_dir = Path(config.redis.data_dir).resolve() / "metrics"
        # The URL (password, TLS files) reaches the children in their environment, which only
        # this user can read, never on a command line that `ps` shows.
        self.env = dict(
            os.environ, LOGLOOM_REDIS_URL=url, PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir)
        )

    def serve_metrics(self) -> int:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True)
        registry = metrics.supervisor_registry(
            connect(self.url, self.config.redis.cluster), self.config.keys, str(self.metrics_dir)
        )
        try:
            return metrics.serve(self.config.metrics.port, self.config.metrics.host, registry)
        except OSError as exc:
            log.warning(
                "Metrics port %d: %s; serving on a free port instead",
                self.config.metrics.port,
                exc.strerror,
            )
            return metrics.serve(0, self.config.metrics.host, registry)

    def start(self, child: Child) -> None:
        child.process = subprocess.Popen(
            child.command, env=self.env, preexec_fn=die_with_parent, start_new_session=True
        )
        child.started_at = time.monotonic()
        child.restart_at = None

    def watch(self) -> None:
        """Restart children that die, with backoff, until ``stop`` is set."""
        while not self.stop.is_set():
            now = time.monotonic()
            for child in self.children:
                if child.process is not None and child.process.poll() is not None:
                    code = child.process.returncode
                    mark_process_dead(child.process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
                    if code == EXIT_REFUSED:
                        log.error(
                            "Worker %s refused to run (exit %d, its reason above); stopping",
                            child.name,
                            code,
                        )
                        self.refused = child.name
                        self.stop.set()
                        return
                    if now - child.started_at >= HEALTHY_AFTER_S:
                        child.backoff_s = 1.0
                    log.warning(
                        "Worker %s exited with code %s; restarting in %.0fs",
                        child.name,
                        code,
                        child.backoff_s,
                    )
                    child.process = None
                    child.restart_at = now + child.backoff_s
                    child.backoff_s = min(child.backoff_s * 2, RESTART_BACKOFF_MAX_S)
                if (
                    child.process is None
                    and child.restart_at is not None
                    and now >= child.restart_at
                ):
                    self.start(child)
            self.stop.wait(0.2)

    def shutdown(self) -> None:
        """SIGTERM every child (they finish their batch and flush), SIGKILL what lingers."""
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "Worker %d did not stop in %.0fs; killing it", process.pid, STOP_GRACE_S
                )
                process.kill()
                process.wait()


def up(config: Config, demo: bool = False) -> int:
    url, embedded = choose_redis(config)
    supervisor = Supervisor(config, url, demo)

    def handler(signum: int, _frame: object) -> None:
        supervisor.stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        port = supervisor.serve_metrics()
        for child in supervisor.children:
            supervisor.start(child)
        _banner(config, url, embedded, port, supervisor)
        supervisor.watch()
        log.info("Stopping: waiting for workers to finish their batches")
        supervisor.shutdown()
    finally:
        if embedded is not None:
            embedded.stop()
            print(f"Embedded Redis stopped (its data stays in {embedded.data_dir}).", flush=True)
    return EXIT_REFUSED if supervisor.refused else 0


def _banner(
    config: Config, url: str, embedded: EmbeddedRedis | None, port: int, supervisor: Supervisor
) -> None:
    where = (
        f"embedded redis-server, data in {embedded.data_dir}; stops with `up`"
        if embedded
        else "configured"
    )
    names = ", ".join(child.name for child in supervisor.children if child.url is None)
    pages = "".join(
        f"  {child.name.capitalize():<8} {child.url}\n"
        for child in supervisor.children
        if child.url
    )
    print(
        "Logloom is up.\n"
        f"  Redis    {redact_url(url)} ({where})\n"
        f"  Workers  {names}\n"
        f"  Plugins  {', '.join(config.enabled_plugins())}\n"
        f"  Metrics  http://{config.metrics.host}:{port}/metrics\n"
        f"{pages}"
        f"  Send     {redis_cli(url)} "
        f"XADD {config.keys.partitions()[0].ingest} '*' level ERROR module AUTH message "
        '"bad password"\n'
        f"           or: logloom produce FILE\n"
        f"  Watch    logloom status · logloom dlq list\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )


def redis_cli(url: str) -> str:
    """The redis-cli command line that reaches ``url``; a password is asked for, not shown."""
    parts = urlsplit(url)
    words = ["redis-cli", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    if parts.scheme == "unix":
        words = ["redis-cli", "-s", parts.path]
    if parts.scheme == "rediss":
        query = dict(parse_qsl(parts.query))
        words.append("--tls")
        for argument, option in (
            ("ssl_ca_certs", "--cacert"),
            ("ssl_certfile", "--cert"),
            ("ssl_keyfile", "--key"),
        ):
            if query.get(argument):
                words += [option, shlex.quote(query[argument])]
    if parts.username:
        words += ["--user", shlex.quote(unquote(parts.username))]
    if parts.password:
        words.append("--askpass")
    return " ".join(words)
