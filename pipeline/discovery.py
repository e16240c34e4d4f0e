"""Finding, loading and validating plugins (design §4).

Plugins are looked for, in this order, in the configured ``plugins.paths``, in
``plugins.python.path``, in the bundled ``plugins/python/`` and in ``/usr/lib/logloom/plugins/``
(and its ``python/``), then among installed packages' ``logloom.plugins`` entry points. The first
candidate whose file name matches an enabled name wins, so a user's plugin can shadow a bundled
one. A plugin that fails to load costs one ``[WARN] Failed to load plugin '<file>': <reason>``
line; the worker goes on without it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Config
from pipeline.errors import PluginLoadError
from pipeline.plugin import Plugin
from pipeline.runtimes.python import load_python_plugin

log = logging.getLogger("logloom.plugins")

SYSTEM_PLUGIN_DIR = Path("/usr/lib/logloom/plugins")
# Installed beside this package (site-packages/plugins/python, or the checkout's plugins/python).
# Found by path, not by importing ``plugins``, which a user's own directory of that name shadows.
BUNDLED_PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins" / "python"
ENTRY_POINT_GROUP = "logloom.plugins"


@dataclass(frozen=True)
class Candidate:
    """A plugin found on disk, not yet imported."""

    name: str
    path: Path

    @property
    def config_file(self) -> Path:
        """``<name>.yaml`` beside a plugin file; ``plugin.yaml`` inside a plugin package."""
        if self.path.is_dir():
            return self.path / "plugin.yaml"
        return self.path.with_suffix(".yaml")


def plugin_dirs(config: Config) -> list[Path]:
    dirs = [Path(p) for p in config.plugins.paths]
    if config.plugins.python.path:
        dirs.append(Path(config.plugins.python.path))
    dirs += [BUNDLED_PLUGIN_DIR, SYSTEM_PLUGIN_DIR, SYSTEM_PLUGIN_DIR / "python"]
    return list(dict.fromkeys(dirs))


def scan(dirs: Iterable[Path]) -> Iterator[Candidate]:
    """Every plugin-looking file or package in ``dirs``, in order (duplicates included)."""
    for directory in dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.name.startswith(("_", ".")):
                continue
            if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").is_file()):
                yield Candidate(path.stem, path)


def entry_point_candidates() -> Iterator[Candidate]:
    """Plugins that installed packages register under the ``logloom.plugins`` entry point."""
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = importlib.util.find_spec(point.module)
        except (ImportError, ValueError):
            continue
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        yield Candidate(point.name, origin.parent if origin.name == "__init__.py" else origin)


def find_candidates(config: Config) -> dict[str, Candidate]:
    """The first candidate per name, over every search location."""
    found: dict[str, Candidate] = {}
    for candidate in [*scan(plugin_dirs(config)), *entry_point_candidates()]:
        found.setdefault(candidate.name, candidate)
    return found


def plugin_config(candidate: Candidate, config: Config) -> dict[str, Any]:
    """The plugin's ``<name>.yaml`` with ``plugins.config.<name>`` from the main config on top."""
    settings: dict[str, Any] = {}
    if candidate.config_file.is_file():
        try:
            loaded = yaml.safe_load(candidate.config_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise PluginLoadError(f"bad config {candidate.config_file}: {exc}") from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise PluginLoadError(f"config {candidate.config_file} is not a mapping")
        settings.update(loaded or {})
    settings.update(config.plugins.config.get(candidate.name, {}))
    return settings


def load_candidate(
    candidate: Candidate, config: Config, types: Collection[str] | None = None
) -> Plugin | None:
    """Load one candidate with the runtime its file calls for; None if not of ``types``."""
    if candidate.path.suffix == ".py" or candidate.path.is_dir():
        return load_python_plugin(candidate.path, plugin_config(candidate, config), types)
    raise PluginLoadError(f"no runtime for '{candidate.path.suffix}' files")


def load_plugins(
    config: Config, types: Iterable[str] | None = None, failures: list[str] | None = None
) -> list[Plugin]:
    """Every enabled plugin that loads, in chain order; each failure is one [WARN] line.

    ``types`` keeps only plugins of those types (a filter worker needs no sinks); ``failures``,
    if given, collects the failure lines too.
    """
    failures = [] if failures is None else failures
    wanted = set(types) if types is not None else None
    candidates = find_candidates(config)
    loaded: list[Plugin] = []
    for name in config.enabled_plugins():
        candidate = candidates.get(name)
        if candidate is None:
            where = ", ".join(str(d) for d in plugin_dirs(config))
            failures.append(f"Failed to load plugin '{name}': not found in {where}")
            log.warning("%s", failures[-1])
            continue
        try:
            plugin = load_candidate(candidate, config, wanted)
        except PluginLoadError as exc:
            failures.append(f"Failed to load plugin '{candidate.path.name}': {exc}")
            log.warning("%s", failures[-1])
            continue
        if plugin is not None:
            loaded.append(plugin)
    return loaded
