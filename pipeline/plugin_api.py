"""Typed definitions for plugin authors: import them for editor help and ``mypy --strict``.

Nothing here is needed at run time — a plugin stays a plain module with ``PLUGIN_INFO`` and
functions (CONTRACT §3) — but annotating it with these names lets mypy check it against the
contract Logloom enforces on load and on every result (``pipeline/outputs.py``)::

    from pipeline.plugin_api import LogEntry, PluginConfig, PluginInfoDict

    PLUGIN_INFO: PluginInfoDict = {"name": "filter_mine", "version": "1.0.0", "type": "filter"}

    def plugin_init(config: PluginConfig) -> int: ...
    def plugin_process(entry: LogEntry) -> bool: ...
    def plugin_shutdown() -> None: ...

A module is checked against its type's Protocol by assigning it, in its tests:
``plugin: FilterPlugin = filter_mine`` fails under mypy if a function's signature is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, TypedDict

from pipeline.plugin import API_VERSION

__all__ = [
    "API_VERSION",
    "AiPlugin",
    "AiResult",
    "BatchSinkPlugin",
    "FilterPlugin",
    "LangPlugin",
    "LangRequest",
    "Level",
    "LogEntry",
    "Mode",
    "PluginConfig",
    "PluginInfoDict",
    "PluginType",
    "SinkPlugin",
    "StreamingAiPlugin",
]

PluginType = Literal["filter", "sink", "ai", "lang"]
Mode = Literal["sync", "async"]
Level = Literal["DEBUG", "INFO", "WARN", "ERROR", "FATAL"]
"""The five levels an entry has by the time a plugin sees it (other spellings are normalised)."""

PluginConfig = Mapping[str, Any]
"""The plugin's config: its ``<name>.yaml`` merged with ``plugins.config.<name>``."""

AiResult = dict[str, Any] | None
"""A JSON object of at most 64 KiB as JSON, or None / ``{}`` for nothing to report."""


class LogEntry(TypedDict, total=False):
    """A log entry as a plugin receives it (CONTRACT §1), read-only: copy with ``dict(entry)``.

    ``level`` and ``timestamp`` are always present; ``message`` unless ``lang_key`` is. Other
    fields (``host``, ``trace_id``, ...) travel with the entry: read them with
    ``cast(Mapping[str, Any], entry).get("host")``."""

    timestamp: str
    level: str
    module: str
    message: str
    lang_key: str
    params: dict[str, Any]
    message_i18n: dict[str, str]
    lang_missing: bool


class _PluginInfoRequired(TypedDict):
    name: str
    version: str
    type: PluginType


class PluginInfoDict(_PluginInfoRequired, total=False):
    """``PLUGIN_INFO``: name (plain identifier), SemVer version and type are required.

    ``api`` is the range of Logloom plugin APIs the plugin supports (PEP 440, ``">=1.0,<2"``);
    outside it the plugin is refused on load (design §10.3)."""

    capability: list[str]
    author: str
    description: str
    mode: Mode
    api: str


class LangRequest(TypedDict):
    """What a lang plugin's ``plugin_process`` receives instead of an entry."""

    lang_key: str
    locale: str


class _Plugin(Protocol):
    @property
    def PLUGIN_INFO(self) -> PluginInfoDict: ...

    def plugin_init(self, config: PluginConfig) -> int:
        """0 when ready; anything else (or an exception) refuses the plugin."""
        ...

    def plugin_shutdown(self) -> None: ...


class FilterPlugin(_Plugin, Protocol):
    def plugin_process(self, entry: LogEntry) -> bool:
        """True keeps the entry, False drops it; anything but a bool is an error."""
        ...


class SinkPlugin(_Plugin, Protocol):
    def plugin_process(self, entry: LogEntry) -> int:
        """0 = delivered; anything else is retried with backoff, then dead-lettered. Raise
        ``ConnectionError`` or ``TimeoutError`` when the destination is down: the entry waits."""
        ...


class BatchSinkPlugin(_Plugin, Protocol):
    def flush(self, entries: Sequence[LogEntry]) -> int | list[int]:
        """A whole batch in one call: 0 for all delivered, or one code per entry."""
        ...


class AiPlugin(_Plugin, Protocol):
    def plugin_process(self, entry: LogEntry) -> AiResult:
        """A JSON object streamed to ``logloom:ai:results``, or None for nothing to report."""
        ...


class StreamingAiPlugin(_Plugin, Protocol):
    def analyze(self, entry: LogEntry) -> Iterator[dict[str, Any]]:
        """Partial results, each streamed as it is yielded; the last one is the final."""
        ...


class LangPlugin(_Plugin, Protocol):
    def resolve(self, lang_key: str, locale: str | None = None) -> str | None:
        """The text for exactly this locale with its ``{name}`` placeholders left in, at most
        16 KiB; None for a key it does not know there (Logloom walks the fallback chain)."""
        ...
