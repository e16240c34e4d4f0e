"""In-process Python plugins: a plain module with ``PLUGIN_INFO`` and functions (CONTRACT §3).

The fastest runtime (a call costs ~0.1 µs), for trusted code. This adapter is the one place that
catches around a Python plugin's code: whatever it raises or returns becomes a per-entry result
or :class:`~pipeline.plugin.Failure`, never an exception in the stage.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.entry import Entry
from pipeline.errors import PluginLoadError
from pipeline.plugin import (
    PROCESS_HOOKS,
    UNAVAILABLE_ERRORS,
    Failure,
    PluginInfo,
    describe_exception,
    validate_info,
)


def import_plugin_module(path: Path) -> ModuleType:
    """Import a plugin file (``x.py``) or package (``x/__init__.py``) under a private name."""
    init = path / "__init__.py" if path.is_dir() else path
    module_name = f"logloom_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(
        module_name,
        init,
        submodule_search_locations=[str(path)] if path.is_dir() else None,
    )
    if spec is None or spec.loader is None:
        raise PluginLoadError("not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PluginLoadError(f"import failed: {describe_exception(exc)}") from exc
    return module


def module_info(module: ModuleType, origin: str) -> PluginInfo:
    if callable(getattr(module, "plugin_info", None)):
        try:
            raw = module.plugin_info()
        except Exception as exc:
            raise PluginLoadError(f"plugin_info() raised {describe_exception(exc)}") from exc
    elif hasattr(module, "PLUGIN_INFO"):
        raw = module.PLUGIN_INFO
    else:
        raise PluginLoadError("no PLUGIN_INFO dict and no plugin_info()")
    return validate_info(raw, origin)


def _positional_parameters(function: Callable[..., Any], unknown: int) -> int:
    """How many positional arguments ``function`` takes (``*args``: any number); ``unknown``
    where its signature cannot be read (some builtins)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return unknown
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return sys.maxsize
    return sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _initialise(module: ModuleType, config: Mapping[str, Any]) -> None:
    """Hand the plugin its config and call ``plugin_init``; it must answer 0.

    ``plugin_init(config)`` receives the config. A ``plugin_init()`` without parameters gets
    it through a module-level ``config`` dict, updated first, so the design's own example
    plugins (design §5.5.9) take their YAML unchanged.
    """
    init = module.plugin_init
    takes_config = _positional_parameters(init, unknown=0) >= 1
    if not takes_config and isinstance(getattr(module, "config", None), dict):
        module.config.update(config)
    try:
        status = init(dict(config)) if takes_config else init()
    except Exception as exc:
        raise PluginLoadError(f"plugin_init() raised {describe_exception(exc)}") from exc
    if status != 0 or isinstance(status, bool):
        raise PluginLoadError(f"plugin_init() returned {status!r}, expected 0")


def _resolve_hook(resolve: Callable[..., Any]) -> Callable[[Entry], Any]:
    """A lang plugin's ``resolve(lang_key, locale=None)`` called with a lang request
    (``{"lang_key", "locale"}``). A ``resolve(lang_key)`` without a locale (design §3.1) has one
    text for every locale."""
    if _positional_parameters(resolve, unknown=1) >= 2:
        return lambda request: resolve(request.get("lang_key"), request.get("locale"))
    return lambda request: resolve(request.get("lang_key"))


SINK_UNAVAILABLE = -2
"""What a sink answers for an entry its destination could not take now (C: LOGLOOM_UNAVAILABLE):
the stage holds it instead of spending an attempt (see :class:`~pipeline.plugin.Failure`)."""
UNAVAILABLE_FAILURE = Failure(f"returned {SINK_UNAVAILABLE}: destination unavailable", True)


def _sink_code(code: Any) -> Any:
    return UNAVAILABLE_FAILURE if code == SINK_UNAVAILABLE and type(code) is int else code


