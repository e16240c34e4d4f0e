"""The log entry (CONTRACT §1) and the codec between Redis stream fields and entries.

A stream entry arrives in one of two encodings: one field ``entry`` holding a JSON object, or flat
fields, each a top-level attribute. Both become the same normalised entry; whatever cannot
becomes a :class:`~pipeline.errors.MalformedEntry` whose message names what is wrong, so the
stage can dead-letter it. This module is on the hot path: one ``orjson`` call each way, at most.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import orjson

from pipeline.errors import MalformedEntry

LEVELS = ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")
LEVEL_RANK = {level: rank for rank, level in enumerate(LEVELS)}

# Spellings other systems use (syslog, Python logging, log4j), lower-cased, to our five levels.
LEVEL_ALIASES = {
    "trace": "DEBUG",
    "debug": "DEBUG",
    "info": "INFO",
    "informational": "INFO",
    "notice": "INFO",
    "warn": "WARN",
    "warning": "WARN",
    "error": "ERROR",
    "err": "ERROR",
    "fatal": "FATAL",
    "critical": "FATAL",
    "crit": "FATAL",
    "alert": "FATAL",
    "emerg": "FATAL",
    "emergency": "FATAL",
    "panic": "FATAL",
}

ENTRY_FIELD = b"entry"


def _read_only(*_args: object, **_kwargs: object) -> NoReturn:
    raise TypeError("log entries are read-only (design §3.4): copy one with dict(entry)")


class Entry(dict[str, Any]):
    """A log entry as plugins see it: a dict that refuses changes.

    It is still a ``dict``, so ``entry.get``, ``json.dumps`` and ``orjson.dumps`` work. The stage
    forwards the bytes it encoded before any plugin ran, so even a change to a nested value
    never reaches the next stage.
    """

    __slots__ = ("_id", "_json", "_read_as")
    _json: bytes
    _id: str
    _read_as: tuple[str, bytes]  # (prefix, stream ID) until Entry.id is first asked for
    __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def to_json(self) -> bytes:
        """The entry as JSON: the bytes it was decoded from when there are some (no re-encoding
        for plugins in other processes or languages), else freshly encoded."""
        try:
            return self._json
        except AttributeError:
            self._json = orjson.dumps(self)
            return self._json

    @property
    def id(self) -> str | None:
        """The ID of the stream entry a sink stage read this from (``1732950000000-0``), the
        key a sink deduplicates redeliveries by; None where it did not come from a stream."""
        try:
            return self._id
        except AttributeError:
            pass
        try:
            prefix, stream_id = self._read_as
        except AttributeError:
            return None
        self._id = prefix + stream_id.decode()
        return self._id

    def __reduce__(self) -> tuple[type[Entry], tuple[dict[str, Any]]]:
        return Entry, (dict(self),)


def with_json(obj: dict[str, Any], raw: bytes) -> Entry:
    """An Entry of ``obj`` that remembers ``raw``, the JSON it is the decoding of."""
    entry = Entry(obj)
    entry._json = raw
    return entry


def with_stream_id(entry: Entry, stream_id: bytes | str, prefix: str = "") -> Entry:
    """``entry``, knowing the stream entry it was read from (see :attr:`Entry.id`), whose ID
    is ``prefix`` and ``stream_id``; made into text when first asked for, as most sinks never
    ask."""
    if isinstance(stream_id, bytes):
        entry._read_as = (prefix, stream_id)
    else:
        entry._id = prefix + stream_id
    return entry


def normalise_level(level: object) -> str:
    """The canonical level for ``level``; raises MalformedEntry for one we do not know."""
    if isinstance(level, str):
        if level in LEVEL_RANK:
            return level
        canonical = LEVEL_ALIASES.get(level.strip().lower())
        if canonical is not None:
            return canonical
    raise MalformedEntry(f"unknown level {level!r} (expected one of {', '.join(LEVELS)})")


# (ms part of the last stream ID formatted, its second, that second's text, the whole text, and
# the JSON that appends it to an entry): one tuple, swapped whole, so threads sharing it never
# see half an update.
_last_formatted: tuple[bytes, int, str, str, bytes] = (b"", -1, "", "", b"")


def _formatted(stream_id: bytes | str) -> tuple[bytes, int, str, str, bytes]:
    global _last_formatted
    if isinstance(stream_id, str):
        stream_id = stream_id.encode()
    ms_part = stream_id.partition(b"-")[0]
    last = _last_formatted
    if ms_part == last[0]:  # a batch's entries mostly share their millisecond
        return last
    seconds, millis = divmod(int(ms_part), 1000)
    second_text = (
        last[2] if seconds == last[1] else time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    )
    text = f"{second_text}.{millis:03d}Z"
    _last_formatted = (ms_part, seconds, second_text, text, b',"timestamp":"%b"}' % text.encode())
    return _last_formatted


def timestamp_from_id(stream_id: bytes | str) -> str:
    """RFC 3339 UTC time of a stream ID's millisecond part, e.g. ``2025-04-30T12:00:00.123Z``."""
    return _formatted(stream_id)[3]


