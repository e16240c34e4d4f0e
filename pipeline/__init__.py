"""Logloom's core library: entries, the Redis key schema, plugins, stages, DLQs, metrics.

For producers::

    import redis
    from pipeline import Producer

    with Producer(redis.Redis()) as producer:
        producer.send({"level": "ERROR", "module": "AUTH", "message": "bad password"})
"""

from pipeline.config import Config, load_config
from pipeline.entry import LEVELS, Entry
from pipeline.errors import BackpressureError, ConfigError, LogloomError, MalformedEntry
from pipeline.keys import Keys
from pipeline.producer import Producer

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
]
