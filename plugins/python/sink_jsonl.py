"""Append entries to a JSON-lines file, rotating it by size (like logrotate's ``size``).

``logs/logloom.jsonl`` grows to ``max_bytes``; then it becomes ``logloom.jsonl.1``, the older
ones shift up, and the oldest beyond ``backups`` is deleted. A failed write raises, so the sink
stage retries the batch and dead-letters it after the last attempt.
"""

import os
from pathlib import Path

import orjson

PLUGIN_INFO = {
    "name": "sink_jsonl",
    "version": "1.0.0",
    "type": "sink",
    "capability": ["json", "batch"],
    "author": "Logloom Team",
    "description": "JSON-lines file with size-based rotation",
}

settings = {
    "path": "logs/logloom.jsonl",
    "max_bytes": 100 * 1024 * 1024,
    "backups": 5,
    "fsync": False,
}
state = {"file": None}


def plugin_init(config):
    unknown = set(config) - set(settings)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings.update(config)
    path = Path(settings["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    state["file"] = open(path, "ab")  # noqa: SIM115 - kept open across flushes
    return 0


def _rotate():
    state["file"].close()
    path = settings["path"]
    backups = int(settings["backups"])
    if backups < 1:
        os.remove(path)
    else:
        for index in range(backups - 1, 0, -1):
            if os.path.exists(f"{path}.{index}"):
                os.replace(f"{path}.{index}", f"{path}.{index + 1}")
        os.replace(path, f"{path}.1")
    state["file"] = open(path, "ab")  # noqa: SIM115


def _line(entry):
    """The entry's JSON as the pipeline carried it (``Entry.to_json``: no re-encoding, a third of
    this sink's time), unless it spans lines (a producer's pretty-printed JSON) or the entry is
    a plain dict (tests, other callers)."""
    to_json = getattr(entry, "to_json", None)
    if to_json is not None:
        data = to_json()
        if isinstance(data, bytes) and b"\n" not in data and b"\r" not in data:
            return data + b"\n"
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)


def _lines(entries):
    """Every entry's line: joined in one go when each is an Entry whose JSON has no line
    break (one scan of the result tells), else one by one."""
    try:
        data = b"\n".join([entry.to_json() for entry in entries]) + b"\n"
    except (AttributeError, TypeError):  # a plain dict; JSON that is not bytes
        return b"".join(_line(entry) for entry in entries)
    if data.count(b"\n") == len(entries) and b"\r" not in data:
        return data
    return b"".join(_line(entry) for entry in entries)


def flush(entries):
    data = _lines(entries)
    handle = state["file"]
    if handle.tell() > 0 and handle.tell() + len(data) > int(settings["max_bytes"]):
        _rotate()
        handle = state["file"]
    handle.write(data)
    handle.flush()
    if settings["fsync"]:
        os.fsync(handle.fileno())
    return 0


def plugin_shutdown():
    if state["file"] is not None:
        state["file"].close()
        state["file"] = None