def normalise(obj: dict[str, Any], stream_id: bytes | str) -> tuple[dict[str, str], bool]:
    """Bring ``obj`` to the CONTRACT §1 shape in place.

    Returns the fields it added (missing level, module, timestamp) and whether it rewrote one
    that was there (a level spelled ``warning``, a ``null``), so the caller knows how to
    re-encode: appending is only safe for keys that are absent.
    """
    added: dict[str, str] = {}
    rewritten = False
    level = obj.get("level")
    if level is None:
        added["level"] = "INFO"
    elif type(level) is not str or level not in LEVEL_RANK:
        obj["level"] = normalise_level(level)
        rewritten = True
    message = obj.get("message")
    lang_key = obj.get("lang_key")
    if message is None and lang_key is None:
        raise MalformedEntry("neither message nor lang_key")
    if message is not None and not isinstance(message, str):
        raise MalformedEntry(f"message is a {type(message).__name__}, not a string")
    if lang_key is not None and not isinstance(lang_key, str):
        raise MalformedEntry(f"lang_key is a {type(lang_key).__name__}, not a string")
    module = obj.get("module")
    if module is None:
        added["module"] = ""
    elif not isinstance(module, str):
        raise MalformedEntry(f"module is a {type(module).__name__}, not a string")
    timestamp = obj.get("timestamp")
    if timestamp is None:
        added["timestamp"] = timestamp_from_id(stream_id)
    elif not isinstance(timestamp, str):
        raise MalformedEntry(f"timestamp is a {type(timestamp).__name__}, not an RFC 3339 string")
    if added:
        rewritten = rewritten or not obj.keys().isdisjoint(added)  # present, but null
        obj.update(added)
    return added, rewritten


def decode(stream_id: bytes, fields: Mapping[bytes, bytes], max_bytes: int) -> tuple[Entry, bytes]:
    """Decode one stream entry into ``(entry, json)``; ``json`` is what the next stage receives.

    Raises MalformedEntry naming what is wrong: bad JSON, not an object, unknown level, neither
    message nor lang_key, a field of §1 that is not a string, over ``max_bytes``, not UTF-8.
    """
    raw = fields.get(ENTRY_FIELD)
    if raw is not None:
        if len(fields) != 1:
            raise MalformedEntry("has both an 'entry' field and flat fields; use one encoding")
        if len(raw) > max_bytes:
            raise MalformedEntry(f"entry is {len(raw)} bytes, over the {max_bytes}-byte limit")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedEntry(f"bad JSON in 'entry': {exc}") from None
        if type(obj) is not dict:
            raise MalformedEntry(f"'entry' holds a JSON {type(obj).__name__}, not an object")
        added, rewritten = normalise(obj, stream_id)
        if rewritten:
            raw = orjson.dumps(obj)
        elif added:
            # Cheaper than re-encoding: the object's closing brace becomes the added fields'.
            # They were missing, so no key repeats. The object has at least message or lang_key.
            raw = raw.rstrip()[:-1] + b"," + orjson.dumps(added)[1:]
        return with_json(obj, raw), raw
    size = sum(len(key) + len(value) for key, value in fields.items())
    if size > max_bytes:
        raise MalformedEntry(f"entry is {size} bytes, over the {max_bytes}-byte limit")
    try:
        obj = {key.decode(): value.decode() for key, value in fields.items()}
    except UnicodeDecodeError as exc:
        raise MalformedEntry(f"flat fields are not UTF-8: {exc}") from None
    normalise(obj, stream_id)
    raw = orjson.dumps(obj)
    return with_json(obj, raw), raw


