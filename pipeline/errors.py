"""The one error tree. Stages catch these at their boundary; nothing else catches broadly."""

from __future__ import annotations


class LogloomError(Exception):
    """Base of every error Logloom raises on purpose."""


class ConfigError(LogloomError):
    """The configuration is wrong; the message names the file and the key. Exit code 2."""


class MalformedEntry(LogloomError):
    """An ingested entry cannot become a log entry; the message says what is wrong with it."""


class PluginLoadError(LogloomError):
    """A plugin could not be loaded or validated; the worker goes on without it."""


class PluginCallError(LogloomError):
    """One call into a plugin failed for the entries it was given (raised, bad result, crash)."""


class LangPackError(LogloomError):
    """A language pack file is malformed; the message is ``<file>:<line>: <what is wrong>``."""


class LangEditError(LogloomError):
    """An edit of a language pack was refused (unknown locale, placeholders that do not match
    the default locale's, ...); the message says why. The pack file is unchanged."""


class BackpressureError(LogloomError):
    """The ingest stream stayed over its configured length for longer than producers wait."""


class TransientRedisError(LogloomError):
    """Redis refused or failed a write (out of memory, a failover); the stage waits and retries."""


class Shutdown(BaseException):
    """Unwinds a worker on SIGTERM/SIGINT; a BaseException so ``except Exception`` cannot eat it."""
