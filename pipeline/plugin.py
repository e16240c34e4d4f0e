"""What a loaded plugin is to a stage, whatever language it is written in.

Every runtime (in-process Python here; C, subprocess and socket services beside it) adapts its
plugins onto :class:`Plugin`, so a stage never asks which language a plugin is written in. A
plugin reports an outcome per entry; the stage owns retries, the DLQ and the metrics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from pipeline.entry import Entry
from pipeline.errors import PluginLoadError

PLUGIN_TYPES = ("filter", "sink", "ai", "lang")
API_VERSION = "1.0"
"""The plugin API this Logloom offers; a plugin may declare the range it supports as
``"api": ">=1.0,<2"`` (PEP 440 specifiers) and is refused outside it (design §10.3)."""
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)

# The functions a plugin of each type may use to do its work (design §3.1, CONTRACT §3):
# ``plugin_process`` always works; the type's own verb is an alternative.
PROCESS_HOOKS = {
    "filter": ("plugin_process", "filter"),
    "sink": ("flush", "plugin_process"),
    "ai": ("analyze", "plugin_process"),
    "lang": ("resolve", "plugin_process"),
}


@dataclass(frozen=True, slots=True)
class Failure:
    """One entry's failed plugin call; ``error`` is the one-line cause that goes to the DLQ.

    ``unavailable``: not the entry's fault but the far side's — a sink whose destination is
    down (a Python sink raised ``ConnectionError`` or ``TimeoutError`` or answered -2, a C sink
    ``LOGLOOM_UNAVAILABLE``, a plugin host ``"unavailable"``). The sink stage holds
    such entries and retries them until the destination is back, instead of dead-lettering."""

    error: str
    unavailable: bool = False


UNAVAILABLE_ERRORS = (ConnectionError, TimeoutError)
"""What a Python sink raises to say its destination is down rather than the batch is bad."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    type: str
    author: str = ""
    description: str = ""
    capability: tuple[str, ...] = ()
    mode: str = "sync"
    extra: Mapping[str, Any] = field(default_factory=dict)


class Plugin(Protocol):
    """A loaded, initialised plugin. ``call_batch`` never raises for the plugin's own faults."""

    @property
    def info(self) -> PluginInfo: ...

    @property
    def origin(self) -> str:
        """Where it came from: a file, or a service's address."""
        ...

    @property
    def runtime(self) -> str:
        """``python``, ``c``, ``python-subprocess``, ``c-isolated`` or ``service``."""
        ...

    @property
    def name(self) -> str: ...

    def call_batch(self, entries: Sequence[Entry]) -> list[Any | Failure]:
        """One result per entry, in order: the plugin's answer, or a Failure.

        Filters answer ``bool`` (keep?); sinks answer ``0`` for delivered.
        """
        ...

    def shutdown(self) -> None: ...


def validate_info(raw: object, origin: str) -> PluginInfo:
    """PluginInfo from a plugin's metadata, or PluginLoadError saying what is missing or wrong."""
    if not isinstance(raw, Mapping):
        raise PluginLoadError(f"PLUGIN_INFO is a {type(raw).__name__}, not a dict")
    missing = [key for key in ("name", "version", "type") if not raw.get(key)]
    if missing:
        raise PluginLoadError(f"PLUGIN_INFO lacks {', '.join(missing)}")
    name, version, kind = raw["name"], raw["version"], raw["type"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
        raise PluginLoadError(f"PLUGIN_INFO name {name!r} is not a plain identifier")
    if not isinstance(version, str) or not SEMVER.match(version):
        raise PluginLoadError(f"version {version!r} is not SemVer (MAJOR.MINOR.PATCH)")
    if kind not in PLUGIN_TYPES:
        raise PluginLoadError(f"unknown type {kind!r} (expected one of {', '.join(PLUGIN_TYPES)})")
    capability = raw.get("capability", ())
    if isinstance(capability, str):
        capability = tuple(part.strip() for part in capability.split(",") if part.strip())
    if not isinstance(capability, (list, tuple)) or not all(
        isinstance(one, str) for one in capability
    ):
        raise PluginLoadError("PLUGIN_INFO capability must be a list of strings")
    mode = raw.get("mode", "sync")
    if mode not in ("sync", "async"):
        raise PluginLoadError(f"PLUGIN_INFO mode {mode!r} is not 'sync' or 'async'")
    check_api(raw.get("api"))
    known = {"name", "version", "type", "author", "description", "capability", "mode"}
    return PluginInfo(
        name=name,
        version=version,
        type=kind,
        author=str(raw.get("author", "")),
        description=str(raw.get("description", "")),
        capability=tuple(capability),
        mode=mode,
        extra={key: value for key, value in raw.items() if key not in known},
    )


def check_api(declared: object) -> None:
    """Refuse an API range (PEP 440 specifiers) that does not contain :data:`API_VERSION`."""
    if declared is None:
        return
    try:
        supported = SpecifierSet(str(declared))
    except InvalidSpecifier:
        raise PluginLoadError(f"api {declared!r} is not a version range like '>=1.0,<2'") from None
    if not supported.contains(API_VERSION, prereleases=True):
        raise PluginLoadError(
            f"needs Logloom plugin API {declared}, this Logloom offers {API_VERSION}"
        )


def describe_exception(exc: BaseException) -> str:
    """``TypeError: bad operand`` — the class and the first line of the message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
