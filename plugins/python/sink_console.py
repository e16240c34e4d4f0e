"""Print entries to the terminal, one readable line each (or JSON with ``format: json``).

One entry is one line, whatever it holds: CR, LF and other control characters in its text are
printed as escapes (``\\n``, ``\\x1b``), so an entry cannot forge another line or send
terminal escapes (log injection, design §7.4).
"""

import sys

import orjson

from pipeline.log import one_line, one_line_json

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
        return one_line_json(orjson.dumps(entry).decode())  # JSON escapes CR and LF itself
    text = entry.get("message")
    if text is None:
        text = entry.get("lang_key", "")
    module = entry.get("module")
    where = f" [{module}]" if module else ""
    return one_line(f"{entry.get('timestamp', '')} {entry.get('level', ''):<5}{where} {text}")


def flush(entries):
    stream = sys.stdout if settings["stream"] == "stdout" else sys.stderr
    stream.write("".join(_line(entry) + "\n" for entry in entries))
    stream.flush()
    return 0


def plugin_shutdown():
    pass
