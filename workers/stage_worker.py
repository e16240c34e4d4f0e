"""``logloom worker --stage filter|sink|direct``: one stage worker process. Run more to scale
out.

SIGTERM or SIGINT: the current batch is finished, sinks flush, everything delivered is
acknowledged, plugins are shut down, exit 0. Whatever a killed worker leaves pending is taken
over by its peers after ``stages.claim_idle_ms``.

With ``redis.partitions`` > 1 a worker serves every partition (or those of ``--partitions``),
each with its own StageLoop thread and consumer; workers serving the same partition share it
through its consumer group. The threads take turns calling a plugin (:class:`GuardedPlugin`).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence

import redis

from pipeline import metrics, streams
from pipeline.config import Config, load_config
from pipeline.control import PluginControl
from pipeline.discovery import load_one, load_plugins
from pipeline.embedded import resolve_url
from pipeline.errors import ConfigError, PluginLoadError
from pipeline.health import GuardedPlugin
from pipeline.keys import Keys
from pipeline.log import redact_url
from pipeline.plugin import Plugin
from pipeline.stages.direct import DirectStage
from pipeline.stages.filter import FilterStage
from pipeline.stages.runner import StageLoop, consumer_name
from pipeline.stages.sink import SinkStage
from pipeline.streams import connect
from pipeline.tap import TapSwitch

log = logging.getLogger("logloom.worker")

STAGES = ("filter", "sink")
PLUGIN_TYPES = {
    "filter": ("filter", "lang"),
    "sink": ("sink",),
    "direct": ("filter", "lang", "sink"),
}
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


def owned_partitions(config: Config, chosen: Sequence[int] | None) -> list[Keys]:
    """The partitions a worker serves: ``chosen`` (``--partitions``), else all of them."""
    parts = config.keys.partitions()
    if chosen is None:
        return parts
    wrong = sorted({index for index in chosen if not 0 <= index < len(parts)})
    if wrong:
        raise ConfigError(
            f"--partitions: no partition {', '.join(map(str, wrong))} (redis.partitions is "
            f"{len(parts)}: 0 to {len(parts) - 1})"
        )
    return [parts[index] for index in dict.fromkeys(chosen)]


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a stage loop: from here on, a worker
    allocates a few container objects per entry (a dict, its Entry, tuples) and almost none
    form cycles. CPython's defaults collect the young generation every 700 allocations, about
    every hundred entries, and now and then walk every object the worker loaded at startup.
    Those are frozen (never walked again) and the young generation collected every 20,000
    allocations: 3.9 → 3.3 µs of CPU an entry in a direct worker (README "Performance"). The
    price: what a plugin reload replaces of the frozen objects is never collected if it holds
    a reference cycle (a module's worth per first reload)."""
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def run_worker(
    config: Config,
    stage: str,
    metrics_port: int | None = 0,
    only: Sequence[str] = (),
    partitions: Sequence[int] | None = None,
) -> int:
    """Run one stage until signalled; the exit code. ``only`` limits a sink or direct worker to
    some sinks, ``partitions`` the worker to some partitions."""
    parts = owned_partitions(config, partitions)
    stop = threading.Event()
    _stop_on_signals(stop)
    url = resolve_url(config)
    client = connect(url, config.redis.cluster)
    log.info("Worker %d: Redis %s", os.getpid(), redact_url(url))
    failures: list[str] = []
    plugins = load_plugins(config, types=PLUGIN_TYPES[stage], failures=failures)
    if only:
        plugins = [p for p in plugins if p.name in only or p.info.type != "sink"]
    if stage == "direct" and (refusal := _direct_refusal(client, plugins, parts)):
        for plugin in plugins:
            plugin.shutdown()
        if failures and not any(plugin.info.type == "sink" for plugin in plugins):
            # Perhaps the sink's destination is down at its init: worth starting again.
            log.error("Direct worker: no sink loaded (%s); exiting", failures[0])
            return 1
        log.error("Direct worker: %s", refusal)
        return 2
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
    _tune_gc()
    try:
        if stage == "filter":
            filters = [plugin for plugin in plugins if plugin.info.type == "filter"]
            langs = [plugin for plugin in plugins if plugin.info.type == "lang"]
            if not filters:
                log.warning("Filter worker: no filter plugin loaded; every entry passes")
            loops = [
                StageLoop(
                    client,
                    FilterStage(config, filters, langs, tap, keys=part),
                    config.stages,
                    config.stages.batch_size,
                )
                for part in parts
            ]
            log.info(
                "Filter worker %d: chain %s, %s, reading %s",
                os.getpid(),
                " → ".join(p.name for p in filters) or "(empty)",
                f"lang {', '.join(p.name for p in langs)} into {', '.join(config.lang.locales)}"
                if langs
                else "no lang plugin",
                ", ".join(part.ingest for part in parts),
            )
            if len(loops) == 1:
                loops[0].run(stop)
                return 0
            return _run_loops(loops, stop)
        return _run_sinks(config, client, plugins, stop, tap, parts, direct=stage == "direct")
    finally:
        for plugin in plugins:
            try:
                plugin.shutdown()
            except Exception as exc:
                log.warning("Plugin '%s': plugin_shutdown() raised %s", plugin.name, exc)


