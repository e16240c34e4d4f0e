"""Plugin runtimes: each adapts plugins of one kind onto :class:`pipeline.plugin.Plugin`.

``python`` and ``c`` load plugins into the calling process; ``process`` runs either of them in a
host subprocess (:mod:`pipeline.runtimes.host`); ``service`` talks to plugins that run on their
own; ``remote`` is what the last two share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.errors import PluginLoadError
from pipeline.plugin import Plugin, PluginInfo
from pipeline.runtimes import c, python


@dataclass(frozen=True)
class OpenedPlugin:
    """A plugin file checked and described, not yet initialised: ``start(config)`` does that."""

    info: PluginInfo
    start: Callable[[Mapping[str, Any]], Plugin]


def load_plugin(
    path: str | Path, config: Mapping[str, Any] | None = None, *, isolated: bool = False
) -> Plugin:
    """Load one plugin file the way workers do, for use from your own code — a Python plugin
    calling a C one (design §5.5.10) — or a notebook. ``config`` defaults to its ``<name>.yaml``;
    ``isolated`` runs it in a plugin host subprocess. Call ``.call_batch([...])`` on it, and
    ``.shutdown()`` when done. PluginLoadError says why it cannot be loaded."""
    from pipeline.runtimes.host import file_config
    from pipeline.runtimes.process import host_command, load_in_child

    path = Path(path)
    settings = dict(file_config(path) if config is None else config)
    if isolated:
        runtime = "c-isolated" if c.is_c_plugin(path) else "python-subprocess"
        plugin = load_in_child(host_command(path), str(path), runtime, settings, 500)
        assert plugin is not None  # no type filter was asked for
        return plugin
    return open_plugin_file(path, settings).start(settings)


def is_plugin_file(path: Path) -> bool:
    return (
        path.suffix == ".py"
        or c.is_c_plugin(path)
        or (path.is_dir() and (path / "__init__.py").is_file())
    )


def open_plugin_file(
    path: Path, settings: Mapping[str, Any], restricted: bool = False
) -> OpenedPlugin:
    """Open a Python or C plugin in this process; PluginLoadError says why it cannot be.
    ``restricted`` compiles a Python plugin with RestrictedPython."""
    origin = str(path)
    if c.is_c_plugin(path):
        library, info = c.open_c_plugin(path, settings)
        return OpenedPlugin(info, partial(c.start_c_plugin, library, info, origin))
    if path.suffix == ".py" or path.is_dir():
        module, info = python.open_python_plugin(path, restricted)
        return OpenedPlugin(info, partial(python.start_python_plugin, module, info, origin))
    raise PluginLoadError(f"no runtime for '{path.suffix}' files")
