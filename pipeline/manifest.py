"""The plugin manifest: the ``manifest:`` section of a plugin's ``plugin.yaml`` (design §8.4, §9.2).

A plugin's YAML file (``plugin.yaml`` in a package, ``<name>.yaml`` beside a file) has always
been its *config*: every top-level key reaches ``plugin_init``. The manifest is one reserved
top-level key, ``manifest``, that describes the plugin instead of configuring it, so existing
config files stay valid and a file may hold both::

    manifest:
      name: filter_no_health       # required; as in plugins.enabled
      version: 1.0.0               # required; SemVer
      type: filter                 # required; filter | sink | ai | lang
      runtime: python              # python | c | service (default python)
      entry_point: filter_no_health  # python: the module; c: the library file; service: address
      capabilities: [text]
      api: ">=1.0,<2"              # the plugin API range it supports (PEP 440)
      sandbox: optional            # optional | required | unsupported
      network: false               # it opens connections (a sandbox forbids them)
    path: /health                  # everything else: the plugin's config, as before

Discovery reads it before any of the plugin's code runs: an API range this Logloom does not
offer refuses the plugin at once, ``sandbox: required`` runs it sandboxed whatever the settings
say, and ``sandbox: unsupported`` or ``network: true`` refuses to run it in a sandbox. After the
plugin is opened, its own metadata (``PLUGIN_INFO``, ``plugin_info()``) must agree with the
manifest's name, version and type. ``logloom plugins validate PATH`` checks all of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PluginLoadError
from pipeline.plugin import PLUGIN_TYPES, SEMVER, PluginInfo, check_api

MANIFEST_KEY = "manifest"
RUNTIMES = ("python", "c", "service")
SANDBOX_NEEDS = ("optional", "required", "unsupported")
KEYS = {
    "name",
    "version",
    "type",
    "runtime",
    "entry_point",
    "capabilities",
    "api",
    "sandbox",
    "network",
    "author",
    "description",
    "license",
}
NAME_PREFIXES = {kind: f"{kind}_" for kind in PLUGIN_TYPES}
"""Design §9.2: a plugin's name starts with its type (``filter_*``, ``sink_*``, ``ai_*``,
``lang_*``). ``logloom create-plugin`` asks for the type as a word of the name and suggests the
prefix; ``logloom plugins test`` notes a name without it; existing plugins are not held to it."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    type: str
    runtime: str = "python"
    entry_point: str = ""
    capabilities: tuple[str, ...] = ()
    api: str | None = None
    sandbox: str = "optional"
    network: bool = False
    author: str = ""
    description: str = ""
    license: str = ""
    source: str = ""


def parse(raw: object, source: str) -> Manifest:
    """A Manifest from the ``manifest:`` mapping; PluginLoadError names the key at fault."""
    if not isinstance(raw, Mapping):
        raise PluginLoadError(f"{source}: manifest is a {type(raw).__name__}, not a mapping")
    unknown = sorted(str(key) for key in raw if key not in KEYS)
    if unknown:
        known = ", ".join(sorted(KEYS))
        raise PluginLoadError(f"{source}: manifest.{unknown[0]}: unknown key (known: {known})")
    missing = [key for key in ("name", "version", "type") if not raw.get(key)]
    if missing:
        raise PluginLoadError(f"{source}: manifest lacks {', '.join(missing)}")

    def text(key: str, default: str = "") -> str:
        value = raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str):
            raise PluginLoadError(f"{source}: manifest.{key}: expected a string, got {value!r}")
        return value

    version = str(raw["version"])
    if not SEMVER.match(version):
        raise PluginLoadError(f"{source}: manifest.version {version!r} is not SemVer")
    kind = text("type")
    if kind not in PLUGIN_TYPES:
        raise PluginLoadError(f"{source}: manifest.type {kind!r}: one of {', '.join(PLUGIN_TYPES)}")
    runtime = text("runtime", "python")
    if runtime not in RUNTIMES:
        raise PluginLoadError(
            f"{source}: manifest.runtime {runtime!r}: one of {', '.join(RUNTIMES)}"
        )
    sandbox = text("sandbox", "optional")
    if sandbox not in SANDBOX_NEEDS:
        raise PluginLoadError(
            f"{source}: manifest.sandbox {sandbox!r}: one of {', '.join(SANDBOX_NEEDS)}"
        )
    capabilities = raw.get("capabilities") or []
    if isinstance(capabilities, str):
        capabilities = [part.strip() for part in capabilities.split(",") if part.strip()]
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise PluginLoadError(f"{source}: manifest.capabilities: expected a list of strings")
    network = raw.get("network", False)
    if not isinstance(network, bool):
        raise PluginLoadError(f"{source}: manifest.network: expected true or false")
    api = raw.get("api")
    try:
        check_api(api)
    except PluginLoadError as exc:
        raise PluginLoadError(f"{source}: manifest: {exc}") from None
    return Manifest(
        name=text("name"),
        version=version,
        type=kind,
        runtime=runtime,
        entry_point=text("entry_point"),
        capabilities=tuple(capabilities),
        api=None if api is None else str(api),
        sandbox=sandbox,
        network=network,
        author=text("author"),
        description=text("description"),
        license=text("license"),
        source=source,
    )


def load_yaml(path: Path) -> dict[str, Any]:
    """A plugin's YAML file as a mapping ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PluginLoadError(f"bad config {path}: {exc}") from None
    if loaded is not None and not isinstance(loaded, Mapping):
        raise PluginLoadError(f"config {path} is not a mapping")
    return dict(loaded or {})


def split(loaded: Mapping[str, Any], source: str) -> tuple[Manifest | None, dict[str, Any]]:
    """The manifest of a plugin's YAML (None without one) and the rest: its config."""
    config = {key: value for key, value in loaded.items() if key != MANIFEST_KEY}
    if MANIFEST_KEY not in loaded:
        return None, config
    return parse(loaded[MANIFEST_KEY], source), config


def read(path: Path) -> Manifest | None:
    """The manifest in the YAML file at ``path``; None if it has none."""
    return split(load_yaml(path), str(path))[0]


def check_info(manifest: Manifest, info: PluginInfo) -> None:
    """The plugin's own metadata must say what its manifest says."""
    for key in ("name", "version", "type"):
        declared, actual = getattr(manifest, key), getattr(info, key)
        if declared != actual:
            raise PluginLoadError(
                f"manifest says {key} {declared!r}, the plugin's metadata says {actual!r}"
            )


def check_runtime(manifest: Manifest, path: Path, is_c: bool) -> None:
    runtime = "c" if is_c else "python"
    if manifest.runtime != runtime:
        raise PluginLoadError(
            f"manifest says runtime {manifest.runtime!r}, {path.name} is {runtime}"
        )


def check_sandbox(manifest: Manifest, sandboxed: bool) -> None:
    """Refuse to run a plugin in a sandbox it says it cannot live in."""
    if not sandboxed:
        return
    if manifest.sandbox == "unsupported":
        raise PluginLoadError(
            "manifest says sandbox: unsupported, and it is set to run sandboxed "
            f"(plugins.settings.{manifest.name}.sandbox: false to run it)"
        )
    if manifest.network:
        raise PluginLoadError(
            "manifest says network: true, and a sandbox forbids connections "
            f"(plugins.settings.{manifest.name}.sandbox: false to run it)"
        )
