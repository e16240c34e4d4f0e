"""Language packs, hot-reloaded (design §6.3): ``resolve(lang_key, locale)`` from YAML files.

Each ``<packs_dir>/<locale>.yaml`` maps keys (nested or dotted) to texts with ``{name}``
placeholders; ``packs_dir`` is ``lang.packs_dir`` of the main config unless this plugin's own
config sets it. The directory is watched (watchfiles): an edited, added or removed pack is in
use within a second, and ``plugin_generation()`` tells the worker to drop what it cached. A
malformed file is reported with its file and line, and that locale's previous good pack stays
in use. At start a malformed pack is an error: the plugin does not load, and ``logloom
validate`` names the file and line.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pipeline.errors import LangPackError
from pipeline.langpacks import locale_of, read_pack, read_packs

PLUGIN_INFO = {
    "name": "lang_hot_reload",
    "version": "1.0.0",
    "type": "lang",
    "capability": ["text", "hot_reload"],
    "author": "Logloom Team",
    "description": "Texts for lang_key from YAML language packs, reloaded when they change",
    "mode": "sync",
}

log = logging.getLogger("logloom.plugins.lang_hot_reload")
IDLE_WAKEUP_MS = 200
"""The watcher wakes this often when nothing changes (the first wake-up says it is in place)."""
READY_TIMEOUT_S = 5.0


class Packs:
    """The packs in use, swapped whole on every change (readers never see half a reload)."""

    def __init__(self, directory: Path, default_locale: str) -> None:
        self.directory = directory
        self.default_locale = default_locale
        self.texts: dict[str, dict[str, str]] = read_packs(directory)
        self.generation = 0
        self.stop = threading.Event()
        self.watcher: threading.Thread | None = None

    def resolve(self, lang_key: str, locale: str | None) -> str | None:
        pack = self.texts.get(locale or self.default_locale)
        return None if pack is None else pack.get(lang_key)

    def watch(self, debounce_ms: int) -> None:
        """Watch the directory from a thread; back once the watch is in place."""
        ready = threading.Event()
        self.watcher = threading.Thread(
            target=self._watch, args=(debounce_ms, ready), name="lang-packs", daemon=True
        )
        self.watcher.start()
        ready.wait(timeout=READY_TIMEOUT_S)

    def _watch(self, debounce_ms: int, ready: threading.Event) -> None:
        from watchfiles import watch

        def is_pack(_change: object, path: str) -> bool:
            return locale_of(path) is not None

        try:
            for changes in watch(
                self.directory,
                watch_filter=is_pack,
                debounce=debounce_ms,
                step=50,
                stop_event=self.stop,
                raise_interrupt=False,
                recursive=False,
                rust_timeout=IDLE_WAKEUP_MS,
                yield_on_timeout=True,
            ):
                if not ready.is_set():  # the first wake-up: the watch is in place now
                    self.reload(self._all_paths())  # what changed before it was
                    ready.set()
                if changes:
                    self.reload({Path(path) for _, path in changes})
        except Exception as exc:  # e.g. no inotify in a sandbox: packs stay as loaded
            log.error("Language packs in %s: no longer watched: %s", self.directory, exc)
        finally:
            ready.set()

    def _all_paths(self) -> set[Path]:
        known = {self.directory / f"{locale}.yaml" for locale in self.texts}
        return known | {path for path in self.directory.glob("*.yaml")}

    def reload(self, paths: set[Path]) -> None:
        """Read the changed packs; a malformed one keeps its locale's previous texts."""
        texts = dict(self.texts)
        changed = False
        for path in sorted(paths):
            locale = locale_of(path)
            if locale is None or path.parent.resolve() != self.directory.resolve():
                continue
            if not path.exists():
                if texts.pop(locale, None) is not None:
                    changed = True
                    log.info("Language pack %s removed; %s has no texts now", path, locale)
                continue
            try:
                fresh = read_pack(path)
            except LangPackError as exc:
                log.error("Language pack %s; the previous %s texts stay in use", exc, locale)
                continue
            if fresh != texts.get(locale):
                texts[locale] = fresh
                changed = True
                log.info("Language pack %s reloaded (%d keys)", path, len(fresh))
        if changed:
            self.texts = texts
            self.generation += 1


packs: Packs | None = None


def plugin_init(config: dict[str, Any]) -> int:
    global packs
    directory = Path(str(config.get("packs_dir") or "config/lang"))
    packs = Packs(directory, str(config.get("default_locale") or "en"))
    if config.get("watch", True):
        packs.watch(int(config.get("debounce_ms", 200)))
    return 0


def resolve(lang_key: str, locale: str | None = None) -> str | None:
    """The text of ``lang_key`` in exactly ``locale`` (None: the default locale), or None."""
    return None if packs is None else packs.resolve(lang_key, locale)


def plugin_process(entry: dict[str, Any]) -> str | None:
    return resolve(entry.get("lang_key", ""), entry.get("locale"))


def plugin_generation() -> int:
    """Changes whenever the texts do: the worker drops its cached texts then."""
    return -1 if packs is None else packs.generation


def plugin_shutdown() -> None:
    global packs
    if packs is not None:
        packs.stop.set()
        if packs.watcher is not None:
            packs.watcher.join(timeout=2.0)
        packs = None
