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

from pipeline import manifest as manifests
from pipeline import signing
from pipeline.config import Config, PluginSettings
from pipeline.errors import PluginLoadError
from pipeline.health import GuardedPlugin
from pipeline.lang import plugin_defaults
from pipeline.plugin import Plugin
from pipeline.runtimes import c as c_runtime
from pipeline.runtimes import is_plugin_file, open_plugin_file
from pipeline.runtimes.process import host_command, load_in_child
from pipeline.runtimes.service import connect_service
from pipeline.sandbox import SandboxSpec

log = logging.getLogger("logloom.plugins")

SYSTEM_PLUGIN_DIR = Path("/usr/lib/logloom/plugins")
# Installed beside this package (site-packages/plugins/python, or the checkout's plugins/python).
# Found by path, not by importing ``plugins``, which a user's own directory of that name shadows.
BUNDLED_PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins" / "python"
BUNDLED_C_PLUGIN_DIR = BUNDLED_PLUGIN_DIR.parent / "c"  # the .so files `make plugins` builds
ENTRY_POINT_GROUP = "logloom.plugins"


@dataclass(frozen=True)
class Candidate:
    """A plugin found on disk, not yet imported."""

    name: str
    path: Path
    source: str = ""
    """Where it came from when not a directory scan: the distribution that registered it."""

    @property
    def config_file(self) -> Path:
        """``<name>.yaml`` beside a plugin file (for ``lib<name>.so``, ``lib<name>.yaml`` if there
        is one, else ``<name>.yaml``, CONTRACT §4); ``plugin.yaml`` inside a plugin package. A C
        library with neither uses the ``plugin.yaml`` beside it whose manifest names it (the
        directory ``logloom create-plugin --lang c`` makes)."""
        if self.path.is_dir():
            return self.path / "plugin.yaml"
        beside = self.path.with_suffix(".yaml")
        named = self.path.with_name(f"{name_of(self.path)}.yaml")
        if beside.is_file() or named.is_file():
            return beside if beside.is_file() else named
        project = self.path.with_name("plugin.yaml")
        if c_runtime.is_c_plugin(self.path) and project.is_file():
            try:
                declared = manifests.read(project)
            except PluginLoadError:
                declared = None
            if declared is not None and declared.name == name_of(self.path):
                return project
        return beside


def plugin_dirs(config: Config) -> list[Path]:
    dirs = [Path(p) for p in config.plugins.paths]
    if config.plugins.python.path:
        dirs.append(Path(config.plugins.python.path))
    dirs += [
        BUNDLED_PLUGIN_DIR,
        BUNDLED_C_PLUGIN_DIR,
        SYSTEM_PLUGIN_DIR,
        SYSTEM_PLUGIN_DIR / "python",
    ]
    return list(dict.fromkeys(dirs))


def scan(dirs: Iterable[Path]) -> Iterator[Candidate]:
    """Every plugin-looking file or package in ``dirs``, in order (duplicates included)."""
    for directory in dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.name.startswith(("_", ".")):
                continue
            if is_plugin_file(path):
                yield Candidate(name_of(path), path)


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
        dist = point.dist
        source = f"pip: {dist.metadata['Name']} {dist.version}" if dist is not None else "pip"
        path = origin.parent if origin.name == "__init__.py" else origin
        yield Candidate(point.name, path, source)


def name_of(path: Path) -> str:
    """The name a plugin is enabled by: the file name without suffix, ``lib`` dropped for C."""
    return c_runtime.name_from_file(path) if c_runtime.is_c_plugin(path) else path.stem


def find_candidates(config: Config) -> dict[str, Candidate]:
    """The first candidate per name, over every search location."""
    found: dict[str, Candidate] = {}
    for candidate in [*scan(plugin_dirs(config)), *entry_point_candidates()]:
        found.setdefault(candidate.name, candidate)
    return found


def plugin_config(candidate: Candidate, config: Config) -> dict[str, Any]:
    """The plugin's ``<name>.yaml`` with ``plugins.config.<name>`` from the main config on top."""
    loaded = manifests.load_yaml(candidate.config_file)
    settings = {key: value for key, value in loaded.items() if key != manifests.MANIFEST_KEY}
    settings.update(config.plugins.config.get(candidate.name, {}))
    return settings


def plugin_manifest(candidate: Candidate) -> manifests.Manifest | None:
    """The ``manifest:`` section of the plugin's YAML (:mod:`pipeline.manifest`), if any."""
    return manifests.read(candidate.config_file)


def run_mode(candidate: Candidate, config: Config, settings: PluginSettings) -> str:
    """``inprocess`` or ``isolated``: the plugin's own setting, else ``plugins.python.mode``
    for Python plugins (``subprocess`` is isolated), else in process; a sandbox is isolated."""
    if sandbox_spec(candidate, config, settings) is not None:
        return "isolated"
    if settings.mode is not None:
        return settings.mode
    is_python = not c_runtime.is_c_plugin(candidate.path)
    return "isolated" if is_python and config.plugins.python.mode == "subprocess" else "inprocess"


