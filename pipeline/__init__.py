"""Logloom's core library: entries, the Redis key schema, plugins, stages, DLQs, metrics.

For producers::

    import redis
    from pipeline import Producer

    with Producer(redis.Redis()) as producer:
        producer.send({"level": "ERROR", "module": "AUTH", "message": "bad password"})

To call a plugin (say a C library) from your own code or another plugin::

    from pipeline import Entry, load_plugin

    severity = load_plugin("plugins/c/filter_severity.so", {"min_level": "WARN"})
    severity.call_batch([Entry({"level": "ERROR", "message": "disk full"})])  # [True]
"""

from pipeline.config import Config, load_config
from pipeline.entry import LEVELS, Entry
from pipeline.errors import BackpressureError, ConfigError, LogloomError, MalformedEntry
from pipeline.keys import Keys
from pipeline.producer import Producer
from pipeline.runtimes import load_plugin

__all__ = [
    "LEVELS",
    "BackpressureError",
    "Config",
    "ConfigError",
    "Entry",
    "Keys",
    "LogloomError",
    "MalformedEntry",
    "Producer",
    "load_config",
    "load_plugin",
]
