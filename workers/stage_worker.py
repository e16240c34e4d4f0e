"""``logloom worker --stage filter|sink``: one stage worker process. Run more to scale out.

SIGTERM or SIGINT: the current batch is finished, sinks flush, everything delivered is
acknowledged, plugins are shut down, exit 0. Whatever a killed worker leaves pending is taken
over by its peers after ``stages.claim_idle_ms``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence

import redis

from pipeline import metrics
from pipeline.config import Config, load_config
from pipeline.control import PluginControl
from pipeline.discovery import load_one, load_plugins
from pipeline.embedded import resolve_url
from pipeline.errors import ConfigError, PluginLoadError
from pipeline.health import GuardedPlugin
from pipeline.log import redact_url
from pipeline.plugin import Plugin
from pipeline.stages.filter import FilterStage
from pipeline.stages.runner import StageLoop, consumer_name
from pipeline.stages.sink import SinkStage
from pipeline.streams import connect
from pipeline.tap import TapSwitch

log = logging.getLogger("logloom.worker")

STAGES = ("filter", "sink")
PLUGIN_TYPES = {"filter": ("filter", "lang"), "sink": ("sink",)}
"""The plugin types each stage runs: a filter worker resolves lang_key too."""


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info(
            "Worker %d: %s received; finishing the current batch",
            os.getpid(),
            signal.Signals(signum).name,
        )
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _reloader(config: Config, stage: str) -> Callable[[str], Plugin | None]:
    """Loads one plugin again, from the config file as it is now (plugin settings may have
    changed too)."""

    def reload(name: str) -> Plugin | None:
        try:
            fresh = config if config.source == "<defaults>" else load_config(config.source)
        except ConfigError as exc:
            raise PluginLoadError(str(exc)) from None
        return load_one(name, fresh, PLUGIN_TYPES[stage])

    return reload


def run_worker(
    config: Config, stage: str, metrics_port: int | None = 0, only: Sequence[str] = ()
) -> int:
    """Run one stage until signalled; the exit code. ``only`` limits a sink worker to some sinks."""
    stop = threading.Event()
    _stop_on_signals(stop)
    url = resolve_url(config)
    client = connect(url)
    log.info("Worker %d: Redis %s", os.getpid(), redact_url(url))
    plugins = load_plugins(config, types=PLUGIN_TYPES[stage])
    if only:
        plugins = [plugin for plugin in plugins if plugin.name in only]
    metrics.serve_worker(metrics_port, config.metrics.host)
    worker = consumer_name()
    tap = TapSwitch(worker)  # set when a `logloom tap` asks, read by the stages
    control = PluginControl(
        client,
        config.keys,
        plugins,
        _reloader(config, stage),
        worker,
        stage,
        lang_packs_dir=config.lang.packs_dir,
        tap=tap,
    )
    control.start(stop)
    try:
        if stage == "filter":
            filters = [plugin for plugin in plugins if plugin.info.type == "filter"]
            langs = [plugin for plugin in plugins if plugin.info.type == "lang"]
            if not filters:
                log.warning("Filter worker: no filter plugin loaded; every entry passes")
            loop = StageLoop(
                client,
                FilterStage(config, filters, langs, tap),
                config.stages,
                config.stages.batch_size,
            )
            log.info(
                "Filter worker %d: chain %s, %s, reading %s",
                os.getpid(),
                " → ".join(p.name for p in filters) or "(empty)",
                f"lang {', '.join(p.name for p in langs)} into {', '.join(config.lang.locales)}"
                if langs
                else "no lang plugin",
                config.keys.ingest,
            )
            loop.run(stop)
            return 0
        return _run_sinks(config, client, plugins, stop, tap)
    finally:
        for plugin in plugins:
            try:
                plugin.shutdown()
            except Exception as exc:
                log.warning("Plugin '%s': plugin_shutdown() raised %s", plugin.name, exc)


def _run_sinks(
    config: Config,
    client: redis.Redis,
    sinks: Sequence[GuardedPlugin],
    stop: threading.Event,
    tap: TapSwitch,
) -> int:
    """One thread per sink, each with its own group and buffer; exit 1 if one of them crashed."""
    if not sinks:
        log.error("Sink worker: no sink plugin loaded; nothing to do (see plugins.enabled)")
        return 1
    crashed: list[str] = []

    def run_one(loop: StageLoop) -> None:
        try:
            loop.run(stop)
        except Exception:
            log.exception("Stage %s crashed; stopping the worker", loop.stage.name)
            crashed.append(loop.stage.name)
            stop.set()

    threads = []
    for sink in sinks:
        stage = SinkStage(config, sink, stop, tap)
        loop = StageLoop(client, stage, config.stages, config.sink.batch_size)
        threads.append(threading.Thread(target=run_one, args=(loop,), name=stage.name))
    log.info(
        "Sink worker %d: %s, reading %s",
        os.getpid(),
        ", ".join(s.name for s in sinks),
        config.keys.filtered,
    )
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    return 1 if crashed else 0