def sandbox_spec(
    candidate: Candidate, config: Config, settings: PluginSettings
) -> SandboxSpec | None:
    """The sandbox the plugin runs in: ``plugins.settings.<name>.sandbox``, else
    ``plugins.python.sandbox`` for Python plugins; None for none. ``restricted`` (per plugin,
    else ``plugins.python.restricted``) adds RestrictedPython and implies the sandbox."""
    python = config.plugins.python
    is_python = not c_runtime.is_c_plugin(candidate.path)
    restricted = python.restricted if settings.restricted is None else settings.restricted
    restricted = restricted and is_python
    wanted = settings.sandbox
    if wanted is None:
        declared = plugin_manifest(candidate)
        wanted = (python.sandbox and is_python) or bool(declared and declared.sandbox == "required")
    if not (wanted or restricted):
        return None
    return SandboxSpec(
        work_dir=str(Path(python.work_dir, candidate.name).resolve()),
        max_memory_mb=python.max_memory,
        max_cpu_s=python.max_cpu_s,
        max_processes=python.max_processes,
        user=python.sandbox_user,
        restricted=restricted,
        read_paths=(str(Path(config.lang.packs_dir).resolve()),),
    )


def timeout_ms(config: Config, settings: PluginSettings) -> int:
    return settings.timeout_ms or config.plugins.python.timeout


def load_candidate(
    candidate: Candidate, config: Config, types: Collection[str] | None = None
) -> Plugin | None:
    """Load one candidate with the runtime its file and settings call for; None if not of
    ``types``."""
    signing.verify(candidate.path, config.plugins)  # plugins.verify: before any of its code runs
    settings = config.plugins.settings.get(candidate.name, PluginSettings())
    plugin_settings = plugin_config(candidate, config)
    lang_settings = {**plugin_defaults(config.lang), **plugin_settings}
    declared = plugin_manifest(candidate)
    is_c = c_runtime.is_c_plugin(candidate.path)
    if declared is not None:
        manifests.check_runtime(declared, candidate.path, is_c)
        manifests.check_sandbox(declared, sandbox_spec(candidate, config, settings) is not None)
    if run_mode(candidate, config, settings) == "isolated":
        runtime = "c-isolated" if is_c else "python-subprocess"
        plugin = load_in_child(
            host_command(
                candidate.path,
                sandbox_spec(candidate, config, settings),
                config.plugins.python.max_memory,
            ),
            str(candidate.path),
            runtime,
            plugin_settings,
            timeout_ms(config, settings),
            types,
            lang_settings,
        )
        if plugin is not None and declared is not None:
            try:
                manifests.check_info(declared, plugin.info)
            except PluginLoadError:
                plugin.shutdown()
                raise
        return plugin
    opened = open_plugin_file(candidate.path, plugin_settings)
    if declared is not None:
        manifests.check_info(declared, opened.info)
    if types is not None and opened.info.type not in types:
        return None
    return opened.start(lang_settings if opened.info.type == "lang" else plugin_settings)


def load_one(
    name: str,
    config: Config,
    types: Collection[str] | None = None,
    candidates: Mapping[str, Candidate] | None = None,
) -> Plugin | None:
    """Load the plugin enabled as ``name`` (a configured service, else a file found by name);
    None if not of ``types``. PluginLoadError's message starts with the file at fault."""
    if name in config.plugins.services:
        service = config.plugins.services[name]
        settings = config.plugins.config.get(name, {})
        if service.type == "lang":
            settings = {**plugin_defaults(config.lang), **settings}
        return connect_service(name, service, settings, types)
    candidate = (find_candidates(config) if candidates is None else candidates).get(name)
    if candidate is None:
        where = ", ".join(str(d) for d in plugin_dirs(config))
        raise PluginLoadError(f"'{name}': not found in {where}")
    try:
        return load_candidate(candidate, config, types)
    except PluginLoadError as exc:
        raise PluginLoadError(f"'{candidate.path.name}': {exc}") from None


def load_plugins(
    config: Config, types: Iterable[str] | None = None, failures: list[str] | None = None
) -> list[GuardedPlugin]:
    """Every enabled plugin that loads, in chain order, each in its health guard; each failure
    is one ``[WARN] Failed to load plugin '<file>': <reason>`` line.

    ``types`` keeps only plugins of those types (a filter worker needs no sinks); ``failures``,
    if given, collects the failure lines too.
    """
    failures = [] if failures is None else failures
    wanted = set(types) if types is not None else None
    candidates = find_candidates(config)
    loaded: list[GuardedPlugin] = []
    for name in config.enabled_plugins():
        try:
            plugin = load_one(name, config, wanted, candidates)
        except PluginLoadError as exc:
            failures.append(f"Failed to load plugin {exc}")
            log.warning("%s", failures[-1])
            continue
        if plugin is not None:
            settings = config.plugins.settings.get(name, PluginSettings())
            loaded.append(GuardedPlugin(plugin, settings, timeout_ms(config, settings)))
    return loaded