def _run_sinks(
    config: Config,
    client: redis.Redis,
    plugins: Sequence[GuardedPlugin],
    stop: threading.Event,
    tap: TapSwitch,
    parts: Sequence[Keys],
    direct: bool = False,
) -> int:
    """One thread per sink and partition, each with its own group and buffer; ``direct``: each
    running the filter chain first, on the ingest stream (pipeline.stages.direct)."""
    filters = [plugin for plugin in plugins if plugin.info.type == "filter"]
    langs = [plugin for plugin in plugins if plugin.info.type == "lang"]
    sinks = [plugin for plugin in plugins if plugin.info.type == "sink"]
    kind = "Direct" if direct else "Sink"
    if not sinks:
        log.error("%s worker: no sink plugin loaded; nothing to do (see plugins.enabled)", kind)
        return 1

    def stage(sink: GuardedPlugin, part: Keys) -> SinkStage | DirectStage:
        if direct:
            return DirectStage(config, filters, langs, sink, stop, tap, keys=part)
        return SinkStage(config, sink, stop, tap, keys=part)

    loops = [
        StageLoop(client, stage(sink, part), config.stages, config.sink.batch_size)
        for sink in sinks
        for part in parts
    ]
    chain = (" → ".join(p.name for p in filters) or "(empty)") + " then " if direct else ""
    log.info(
        "%s worker %d: %s%s, reading %s",
        kind,
        os.getpid(),
        chain,
        ", ".join(s.name for s in sinks),
        ", ".join(part.ingest if direct else part.filtered for part in parts),
    )
    return _run_loops(loops, stop)


def _direct_refusal(
    client: redis.Redis, plugins: Sequence[GuardedPlugin], parts: Sequence[Keys]
) -> str | None:
    """Why a direct worker must not start, or None. A deployment runs one direct sink, as the
    only reader of the ingest stream: each reader judges every entry, so a second one (another
    direct sink, or the filter stage) would write every dead letter again, and a replayed
    letter would reach each of them."""
    sinks = [plugin.name for plugin in plugins if plugin.info.type == "sink"]
    if len(sinks) != 1:
        found = ", ".join(sinks) or "none"
        return f"runs exactly one sink (enabled: {found}); choose it with --sink NAME"
    own = Keys.direct_group(sinks[0])
    for part in parts:
        others = [
            stats.group for stats in streams.group_stats(client, part.ingest) if stats.group != own
        ]
        if others:
            return (
                f"{part.ingest} has other readers ({', '.join(others)}); a direct worker must be "
                f"the only one, or entries would be judged and dead-lettered twice. Once their "
                f"entries are done: redis-cli XGROUP DESTROY {part.ingest} {others[0]}"
            )
    return None


def _run_loops(loops: Sequence[StageLoop], stop: threading.Event) -> int:
    """Each loop in its own thread until ``stop``; exit 1 if one of them crashed (which stops
    the others)."""
    crashed: list[str] = []

    def run_one(loop: StageLoop) -> None:
        try:
            loop.run(stop)
        except Exception:
            log.exception("Stage %s crashed; stopping the worker", loop.stage.name)
            crashed.append(loop.stage.name)
            stop.set()

    threads = [
        threading.Thread(
            target=run_one, args=(loop,), name=f"{loop.stage.name} {loop.stage.streams[0]}"
        )
        for loop in loops
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    return 1 if crashed else 0