def decode_batch(
    messages: Iterable[tuple[bytes, dict[bytes, bytes]]], max_bytes: int
) -> tuple[list[tuple[bytes, Entry, bytes]], list[tuple[bytes, dict[bytes, bytes], str]]]:
    """:func:`decode` for each stream entry of a batch: ``(decoded, malformed)``, the decoded
    as ``(stream ID, entry, json)`` and the malformed as ``(stream ID, fields, why)``, each in
    the batch's order.

    The stages' hot path. Most entries are in the CONTRACT §1 shape already, but for the
    timestamp a producer may leave to the stream ID: those are checked in place in this one
    loop, without building anything, and the timestamp's JSON is appended to the entry's (2.0
    µs an entry instead of 2.6 through :func:`decode`, of which orjson's parse is 0.7,
    measured). Every other entry goes through :func:`decode`, and both agree on every input
    (tests/test_fuzz.py).
    """
    decoded: list[tuple[bytes, Entry, bytes]] = []
    malformed: list[tuple[bytes, dict[bytes, bytes], str]] = []
    loads, ranks = orjson.loads, LEVEL_RANK
    stamp_ms, stamp, stamp_json = b"", "", b""
    for stream_id, fields in messages:
        raw = fields.get(ENTRY_FIELD)
        if raw is not None and len(fields) == 1 and len(raw) <= max_bytes and raw[-1:] == b"}":
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            if (
                type(obj) is dict
                and type(level := obj.get("level")) is str
                and level in ranks
                and type(obj.get("module")) is str
                and type(obj.get("message")) is str
                and type(obj.get("lang_key", "")) is str
            ):
                timestamp = obj.get("timestamp")
                if type(timestamp) is not str and "timestamp" not in obj:
                    ms = stream_id.partition(b"-")[0]
                    if ms != stamp_ms:  # a batch's entries mostly share their millisecond
                        stamp_ms, _, _, stamp, stamp_json = _formatted(stream_id)
                    obj["timestamp"] = stamp
                    raw = raw[:-1] + stamp_json  # its closing brace becomes the timestamp's
                    timestamp = stamp
                if type(timestamp) is str:
                    entry = Entry(obj)
                    entry._json = raw
                    decoded.append((stream_id, entry, raw))
                    continue
        try:
            entry, payload = decode(stream_id, fields, max_bytes)
        except MalformedEntry as exc:
            malformed.append((stream_id, fields, str(exc)))
            continue
        decoded.append((stream_id, entry, payload))
    return decoded, malformed


def original_json(fields: Mapping[bytes, bytes]) -> bytes:
    """The entry as its producer sent it, as JSON if it can be, for a dead letter."""
    raw = fields.get(ENTRY_FIELD)
    if raw is not None and len(fields) == 1:
        return raw
    return orjson.dumps(
        {
            key.decode(errors="replace"): value.decode(errors="replace")
            for key, value in fields.items()
        }
    )


def encode(entry: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Stream fields for one entry, in the ``entry`` JSON encoding."""
    return {ENTRY_FIELD: orjson.dumps(dict(entry))}
