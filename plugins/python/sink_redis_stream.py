"""Forward entries to a Redis stream, on this Redis or another (fan-out, a downstream Logloom).

Each batch is one pipelined round trip. ``url`` defaults to the pipeline's own Redis
(LOGLOOM_REDIS_URL); entries are written in the ``entry`` JSON encoding, so another Logloom can
ingest the target stream directly.
"""

import os

import orjson
import redis

PLUGIN_INFO = {
    "name": "sink_redis_stream",
    "version": "1.0.0",
    "type": "sink",
    "capability": ["json", "batch"],
    "author": "Logloom Team",
    "description": "XADDs entries to a Redis stream",
}

settings = {"url": None, "stream": "logloom:forwarded", "maxlen": None}
state = {"client": None}


def plugin_init(config):
    settings.update(config)
    url = settings["url"] or os.environ.get("LOGLOOM_REDIS_URL") or os.environ.get("REDIS_URL")
    state["client"] = redis.Redis.from_url(url or "redis://127.0.0.1:6379/0")
    return 0


def flush(entries):
    pipe = state["client"].pipeline(transaction=False)
    maxlen = settings["maxlen"]
    for entry in entries:
        pipe.xadd(
            settings["stream"], {"entry": orjson.dumps(entry)}, maxlen=maxlen, approximate=True
        )
    pipe.execute()
    return 0


def plugin_shutdown():
    if state["client"] is not None:
        state["client"].close()
        state["client"] = None
