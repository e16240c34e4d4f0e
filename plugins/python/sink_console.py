"""Print entries to the terminal, one readable line each (or JSON with ``format: json``)."""

import sys

import orjson

PLUGIN_INFO = {
    "name": "sink_console",
    "version": "1.0.0",
    "type": "sink",
    "capability": ["text", "batch"],
    "author": "Logloom Team",
    "description": "Writes entries to stdout or stderr",
}

settings = {"format": "text", "stream": "stdout"}


def plugin_init(config):
    settings.update(config)
    if settings["format"] not in ("text", "json"):
        raise ValueError(f"format {settings['format']!r} is not 'text' or 'json'")
    if settings["stream"] not in ("stdout", "stderr"):
        raise ValueError(f"stream {settings['stream']!r} is not 'stdout' or 'stderr'")
    return 0


def _line(entry):
    if settings["format"] == "json":
        return orjson.dumps(entry).decode()
    text = entry.get("message")
    if text is None:
        text = entry.get("lang_key", "")
    module = entry.get("module")
    where = f" [{module}]" if module else ""
    return f"{entry.get('timestamp', '')} {entry.get('level', ''):<5}{where} {text}"


def flush(entries):
    stream = sys.stdout if settings["stream"] == "stdout" else sys.stderr
    stream.write("".join(_line(entry) + "\n" for entry in entries))
    stream.flush()
    return 0


def plugin_shutdown():
    pass
