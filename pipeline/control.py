"""Run-time control of plugins in running workers (design §4.4, §5.5.1).

``logloom plugins disable|enable|reload NAME`` records the wish in Redis (disabled plugins stay
disabled for workers started later) and publishes it on the control channel, which every worker
listens to: it reaches them within a second, without a restart. Editing a Python plugin's file
reloads it too (hot reload, watched with ``watchfiles``). Each worker also publishes its
plugins' state and counters every few seconds, which ``logloom plugins list`` shows.

Applying a change never races a call: the listener only sets flags, and a reload is carried out
by the stage's own thread before its next call (:meth:`GuardedPlugin.call_batch`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.cluster import RedisCluster

from pipeline.health import GuardedPlugin
from pipeline.keys import Keys
from pipeline.langpacks import locale_of
from pipeline.plugin import Plugin
from pipeline.tap import TapSwitch

log = logging.getLogger("logloom.control")

ACTIONS = ("disable", "enable", "reload")
REPORT_INTERVAL_S = 2.0
REPORT_TTL_S = 10
PYTHON_SUFFIXES = (".py", ".yaml")


def send(client: redis.Redis, keys: Keys, action: str, plugin: str) -> int:
    """Record and publish one action; the number of workers listening."""
    if isinstance(client, RedisCluster):  # no PUBLISH in a cluster's pipelines: one by one
        if action in ("disable", "enable"):
            change = client.sadd if action == "disable" else client.srem
            change(keys.disabled_plugins, plugin)
        message = orjson.dumps({"action": action, "plugin": plugin})
        return int(client.publish(keys.control, message))
    pipe = client.pipeline(transaction=True)
    if action == "disable":
        pipe.sadd(keys.disabled_plugins, plugin)
    elif action == "enable":
        pipe.srem(keys.disabled_plugins, plugin)
    pipe.publish(keys.control, orjson.dumps({"action": action, "plugin": plugin}))
    return int(pipe.execute()[-1])


def disabled_plugins(client: redis.Redis, keys: Keys) -> set[str]:
    members = client.smembers(keys.disabled_plugins)
    return {name.decode() if isinstance(name, bytes) else str(name) for name in members}


def worker_reports(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """What every live worker last said of its plugins."""
    reports = []
    for key in client.scan_iter(match=keys.worker_report("*"), count=1000):
        raw = client.get(key)
        if raw:
            reports.append(orjson.loads(raw))
    return sorted(reports, key=lambda report: str(report.get("worker")))


WATCH_TICK_MS = 200
WATCH_READY_WAIT_S = 5.0


class PluginControl:
    """A worker's listener: control messages, plugin file changes, and the periodic report."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        plugins: Sequence[GuardedPlugin],
        reload: Callable[[str], Plugin | None],
        worker: str,
        stage: str,
        lang_packs_dir: str | None = None,
        tap: TapSwitch | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.plugins = {plugin.name: plugin for plugin in plugins}
        self.reload = reload
        self.worker = worker
        self.stage = stage
        self.lang_packs_dir = Path(lang_packs_dir).resolve() if lang_packs_dir else None
        self.threads: list[threading.Thread] = []
        self.tap = tap
        self.watching = threading.Event()  # set once a change on disk can no longer be missed

    def start(self, stop: threading.Event) -> None:
        """Start listening and watching; returns once the file watcher is in place (or after
        WATCH_READY_WAIT_S), so a file changed after the worker says it is ready is seen."""
        self.apply_disabled()
        for target in (self._listen, self._watch_files):
            thread = threading.Thread(
                target=target, args=(stop,), daemon=True, name=target.__name__
            )
            thread.start()
            self.threads.append(thread)
        self.watching.wait(WATCH_READY_WAIT_S)

    def apply_disabled(self) -> None:
        """Catch up with the recorded state (at start, and after a lost connection)."""
        disabled = disabled_plugins(self.client, self.keys)
        for name, plugin in self.plugins.items():
            wanted = name not in disabled
            if plugin.enabled != wanted:
                plugin.enabled = wanted
                log.info("Plugin '%s' %s in this worker", name, "enabled" if wanted else "disabled")

    def apply(self, message: bytes) -> None:
        try:
            order = orjson.loads(message)
            action, name = order["action"], order["plugin"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            order, action, name = None, None, None
        if not isinstance(action, str) or not isinstance(name, str):
            log.warning("Ignoring a malformed control message: %r", message[:200])
            return
        if action == "tap":  # a tap client asks for this stage's decisions (pipeline.tap)
            stage = order.get("stage") if isinstance(order, dict) else None
            if self.tap is not None and isinstance(stage, str):
                self.tap.request(stage)
            return
        plugin = self.plugins.get(name)
        if plugin is None or action not in ACTIONS:
            return
        if action == "reload":
            self._request_reload(name)
            return
        plugin.enabled = action == "enable"
        log.info("Plugin '%s' %sd in this worker", name, action)

    def _request_reload(self, name: str) -> None:
        def load() -> Plugin | None:
            return self.reload(name)

        self.plugins[name].request_reload(load)
        log.info("Plugin '%s': reload requested", name)

    def report(self) -> None:
        data = {
            "worker": self.worker,
            "stage": self.stage,
            "plugins": [plugin.snapshot() for plugin in self.plugins.values()],
        }
        self.client.set(self.keys.worker_report(self.worker), orjson.dumps(data), ex=REPORT_TTL_S)

    def _listen(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                with pubsub:
                    pubsub.subscribe(self.keys.control)
                    self.apply_disabled()  # whatever was sent while we were not listening
                    backoff = 0.5
                    while not stop.is_set():
                        self.report()
                        message = pubsub.get_message(timeout=REPORT_INTERVAL_S)
                        while message is not None:
                            self.apply(message["data"])
                            message = pubsub.get_message(timeout=0)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("Plugin control: Redis unavailable (%s); retrying", exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self.client.delete(self.keys.worker_report(self.worker))

    def _watch_files(self, stop: threading.Event) -> None:
        """Reload a Python plugin when its file (or its YAML) changes on disk, and the lang
        plugins that do not watch ``lang.packs_dir`` themselves when a pack there changes."""
        from watchfiles import watch

        watched = {
            Path(plugin.origin).resolve(): name
            for name, plugin in self.plugins.items()
            if plugin.runtime.startswith("python") and Path(plugin.origin).exists()
        }
        by_stem = {(path.parent, path.stem): name for path, name in watched.items()}
        directories = {path.parent for path in watched}
        packs = self.lang_packs_dir
        if packs is not None and packs.is_dir() and self._pack_readers():
            directories.add(packs)
        if not directories:
            self.watching.set()
            return
        for changes in watch(
            *directories, stop_event=stop, debounce=200, raise_interrupt=False,
            yield_on_timeout=True, rust_timeout=WATCH_TICK_MS,
        ):  # fmt: skip
            self.watching.set()  # the first answer, changes or a timeout, comes from a watcher
            reloads: dict[str, str] = {}
            for _, changed in changes:
                path = Path(changed)
                name = by_stem.get((path.parent, path.stem))
                if name is not None and path.suffix in PYTHON_SUFFIXES:
                    reloads[name] = path.name
                if path.parent == packs and locale_of(path) is not None:
                    reloads.update(dict.fromkeys(self._pack_readers(), path.name))
            for name, file in reloads.items():
                log.info("Plugin '%s': %s changed; reloading", name, file)
                self._request_reload(name)

    def _pack_readers(self) -> list[str]:
        """The lang plugins that cannot say their texts changed (``plugin_generation``): those
        in another process, C ones, simple Python ones. A reload makes them read packs anew
        (and keeps the running one if the new one fails to load)."""
        return [
            name
            for name, plugin in self.plugins.items()
            if plugin.info.type == "lang" and getattr(plugin.plugin, "generation", None) is None
        ]
