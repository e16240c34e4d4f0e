"""The benchmark's sink: the bundled ``sink_jsonl`` plus a clock.

Each flush hands the batch to ``sink_jsonl`` (the real file write), then appends one line
``<sent_ns> <written_ns>`` per entry to ``times_path``: ``sent_ns`` is the producer's
``time.time_ns()`` at its XADD, carried in the entry, and ``written_ns`` is taken once the lines
are in the file. ``seconds_per_entry`` makes the sink slow on purpose (a sleep per entry after
the write), for the memory figure.
"""

import time

from plugins.python import sink_jsonl

PLUGIN_INFO = {
    "name": "bench_latency_sink",
    "version": "1.0.0",
    "type": "sink",
    "capability": ["json", "batch"],
    "author": "Logloom Team",
    "description": "sink_jsonl that records when each entry was written (benchmarks only)",
}

settings = {"path": "bench.jsonl", "times_path": "bench.times", "seconds_per_entry": 0.0}
state = {"times": None}


def plugin_init(config):
    unknown = set(config) - set(settings)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings.update(config)
    sink_jsonl.plugin_init({"path": settings["path"]})
    state["times"] = open(settings["times_path"], "ab")  # noqa: SIM115 - kept open across flushes
    return 0


def flush(entries):
    sink_jsonl.flush(entries)
    written = time.time_ns()
    times = state["times"]
    times.write(b"".join(b"%d %d\n" % (entry.get("sent_ns", 0), written) for entry in entries))
    times.flush()
    if settings["seconds_per_entry"]:
        time.sleep(settings["seconds_per_entry"] * len(entries))
    return 0


def plugin_shutdown():
    sink_jsonl.plugin_shutdown()
    if state["times"] is not None:
        state["times"].close()
        state["times"] = None