class PythonPlugin:
    """A plugin module adapted onto the Plugin protocol."""

    runtime = "python"

    def __init__(self, module: ModuleType, info: PluginInfo, origin: str) -> None:
        self.module = module
        self.info = info
        self.origin = origin
        flush = getattr(module, "flush", None)
        self._batch_hook = flush if info.type == "sink" and callable(flush) else None
        entry_hooks = [
            getattr(module, hook)
            for hook in PROCESS_HOOKS[info.type]
            if hook != "flush" and callable(getattr(module, hook, None))
        ]
        self.entry_hook: Callable[[Entry], Any] | None = entry_hooks[0] if entry_hooks else None
        if info.type == "lang" and callable(getattr(module, "resolve", None)):
            self.entry_hook = _resolve_hook(module.resolve)
        generation = getattr(module, "plugin_generation", None)
        self.generation: Callable[[], Any] | None = generation if callable(generation) else None
        figures = getattr(module, "plugin_stats", None)
        self._stats: Callable[[], Any] | None = figures if callable(figures) else None

    @property
    def name(self) -> str:
        return self.info.name

    def stats(self) -> dict[str, int | float | str]:
        """The plugin's own figures from its optional ``plugin_stats()`` (a sink's backlog, say),
        for ``logloom status``: the numbers and strings of the dict it returns; {} otherwise."""
        if self._stats is None:
            return {}
        try:
            figures = self._stats()
        except Exception:
            return {}
        if not isinstance(figures, dict):
            return {}
        return {
            str(key): value
            for key, value in figures.items()
            if isinstance(value, (int, float, str)) and not isinstance(value, bool)
        }

    def call_batch(self, entries: Sequence[Entry]) -> list[Any]:
        if self._batch_hook is not None:
            return self._flush(entries)
        hook = self.entry_hook
        assert hook is not None, "validated at load: a plugin without flush() has a per-entry hook"
        results: list[Any] = []
        append = results.append
        for entry in entries:
            try:
                append(hook(entry))
            except (Exception, SystemExit) as exc:  # a plugin's sys.exit() must not end the worker
                append(Failure(describe_exception(exc), isinstance(exc, UNAVAILABLE_ERRORS)))
        return results

    def _flush(self, entries: Sequence[Entry]) -> list[Any]:
        """A sink's ``flush(entries)``: one int for the batch, or one int per entry."""
        assert self._batch_hook is not None
        try:
            answer = self._batch_hook(list(entries))
        except (Exception, SystemExit) as exc:
            unavailable = isinstance(exc, UNAVAILABLE_ERRORS)
            return [Failure(describe_exception(exc), unavailable)] * len(entries)
        if isinstance(answer, int) and not isinstance(answer, bool):
            return [_sink_code(answer)] * len(entries)
        if isinstance(answer, (list, tuple)) and len(answer) == len(entries):
            return [_sink_code(code) for code in answer]
        failure = Failure(f"flush() returned {answer!r}, expected an int or one int per entry")
        return [failure] * len(entries)

    def shutdown(self) -> None:
        shutdown = getattr(self.module, "plugin_shutdown", None)
        if callable(shutdown):
            shutdown()


def open_python_plugin(path: Path, restricted: bool = False) -> tuple[ModuleType, PluginInfo]:
    """Import and validate a plugin without initialising it; PluginLoadError says what is wrong.
    ``restricted``: compile it with RestrictedPython (:mod:`pipeline.restricted`)."""
    if restricted:
        from pipeline.restricted import load_restricted_module

        module = load_restricted_module(path)
    else:
        module = import_plugin_module(path)
    info = module_info(module, str(path))
    if not any(callable(getattr(module, hook, None)) for hook in PROCESS_HOOKS[info.type]):
        raise PluginLoadError("missing plugin_process()")
    for required in ("plugin_init", "plugin_shutdown"):
        if not callable(getattr(module, required, None)):
            raise PluginLoadError(f"missing {required}()")
    return module, info


def start_python_plugin(
    module: ModuleType, info: PluginInfo, origin: str, config: Mapping[str, Any]
) -> PythonPlugin:
    _initialise(module, config)
    return PythonPlugin(module, info, origin)


def load_python_plugin(
    path: Path, config: Mapping[str, Any], types: Collection[str] | None = None
) -> PythonPlugin | None:
    """Import, validate and initialise one Python plugin; PluginLoadError says why not.

    A valid plugin whose type is not in ``types`` is not initialised: None.
    """
    module, info = open_python_plugin(path)
    if types is not None and info.type not in types:
        return None
    return start_python_plugin(module, info, str(path), config)
